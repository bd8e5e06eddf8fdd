"""Peak memory of the labeling job as its input grows: it should stay flat.

    python -m benchmarks.memory [--sizes 50 200 800] [--teachers tiny|off]
                                [--dedupe auto|disk|shuffle] [--json PATH]

Each size runs the real job (DirectRunner, tiny teachers, fast generation settings) in a
fresh interpreter over a table that lists the bundled sample photos again and again
under distinct ids, and reports that interpreter's peak RSS. Images stream through
decode -> teachers -> committed parts, and the per-image bookkeeping (which rows are
new, the ids earlier runs committed, the launcher's own count) lives on disk, so the
peak should not grow with the input. The table ends with the slope of peak RSS over
input size, a least-squares fit over all the sizes, in KB (1000 bytes) per image.
`--dedupe shuffle` selects the rows the way Dataflow does, by a CoGroupByKey, which the
DirectRunner holds in memory: the job as it was before the on-disk selection.

`--teachers off` runs the same job with both teachers off (`run_decode_write`: the
labeling job's own stages, decode -> labels rows with no captions or tags -> committed
parts): what the pipeline itself costs, without any model. The CLI refuses
`--captioner none --tagger none`, so this job is assembled here from the same pieces.
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

import apache_beam as beam

from pipelines.beam.labeling import FAILED, KIND, LabelJob, MakeRow, commit_outputs, read_images
from schemas import LABELS, labels_row

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample" / "images"

# A fresh interpreter runs one job and reports its own peak RSS on stderr.
CHILD = """
import sys
from benchmarks.memory import peak_rss_kb
if sys.argv[1] == "off":
    from benchmarks.memory import run_decode_write as run
else:
    from pipelines.pseudo_label import run
