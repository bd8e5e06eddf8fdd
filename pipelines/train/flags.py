"""The shared training loop's flags, and the checks every trainer runs on them before any work.

Defaults come from `TrainConfig`, so the flags and the config cannot drift apart; a
trainer overrides the few that differ for it (e.g. the student's learning rate).

Light on purpose: a trainer's `--help` imports this module, so it imports no torch (the
device check imports it when it runs).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, fields

from pipelines.cli import UsageError, check_device
from pipelines.train.config import TrainConfig

_DEFAULTS = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}


def add_train_flags(ap: argparse.ArgumentParser, **overrides) -> None:
    """Add the loop's flags to `ap`; `overrides` replace TrainConfig's defaults for this trainer."""
    unknown = sorted(set(overrides) - set(_DEFAULTS))
    if unknown:
        raise ValueError(f"no TrainConfig default to override: {', '.join(unknown)}")
    d = {**_DEFAULTS, **overrides}
    g = ap.add_argument_group("training loop")
    g.add_argument("--output", required=True, help="run directory: checkpoints, model, metrics.jsonl (local or gs://)")
    g.add_argument("--max-steps", type=int, required=True)
    g.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in --output (with nothing to resume: a new run)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in --output (its checkpoints, model and metrics)")
    g.add_argument("--stop-at", type=int, default=d["stop_at"],
                   help="end this run after step N with a checkpoint, keeping the --max-steps schedule "
                        "(time-boxed or preemptible slots; continue with --resume)")
    g.add_argument("--batch-size", type=int, default=d["batch_size"], help="per process")
    g.add_argument("--lr", type=float, default=d["lr"])
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    g.add_argument("--optimizer", default=d["optimizer"], choices=("adamw", "sgd"))
    g.add_argument("--warmup-steps", type=int, default=d["warmup_steps"],
                   help="linear warmup; at least --max-steps: a warning (the learning rate never leaves warmup)")
    g.add_argument("--schedule", default=d["schedule"], choices=("cosine", "constant"))
    g.add_argument("--grad-clip", type=float, default=d["grad_clip"], help="max gradient norm (0: off)")
    g.add_argument("--grad-accum", type=int, default=d["grad_accum"], help="batches per optimizer step")
    g.add_argument("--no-bf16", dest="bf16", action="store_false", help="no bf16 autocast on CUDA")
    g.set_defaults(bf16=d["bf16"])
    g.add_argument("--log-every", type=int, default=d["log_every"])
    g.add_argument("--checkpoint-every", type=int, default=d["checkpoint_every"])
    g.add_argument("--eval-every", type=int, default=d["eval_every"],
                   help="validation every N steps (0: at the end only)")
    g.add_argument("--keep-checkpoints", type=int, default=d["keep_checkpoints"])
    g.add_argument("--seed", type=int, default=d["seed"])
    g.add_argument("--num-workers", type=int, default=d["num_workers"],
                   help="data loading processes per training process")
    g.add_argument("--device", default=d["device"],
                   help="auto | cpu | cuda | cuda:N (torchrun: --device cuda, one GPU per process)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (metrics.jsonl still written)")
    g.add_argument("--check-only", action="store_true",
                   help="run every check of the flags, inputs, models, device and --output, then exit without "
                        "training or writing anything (0: the run would start; scripts/train_student.sh runs "
                        "this once before torchrun)")


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The loop's config from the parsed flags; UsageError for values it refuses."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    try:
        return TrainConfig(**values, progress=not args.no_progress)
    except ValueError as e:
        raise UsageError(str(e)) from e


def check_train_device(device: str) -> None:
    """--device on the machine that trains: a CUDA device it lacks is one line now, not a traceback
    from the first tensor moved there. Under torchrun (every worker checks) `--device cuda` gives
    process N GPU N (loop.pick_train_device), so there must be a GPU per process on the machine;
    LOCAL_WORLD_SIZE is torchrun's count of them (scripts/train_student.sh sets it for its check)."""
    check_device(device, local=True)
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device == "cuda" and processes > 1:
        import torch

        gpus = torch.cuda.device_count()
        if processes > gpus:
            raise UsageError(f"--device cuda with {processes} processes on this machine, one GPU each: it has "
                             f"{gpus}; start at most {gpus} (torchrun --nproc_per_node)")


def preflight(args: argparse.Namespace, job: str) -> tuple[TrainConfig, list[str]]:
    """Every trainer's first checks, before it reads data or loads a model: the loop's values, the
    device, and what --output holds. Returns (config, notes to print once the trainer's own
    checks passed too); UsageError otherwise."""
    from pipelines.train.output import check_output

    cfg = train_config(args)
    check_train_device(cfg.device)
    cfg, note = check_output(cfg, job)
    notes = [f"note: {note}"] if note else []
    warning = cfg.warmup_warning()
    if warning:
        notes.append(f"warning: {warning}")
    return cfg, notes


def check_kind(flag: str, path: str, wanted: str, accepted: tuple[str, ...]) -> None:
    """A folder of another kind than `flag` takes (pipelines.data.kinds names it: a labeling run, a
    TEE, a training run folder...) is one line naming what it is; UsageError. Kinds starting with
    one of `accepted`, and folders that are none of the project's kinds, pass (later checks
    say what is missing in them)."""
    from pipelines.data.kinds import what_is

    kind = what_is(path)
    if kind is not None and not kind.startswith(accepted):
        raise UsageError(f"{flag} {path} is {kind}, not {wanted}")


def check_task(model, flag: str, path: str, wanted: str, what: str) -> None:
    """A student checkpoint of another task than a command takes: one line (UsageError)."""
    if model.config.task != wanted:
        raise UsageError(f"{flag} {path} is a {model.config.task} MiniVLM checkpoint, not {what}")


def print_notes(prog: str, notes: list[str]) -> None:
    """The notes and warnings of `preflight`, once (rank 0 of a torchrun job)."""
    import sys

    if os.environ.get("RANK", "0") == "0":
        for note in notes:
            print(f"{prog}: {note}", file=sys.stderr)
