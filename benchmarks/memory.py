"""Peak memory of the labeling job as its input grows: it should stay flat.

    python -m benchmarks.memory [--sizes 50 200 800] [--json PATH]

Each size runs the real job (DirectRunner, tiny teachers, fast generation settings) in a
fresh interpreter over a table that lists the bundled sample photos again and again
under distinct ids, and reports that interpreter's peak RSS. Images stream through
decode -> teachers -> committed parts, so the peak should not grow with the input
beyond the per-image bookkeeping (a few hundred bytes per id in the dedupe grouping).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample" / "images"

CHILD = """
import resource, sys
from pipelines.pseudo_label import run
rc = run(sys.argv[1:])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(rc)
"""


def _table(path: Path, n: int) -> None:
    photos = sorted(SAMPLE.glob("*.jpg"))
    with open(path, "w") as f:
        f.write("image_id,uri\n")
        for i in range(n):
            f.write(f"img{i:07d},{photos[i % len(photos)]}\n")


def measure(n: int, workdir: Path) -> dict:
    table = workdir / f"table-{n}.csv"
    _table(table, n)
    args = ["--runner", "DirectRunner", "--captioner", "tiny", "--tagger", "tiny", "--num-captions", "1",
            "--num-beams", "1", "--max-new-tokens", "4", "--batch-size", "16", "--input", str(table),
            "--output", str(workdir / f"out-{n}")]
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"job with {n} images failed:\n{proc.stderr[-3000:]}")
    rss_kb = int(next(ln.split()[1] for ln in proc.stderr.splitlines() if ln.startswith("MAXRSS_KB")))
    return {"images": n, "peak_rss_mb": round(rss_kb / 1024, 1), "wall_s": round(wall, 1),
            "images_per_s": round(n / wall, 2)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 800])
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(n, Path(tmp)) for n in args.sizes]
    base = results[0]["peak_rss_mb"]
    print("| images | peak RSS (MB) | vs smallest | wall (s) | images/s |")
    print("|-------:|--------------:|------------:|---------:|---------:|")
    for r in results:
        print(f"| {r['images']} | {r['peak_rss_mb']} | {r['peak_rss_mb'] / base:.2f}x | {r['wall_s']} | "
              f"{r['images_per_s']} |")
    print("\nTiny random teachers (tiny-random): the numbers measure the pipeline, not real models.")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
