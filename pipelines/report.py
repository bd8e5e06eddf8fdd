"""A data card for a labeling run: one self-contained HTML page, its plots, and summary.json.

    python -m pipelines.report --run OUT --output REPORT_DIR
    python -m pipelines.report --labels OUT/labels [--failures OUT/failures] [--run-json OUT/run.json]
        [--tag-eval EVAL/tag_eval.json] --output REPORT_DIR [--samples 24] [--seed 0] [--lowest 12]
        [--min-repeats 2]

REPORT_DIR/index.html embeds every plot and thumbnail as a data: URI and has no external
reference, so it opens offline and can be mailed around; the plots are also written as
PNG files beside it, the aggregate numbers as summary.json, and the image ids the page
flags (duplicates, repeated captions, the lowest-scored) as flagged.csv.

Scale: the tables are streamed, so memory does not grow with the number of images
(pipelines.eval.card says how each number is kept).
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

import fsspec
import numpy as np
from PIL import Image

from pipelines.cli import CommandParser, UsageError, usage_error
from pipelines.data import images, storage
from pipelines.eval.card import FAILURE_COLUMNS, LABEL_COLUMNS, FailureStats, LabelStats, iter_batches
from schemas import FAILURES, LABELS
from schemas.io import parquet_files

# pipelines.eval.plots (matplotlib) is imported where a page is drawn: --help and flag
# errors need none of it.

PROG = "report"
THUMB_SIZE = 160
MAX_SAMPLES = 1000  # thumbnails are embedded: beyond this the page gets too heavy to open


def thumbnail(uri: str, size: int = THUMB_SIZE) -> tuple[str | None, tuple[int, int] | None, str | None]:
    """(JPEG data: URI, decoded (w, h), None) or (None, None, reason): a bad image never sinks the page."""
    try:
        data = storage.read_bytes(uri, retries=1, backoff_s=0.2)
        # The project's decoder, EXIF orientation applied. The manifest's Rotation is not in
        # the labels table, so an image rotated through it shows unrotated here.
        decoded = images.decode_image(data, target_size=size)
    except images.ImageError as e:
        return None, None, f"{e.reason}: {e}"
    except Exception as e:  # missing object, bad URL, network: all one placeholder
        return None, None, f"{type(e).__name__}: {e}"
    img = Image.fromarray(decoded.pixels)
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode(), img.size, None


def add_thumbnails(rows: list[dict]) -> None:
    # Threads: on a bucket the sample grid is a couple of dozen independent GETs.
    with ThreadPoolExecutor(max_workers=4) as pool:
        for row, (uri, size, reason) in zip(rows, pool.map(thumbnail, [r["source_uri"] for r in rows])):
            row["thumbnail"], row["thumbnail_error"] = uri, reason
            # Decoded sideways relative to the recorded (oriented) size: a manifest Rotation, most likely.
            row["orientation_differs"] = bool(size and row["width"] != row["height"]
                                              and (size[0] > size[1]) != (row["width"] > row["height"]))


def read_json(path: str, what: str) -> dict:
    try:
        value = json.loads(storage.read_text(path))
    except FileNotFoundError as e:
        raise UsageError(f"{what} {path} does not exist") from e
    except json.JSONDecodeError as e:
        raise UsageError(f"{what} {path} is not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise UsageError(f"{what} {path} is not a JSON object")
    return value


def check_tag_eval(value: dict, path: str) -> dict:
    """The few fields the page uses, with a precise complaint about the first one that is off."""
    def number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    if not number(value.get("threshold")):
        raise UsageError(f"--tag-eval {path}: 'threshold' must be a number")
    overall = value.get("overall")
    if not isinstance(overall, dict):
        raise UsageError(f"--tag-eval {path}: 'overall' must be an object")
    for key in ("precision", "recall", "f1"):
        if overall.get(key) is not None and not number(overall.get(key)):
            raise UsageError(f"--tag-eval {path}: overall.{key} must be a number or null")
    for name in ("curve", "per_class"):
        if not isinstance(value.get(name, []), list):
            raise UsageError(f"--tag-eval {path}: {name!r} must be a list")
    for i, point in enumerate(value.get("curve", [])):
        # null where undefined (no predictions, no positives): such points are left off the plot
        if not isinstance(point, dict) or not all(point.get(k) is None or number(point[k])
                                                  for k in ("precision", "recall")):
            raise UsageError(f"--tag-eval {path}: curve[{i}] needs numeric or null precision and recall")
    return value


# ---- the report -----------------------------------------------------------------------

@dataclass(frozen=True)
class Inputs:
    labels: str
    failures: str | None = None
    run_json: str | None = None
    tag_eval: str | None = None


def check_kinds(args: argparse.Namespace) -> None:
    """A features run or a corpus as --run, a run folder as --labels: named, not read as an
    empty table (which made a card saying "0 labeled")."""
    from pipelines.eval.inputs import labeling_run_problem, labels_table_problem

    problem = (labeling_run_problem("--run", args.run, table_flag="--labels") if args.run
               else labels_table_problem("--labels", args.labels, run_flag="--run"))
    if problem:
        raise UsageError(problem)


def resolve_inputs(args: argparse.Namespace) -> Inputs:
    if not 0 <= args.samples <= MAX_SAMPLES:
        raise UsageError(f"--samples must be between 0 and {MAX_SAMPLES}, not {args.samples}")
    if not 0 <= args.lowest <= MAX_SAMPLES:
        raise UsageError(f"--lowest must be between 0 and {MAX_SAMPLES}, not {args.lowest}")
    if args.min_repeats < 2:
        raise UsageError(f"--min-repeats must be at least 2, not {args.min_repeats}")
    check_kinds(args)
    failures, run_json = args.failures, args.run_json
    if args.run:
        if not (storage.exists(args.run) or parquet_files(storage.join(args.run, "labels"))):
            raise UsageError(f"--run {args.run} does not exist")
        # A run writes a table's folder with its first part: no failures/ means none failed.
        labels = storage.join(args.run, "labels")
        failures = failures or storage.join(args.run, "failures")
        if run_json is None and storage.exists(storage.join(args.run, "run.json")):
            run_json = storage.join(args.run, "run.json")
    else:
        labels = args.labels
        # Object stores have no directories: a table with no part files may simply be empty.
        # A path that is neither there nor vouched for by a run record is a typo, though.
        if not parquet_files(labels) and not storage.exists(labels) and not run_json:
            raise UsageError(f"--labels {labels} has no Parquet files and does not exist")
    if args.failures and not (parquet_files(args.failures) or storage.exists(args.failures)):
        raise UsageError(f"--failures {args.failures} has no Parquet files and does not exist")
    tag_eval = args.tag_eval
    if tag_eval and not tag_eval.endswith(".json") and storage.exists(storage.join(tag_eval, "tag_eval.json")):
        tag_eval = storage.join(tag_eval, "tag_eval.json")  # evaluate_tags' --output DIR
    return Inputs(labels=labels, failures=failures, run_json=run_json, tag_eval=tag_eval)


def build(inputs: Inputs, *, workdir: str, samples: int = 24, seed: int = 0, lowest: int = 12, min_repeats: int = 2,
          quiet: bool = True) -> dict:
    """Read everything and aggregate: the summary, the sample rows and the extra documents.

    `workdir` (local, empty, the caller's to remove) holds the on-disk groups while the
    tables stream past, then the flagged ids' CSV that write_report copies beside the page.
    """
    from pipelines.cli.progress import Progress
    from pipelines.eval.curation import Curation
    from schemas import count_rows

    run_record = read_json(inputs.run_json, "--run-json") if inputs.run_json else None
    tag_eval = check_tag_eval(read_json(inputs.tag_eval, "--tag-eval"), inputs.tag_eval) if inputs.tag_eval else None
    stats = LabelStats(samples=samples, rng=np.random.default_rng(seed))
    curation = Curation(workdir, lowest=lowest, min_repeats=min_repeats)
    total = None if quiet else (count_rows(inputs.labels, LABELS)  # from the files' footers: cheap
                                + (count_rows(inputs.failures, FAILURES) if inputs.failures else 0))
    progress = Progress(PROG, total=total, unit="rows", quiet=quiet)
    try:
        for batch in iter_batches(inputs.labels, LABELS, LABEL_COLUMNS):
            stats.add(batch)
            curation.add(batch)
            progress.add(batch.num_rows)
        fails = FailureStats()
        if inputs.failures:
            for batch in iter_batches(inputs.failures, FAILURES, FAILURE_COLUMNS):
                fails.add(batch)
                progress.add(batch.num_rows)
    except BaseException:
        curation.close()
        raise
    progress.close()
    curated = curation.finish()
    grid = stats.grid.items
    add_thumbnails(grid + curated["lowest"]["score"] + curated["lowest"]["similarity"])
    labels = stats.summary()
    summary = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": {"labels": inputs.labels, "failures": inputs.failures, "run_json": inputs.run_json,
                   "tag_eval": inputs.tag_eval},
        "counts": {"labeled": stats.images, "failed": fails.rows, "total": stats.images + fails.rows},
        "labels": labels,
        "curation": {k: v for k, v in curated.items() if k != "lowest"},
        "lowest": {"k": lowest, "score": [_brief(r) for r in curated["lowest"]["score"]],
                   "similarity": [_brief(r) for r in curated["lowest"]["similarity"]]},
        "failures": fails.summary() if inputs.failures else None,
        "samples": {"requested": samples, "shown": len(grid), "seed": seed,
                    "unreadable": sum(1 for r in grid if r["thumbnail"] is None),
                    "image_ids": [r["image_id"] for r in grid]},
        # Also from run.json: a run that labeled nothing still says which teachers it had.
        "tiny_random": labels["tiny_random"] or "tiny-random" in json.dumps((run_record or {}).get("teachers")),
        "tag_eval": None if tag_eval is None else {"threshold": tag_eval["threshold"], **tag_eval["overall"]},
    }
    return {"summary": summary, "grid": grid, "lowest": curated["lowest"], "run": run_record, "tag_eval": tag_eval,
            "flagged_csv": os.path.join(workdir, curated["flagged"]["file"]),
            "caption_scores": stats.caption_scores.sample.items, "similarities": stats.similarities.sample.items,
            "tag_scores": stats.tag_scores.sample.items}


def _brief(row: dict) -> dict:
    return {"image_id": row["image_id"], "value": row["key"],
            "caption": row["captions"][0]["text"] if row["captions"] else None}


def plots(data: dict) -> dict[str, bytes]:
    """name -> PNG bytes, only for the plots that have data."""
    from pipelines.eval import plots as report_plots

    s = data["summary"]["labels"]
    caps, tags = s["captions"], s["tags"]

    def ints(hist):
        return {int(k): v for k, v in hist.items()}

    out = {}
    sizes = data["summary"]["curation"]["sizes"]
    if sizes["images"]:
        out["image_sizes"] = report_plots.weighted_histogram(
            {"width": ints(sizes["width"]), "height": ints(sizes["height"])}, title="Image size (full resolution)",
            xlabel="pixels", ylabel="images")
        out["aspect_ratios"] = report_plots.weighted_histogram(
            {"width / height": {float(k): v for k, v in sizes["aspect"].items()}}, title="Aspect ratio",
            xlabel="width / height", ylabel="images", pad=0.02, marks={"1:1": 1.0, "4:3": 4 / 3, "3:4": 0.75, "16:9": 16 / 9})
    if caps["total"]:
        out["caption_lengths"] = report_plots.int_histogram(
            {"best caption": ints(caps["words_best"]), "all captions": ints(caps["words_all"])},
            title="Caption length", xlabel="words per caption", ylabel="captions")
        out["top_words"] = report_plots.top_bars(caps["top_words"], title="Top 30 words (all captions)")
        out["caption_scores"] = report_plots.value_histogram(
            {"score": data["caption_scores"]}, title="Caption score (captioner's sequence score)", xlabel="score")
    if data["similarities"]:
        out["caption_similarity"] = report_plots.value_histogram(
            {"similarity": data["similarities"]}, title="Image-text similarity (reranking)", xlabel="similarity")
    if s["images"]:
        out["captions_per_image"] = report_plots.int_histogram(
            {"images": ints(caps["per_image"])}, title="Captions per image", xlabel="captions", ylabel="images")
        out["tags_per_image"] = report_plots.int_histogram(
            {"images": ints(tags["per_image"])}, title="Tags per image", xlabel="tags", ylabel="images")
    if tags["total"]:
        out["top_tags"] = report_plots.top_bars([(t["name"], t["count"]) for t in tags["top"]],
                                                title=f"Top {len(tags['top'])} tags", xlabel="images")
        out["tag_scores"] = report_plots.value_histogram({"score": data["tag_scores"]}, title="Tag score",
                                                         xlabel="score")
    failures = data["summary"]["failures"]
    if failures and failures["total"]:
        out["failures"] = report_plots.failure_bars(failures["by_stage"], failures["by_error_type"])
    if data["tag_eval"]:
        ev = data["tag_eval"]
        out["tag_pr_curve"] = report_plots.pr_curve(ev.get("curve", []), ev["threshold"], ev["overall"])
    return out


def write_report(data: dict, output: str) -> str:
    """Write index.html, summary.json and the PNGs under `output`; returns the page's path."""
    from pipelines.eval import plots as report_plots

    pngs = plots(data)
    fs, root = fsspec.core.url_to_fs(output)
    fs.makedirs(root, exist_ok=True)
    for name, png in pngs.items():
        with fs.open(f"{root}/{name}.png", "wb") as f:
            f.write(png)
    fs.put_file(data["flagged_csv"], f"{root}/{os.path.basename(data['flagged_csv'])}")
    with fs.open(f"{root}/summary.json", "w") as f:
        f.write(json.dumps(data["summary"], indent=2, sort_keys=True))
    with fs.open(f"{root}/index.html", "w") as f:
        f.write(report_plots.render_page(data, pngs))
    return storage.join(output, "index.html")


# ---- command line -------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    ap = CommandParser(prog="python -m pipelines.report", description=__doc__.splitlines()[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", help="a labeling job's --output: labels/, failures/ and run.json inside")
    where.add_argument("--labels", help="the labels table (directory, glob or file; local, gs://, s3://)")
    ap.add_argument("--failures", default=None, help="the failures table; --run reads OUT/failures unless this is given")
    ap.add_argument("--run-json", default=None, help="the run record; --run reads OUT/run.json unless this is given")
    ap.add_argument("--tag-eval", default=None, help="tag_eval.json (or its directory) from pipelines.evaluate_tags: adds tag quality")
    ap.add_argument("--output", required=True, help="report directory (local, gs://, s3://)")
    ap.add_argument("--samples", type=int, default=24, help="images in the sample grid")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sample grid and the score samples")
    ap.add_argument("--lowest", type=int, default=12,
                    help="images shown and flagged with the lowest best-caption score (and similarity)")
    ap.add_argument("--min-repeats", type=int, default=2,
                    help="a best caption shared by this many images or more is flagged as repeated")
    ap.add_argument("--quiet", action="store_true", help="no progress line on stderr while the tables are read")
    return ap


def run(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        inputs = resolve_inputs(args)
    except (ValueError, OSError) as e:  # UsageError, unreadable inputs
        return usage_error(PROG, e)
    with tempfile.TemporaryDirectory(prefix="minivlm-report-") as workdir:
        try:
            data = build(inputs, workdir=workdir, samples=args.samples, seed=args.seed, lowest=args.lowest,
                         min_repeats=args.min_repeats, quiet=args.quiet)
        except (ValueError, OSError) as e:  # SchemaVersionError, unreadable or missing inputs
            return usage_error(PROG, e)
        try:
            page = write_report(data, args.output)
        except OSError as e:
            return usage_error(PROG, UsageError(f"cannot write the report to {args.output}: {e}"))
    c = data["summary"]["counts"]
    print(f"{PROG}: {c['labeled']} labeled, {c['failed']} failed -> {page}", file=sys.stderr)
    return 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
