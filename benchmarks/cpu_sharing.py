"""The feature job when its worker processes share the cores: every process on every core
(the old behaviour, `--threads` = the cores) against an even share (the default), side by
side in one run, quiet and beside CPU-bound neighbours.

    python -m benchmarks.cpu_sharing [--repeats 3] [--workers 2] [--busy 0 1] [--tee tiny:tee-d0] [--json PATH]

Each run is the whole command (`python -m pipelines.extract_features` on the bundled
sample, DirectRunner, --direct_running_mode multi_processing), the two settings
interleaved; the table gives the job's own time (the command's summary line: reading,
extraction and commit, not Python's start) and the process's wall time, median (min-max),
and the ratio old/new pair by pair. models/threads.py says why an even share.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.efficiency import busy_cpu
from models.threads import threads_per_caller, usable_cpus

JOB_SECONDS = re.compile(r"; ([0-9.]+)s \(")


def one_run(tee: str, workers: int, threads: int | None, output: str) -> dict:
    """One extract_features process -> {"job_s", "wall_s"}; raises with its stderr if it failed."""
    cmd = [sys.executable, "-m", "pipelines.extract_features", "--runner", "DirectRunner", "--tee", tee,
           "--output", output, "--overwrite", "--direct_num_workers", str(workers),
           "--direct_running_mode", "multi_processing"]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    found = JOB_SECONDS.findall(done.stderr)
    if done.returncode != 0 or not found:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"extract_features exited {done.returncode}:\n{tail}")
    return {"job_s": float(found[-1]), "wall_s": wall}


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.cpu_sharing", description=__doc__.splitlines()[0],
                                 allow_abbrev=False)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each setting (interleaved)")
    ap.add_argument("--workers", type=int, default=2, help="the DirectRunner's worker processes")
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 1], help="CPU-bound neighbours, one table row each")
    ap.add_argument("--tee", default="tiny:tee-d0", help="the TEE the job runs (random weights: timing is the same)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.workers < 1 or min(args.busy) < 0:
        ap.error("--repeats and --workers must be >= 1, --busy >= 0")
    cpus = usable_cpus()
    settings = {"every core": cpus, "even share": None}  # None: the job's default
    rows = []
    with tempfile.TemporaryDirectory(prefix="cpu-sharing-") as tmp:
        out = os.path.join(tmp, "features")
        one_run(args.tee, args.workers, None, out)  # warm-up: the tiny TEE's cache, Beam's imports
        for busy in args.busy:
            runs: dict[str, list[dict]] = {name: [] for name in settings}
            with busy_cpu(busy):
                for _ in range(args.repeats):
                    for name, threads in settings.items():
                        runs[name].append(one_run(args.tee, args.workers, threads, out))
            ratios = [a["job_s"] / b["job_s"] for a, b in zip(runs["every core"], runs["even share"])]
            rows.append({"busy": busy, "ratio_job": spread(ratios),
                         **{name: {"threads": threads or threads_per_caller(args.workers, cpus),
                                   "job_s": spread([r["job_s"] for r in rs]),
                                   "wall_s": spread([r["wall_s"] for r in rs])} for name, threads in settings.items()
                            for rs in [runs[name]]}})
    report = {"rows": rows, "settings": {"cpus": cpus, "workers": args.workers, "tee": args.tee,
                                         "repeats": args.repeats, "images": 22}}
    print(table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


def table(report: dict) -> str:
    s = report["settings"]

    def cell(m, fmt="{:.1f}"):
        return f"{fmt.format(m['median'])} ({fmt.format(m['min'])}-{fmt.format(m['max'])})"

    lines = [f"extract_features on the bundled sample ({s['images']} images), {s['tee']}, {s['workers']} worker "
             f"processes on {s['cpus']} cores; median (min-max) of {s['repeats']} runs each, interleaved.", "",
             "| neighbours | every core: threads | job s | wall s | even share: threads | job s | wall s "
             "| job time, every core / even share |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        a, b = r["every core"], r["even share"]
        lines.append(f"| {r['busy']} | {a['threads']} | {cell(a['job_s'])} | {cell(a['wall_s'])} | {b['threads']} "
                     f"| {cell(b['job_s'])} | {cell(b['wall_s'])} | {cell(r['ratio_job'], '{:.2f}')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    run()