rc = run(sys.argv[2:])
print("MAXRSS_KB", peak_rss_kb(), file=sys.stderr)
sys.exit(rc)
"""


def peak_rss_kb() -> int:
    """This process's peak resident set size (KiB) since it started its program.

    Linux: VmHWM of /proc/self/status. Not ru_maxrss: a child started by vfork + exec
    (Python's subprocess) inherits its parent's peak there, so a child of a large
    parent would report at least the parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ---- the labeling job with both teachers off ----------------------------------------

class DecodeOnlyRow(MakeRow):
    """MakeRow with no teachers: a labels row with no captions or tags (failures as MakeRow)."""

    def _row(self, work):
        if work.failure is not None:
            return super()._row(work)
        ref = work.ref
        return LABELS.validate_row(labels_row(
            image_id=ref.image_id, source_uri=ref.uri, sha256=work.sha256, width=work.width,
            height=work.height, license=ref.license, author=ref.author, original_url=ref.original_url,
            captions=[], tags=[], captioner=None, tagger=None, teacher_params=self.params))


def build_decode_write(p, job):
    """The labeling job minus its teachers: read_images -> labels rows -> commit_outputs."""
    work, decode_failures = read_images(p, job, KIND)
    rows = work | "MakeRow" >> beam.ParDo(DecodeOnlyRow(job)).with_outputs(FAILED, main="labels")
    return commit_outputs(job, KIND, rows.labels, [decode_failures, rows[FAILED]])


def run_decode_write(argv: list[str]) -> int:
    """`python -m pipelines.pseudo_label ARGS` with both teachers off (their flags are ignored).

    Same flags, same launcher (jobrun.run_job: output checks, run.json, counts read
    back from the files, the consistency check), same stages, real Parquet parts.
    """
    from pipelines import pseudo_label
    from pipelines.beam import jobrun

    args, beam_args = pseudo_label.parse_args(argv)

    def make_job(a):
        return LabelJob(**jobrun.common_job_fields(a), captioner=None, tagger=None, vocab=None)

    return jobrun.run_job(KIND, args, beam_args, make_job=make_job, build=build_decode_write,
                          describe=pseudo_label.describe)


# ---- running one job in a fresh interpreter -----------------------------------------

def write_table(path: Path, n: int, photos: list | None = None) -> None:
    """An image_id,uri table of n distinct ids cycling over `photos` (default: the sample)."""
    photos = photos or sorted(SAMPLE.glob("*.jpg"))
    with open(path, "w") as f:
        f.write("image_id,uri\n")
        for i in range(n):
            f.write(f"img{i:07d},{photos[i % len(photos)]}\n")


def run_child(job_args: list[str], *, teachers_off: bool = False, env: dict | None = None) -> dict:
    """Run one labeling job in a fresh interpreter: its peak RSS, process wall time and run.json."""
    cmd = [sys.executable, "-c", CHILD, "off" if teachers_off else "on", *job_args]
    started = time.time()
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"job {' '.join(job_args)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    rss_kb = int(next(ln.split()[1] for ln in proc.stderr.splitlines() if ln.startswith("MAXRSS_KB")))
    output = job_args[job_args.index("--output") + 1]
    record = json.loads(Path(output, "run.json").read_text())
    return {"peak_rss_kb": rss_kb, "process_wall_s": wall, "started_at": started, "run": record,
            "stderr": proc.stderr}


def measure(n: int, workdir: Path, teachers: str = "tiny", photos: list | None = None,
            dedupe: str = "auto") -> dict:
    table = workdir / f"table-{n}.csv"
    write_table(table, n, photos)
    args = ["--runner", "DirectRunner", "--input", str(table), "--output", str(workdir / f"out-{teachers}-{n}"),
            "--dedupe", dedupe]
    if teachers == "tiny":
        args += ["--captioner", "tiny", "--tagger", "tiny", "--num-captions", "1", "--num-beams", "1",
                 "--max-new-tokens", "4", "--batch-size", "16"]
    r = run_child(args, teachers_off=teachers == "off")
    wall = r["process_wall_s"]
    return {"images": n, "teachers": teachers, "peak_rss_mb": round(r["peak_rss_kb"] / 1024, 1),
            "peak_rss_kb": r["peak_rss_kb"], "wall_s": round(wall, 1), "images_per_s": round(n / wall, 2),
            "job_wall_s": r["run"]["wall_seconds"], "counts": r["run"]["counts"], "dedupe": r["run"]["dedupe"]}


def slope_kb_per_image(results: list[dict]) -> float:
    """Least-squares slope of peak RSS (bytes) over images, in KB (1000 bytes) per image."""
    xs = [r["images"] for r in results]
    ys = [r["peak_rss_kb"] * 1024 for r in results]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("--sizes needs at least two different sizes to fit a slope")
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx / 1000


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 800])
    ap.add_argument("--teachers", choices=("tiny", "off"), default="tiny",
                    help="tiny random teachers, or none at all (decode + write only)")
    ap.add_argument("--dedupe", choices=("auto", "disk", "shuffle"), default="auto",
                    help="the job's --dedupe: auto is disk on the DirectRunner; shuffle = the in-memory grouping")
    ap.add_argument("--target-kb", type=float, default=0.3, help="the slope that counts as flat, KB per image")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if len(set(args.sizes)) < 2:
        ap.error("--sizes needs at least two different sizes to fit a slope")
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(n, Path(tmp), args.teachers, dedupe=args.dedupe) for n in args.sizes]
    slope = slope_kb_per_image(results)
    base = results[0]["peak_rss_mb"]
    print("| images | peak RSS (MB) | vs smallest | wall (s) | images/s |")
    print("|-------:|--------------:|------------:|---------:|---------:|")
    for r in results:
        print(f"| {r['images']} | {r['peak_rss_mb']} | {r['peak_rss_mb'] / base:.2f}x | {r['wall_s']} | "
              f"{r['images_per_s']} |")
    holds = "holds" if slope <= args.target_kb else "does not hold"
    print(f"| slope (least squares, {len(results)} sizes) | {slope:.3f} KB per image | target <= "
          f"{args.target_kb:g}: {holds} | | |")
    print(f"\nSelection: --dedupe {args.dedupe} ({results[0]['dedupe']}). At this slope, 9M images change the "
          f"peak by {slope * 9e6 / 1e6:+.2f} GB.")  # KB per image x images / 1e6 = GB
    if args.teachers == "tiny":
        print("\nTiny random teachers (tiny-random): the numbers measure the pipeline, not real models.")
    else:
        print("\nTeachers off: decode + labels rows + committed parts only.")
    if args.json:
        report = {"slope_kb_per_image": slope, "target_kb_per_image": args.target_kb, "dedupe": args.dedupe,
                  "teachers": args.teachers, "results": results}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
