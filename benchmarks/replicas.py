"""The tiny teacher replicas: what each weighs on disk and how long it takes to build.

    python -m benchmarks.replicas [--repeats 3] [--json PATH]

Every registered tiny family (teachers/registry.py, both kinds) is built by its own builder
into a fresh temporary folder, `--repeats` times, after one untimed build of the first family
has imported torch, transformers and tokenizers (those imports, ~5 s once per process, are not
a build's cost). Prints the median build time and the folder's size on disk, all files and
the weights file (model.safetensors) apart; the builds are byte-identical, so the sizes are
the same every time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time


def folder_bytes(directory: str) -> tuple[int, int]:
    """(all files, model.safetensors) in bytes under `directory`."""
    total = weights = 0
    for root, _, files in os.walk(directory):
        for name in files:
            size = os.path.getsize(os.path.join(root, name))
            total += size
            weights += size if name == "model.safetensors" else 0
    return total, weights


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.replicas", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, not {args.repeats}")

    import teachers  # noqa: F401  (registers every replica builder)
    from teachers.registry import KINDS, build_tiny, replicated_repo, tiny_families

    families = [(kind, family) for kind in KINDS for family in tiny_families(kind)]
    with tempfile.TemporaryDirectory() as warm:  # the imports, not timed
        build_tiny(*families[0], warm)
    rows = []
    for kind, family in families:
        seconds, sizes = [], set()
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as out:
                t = time.perf_counter()
                build_tiny(kind, family, out)
                seconds.append(time.perf_counter() - t)
                sizes.add(folder_bytes(out))
        total, weights = max(sizes)
        rows.append({"kind": kind, "family": family, "repo": replicated_repo(kind, family),
                     "build_seconds": round(statistics.median(seconds), 2), "disk_mb": round(total / 1e6, 1),
                     "weights_mb": round(weights / 1e6, 1), "sizes_identical": len(sizes) == 1})
    print(f"tiny teacher replicas: median build of {args.repeats}, imports excluded\n")
    print("| kind | family | real repo | on disk | weights | build |")
    print("|---|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['kind']} | {r['family']} | `{r['repo']}` | {r['disk_mb']} MB | {r['weights_mb']} MB | "
              f"{r['build_seconds']} s |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
