"""CPU threads for a process that runs models: how many, and setting them.

PyTorch runs a CPU op on a team of `torch.get_num_threads()` OpenMP threads (by default one
per core), the work split evenly; the op ends when the last share does, and a thread that
has finished its share spins for a while before it sleeps. Two teams on the same cores (a
job's worker processes, a Beam runner's worker threads, a neighbour) oversubscribe them: an
op waits for its descheduled share while the finished threads spin on the other cores.
Measured on 2 cores (docs/benchmarks.md, "Why two threads collapse"): the TEE takes 107 ms
on 2 threads alone, 303 ms beside one busy loop and up to 1.6 s beside another 2-thread
torch process, where one thread takes 160 and 254 ms. So model callers that share a
machine divide its cores among them, as torchrun and DataLoader workers do.

The thread count is process-wide in torch (a worker thread that sets it sets it for all),
but each Python thread that calls a model gets its own OpenMP team of that size: N runner
threads calling the model in one process oversubscribe as N processes would.
"""
from __future__ import annotations

import os


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask: taskset, a container's cpuset), at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def threads_per_caller(callers: int | None, cpus: int | None = None) -> int:
    """CPU threads for each of `callers` model callers (processes or runner threads) sharing `cpus`
    cores: an even share, at least 1. callers None: one per core (Dataflow's Python workers
    run one SDK process per vCPU)."""
    cpus = usable_cpus() if cpus is None else cpus
    if cpus < 1:
        raise ValueError(f"cpus must be >= 1, not {cpus}")
    if callers is None:
        return 1
    if callers < 1:
        raise ValueError(f"callers must be >= 1 or None, not {callers}")
    return max(cpus // callers, 1)


def use_threads(n: int) -> int:
    """Set torch's intra-op threads for this process to `n`; returns what torch reports after."""
    import torch

    if n < 1:
        raise ValueError(f"threads must be >= 1, not {n}")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch.get_num_threads()
