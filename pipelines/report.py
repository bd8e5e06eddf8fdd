"""A data card for a labeling run: one self-contained HTML page, its plots, and summary.json.

    python -m pipelines.report --run OUT --output REPORT_DIR
    python -m pipelines.report --labels OUT/labels [--failures OUT/failures] [--run-json OUT/run.json]
        [--tag-eval EVAL/tag_eval.json] --output REPORT_DIR [--samples 24] [--seed 0]

REPORT_DIR/index.html embeds every plot and thumbnail as a data: URI and has no external
reference, so it opens offline and can be mailed around; the plots are also written as
PNG files beside it, and the aggregate numbers as summary.json.

Scale: the tables are streamed batch by batch (only the needed columns), so memory does
not grow with the number of images. Integer histograms are exact; score distributions
are drawn from a uniform random sample of at most 20,000 values (min/max/mean exact);
the sample grid is a seeded uniform sample. Word and tag counts are exact until more
than 200,000 distinct keys are seen; then only the 100,000 most frequent are kept, the
counts become approximate and the number of distinct words is estimated (HyperLogLog).
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import math
import re
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from pipelines import images, report_plots, storage
from schemas import FAILURES, LABELS, VersionedSchema
from schemas.io import parquet_files

PROG = "report"
EXIT_USAGE = 2
LABEL_COLUMNS = ["image_id", "source_uri", "width", "height", "captions", "tags", "captioner", "tagger",
                 "teacher_params"]
FAILURE_COLUMNS = ["image_id", "stage", "error_type", "message"]
BATCH_ROWS = 2048
SCORE_SAMPLE = 20_000
THUMB_SIZE = 160
MAX_SAMPLES = 1000  # thumbnails are embedded: beyond this the page gets too heavy to open
# Letters and digits, with inner apostrophes ("don't"): punctuation is not vocabulary.
WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


class UsageError(ValueError):
    """Bad flags or unusable inputs: one line on stderr, exit code 2."""


# ---- bounded-memory aggregates --------------------------------------------------------

class DistinctSketch:
    """HyperLogLog: the number of distinct keys in 4 KiB, about 1.6 % standard error."""

    P = 12

    def __init__(self):
        self.registers = bytearray(1 << self.P)

    def add(self, key: str) -> None:
        h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
        rest_bits = 64 - self.P
        rank = rest_bits - (h & ((1 << rest_bits) - 1)).bit_length() + 1
        index = h >> rest_bits
        self.registers[index] = max(self.registers[index], rank)

    def estimate(self) -> int:
        m = len(self.registers)
        raw = 0.7213 / (1 + 1.079 / m) * m * m / sum(2.0 ** -r for r in self.registers)
        zeros = self.registers.count(0)
        # Linear counting is the better estimator while many registers are still empty.
        return round(m * math.log(m / zeros)) if raw <= 2.5 * m and zeros else round(raw)


class TopCounter:
    """A Counter that keeps only the `keep` most frequent keys once it holds more than `limit`.

    After a prune, counts may be low (a key dropped earlier starts again from zero) and the
    distinct count comes from a sketch; `approximate` says so. The sketch only sees a key
    when it enters the Counter, which every distinct key does at least once.
    """

    def __init__(self, limit: int = 200_000, keep: int = 100_000):
        if not 0 < keep < limit:
            raise ValueError(f"TopCounter needs 0 < keep < limit, got keep={keep}, limit={limit}")
        self.limit, self.keep = limit, keep
        self.counts: Counter = Counter()
        self.sketch = DistinctSketch()
        self.approximate = False

    def update(self, counts: dict) -> None:
        for key in counts:
            if key not in self.counts:
                self.sketch.add(key if isinstance(key, str) else "\x1f".join(key))
        self.counts.update(counts)
        if len(self.counts) > self.limit:
            self.counts = Counter(dict(self.counts.most_common(self.keep)))
            self.approximate = True

    def distinct(self) -> int:
        return self.sketch.estimate() if self.approximate else len(self.counts)

    def most_common(self, n: int) -> list:
        # Ties by key, so the page does not change between runs over the same data.
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


class BottomK:
    """A uniform random sample of at most k items from a stream, vectorised per batch.

    Every item draws a random key and the k smallest keys win: one numpy partition per
    batch instead of a Python loop per item, and only winners are ever materialised.
    """

    def __init__(self, k: int, rng: np.random.Generator):
        self.k, self.rng = k, rng
        self.keys = np.empty(0)
        self.items: list = []

    def offer(self, n: int, take) -> None:
        """Offer n items; take(indices) returns the items at those indices (only winners asked for)."""
        if n == 0 or self.k == 0:
            return
        keys = self.rng.random(n)
        both = np.concatenate([self.keys, keys])
        keep = np.argpartition(both, self.k - 1)[: self.k] if len(both) > self.k else np.arange(len(both))
        keep.sort()
        old, new = keep[keep < len(self.keys)], keep[keep >= len(self.keys)] - len(self.keys)
        self.items = [self.items[i] for i in old] + list(take(new))
        self.keys = np.concatenate([self.keys[old], keys[new]])


@dataclass
class Values:
    """Exact count/min/max/mean of a real-valued stream, plus a uniform sample for histograms."""

    sample: BottomK
    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    def add(self, values: np.ndarray) -> None:
        values = values[np.isfinite(values)]
        if not len(values):
            return
        self.count += len(values)
        self.total += float(values.sum())
        self.low, self.high = min(self.low, float(values.min())), max(self.high, float(values.max()))
        self.sample.offer(len(values), lambda idx: values[idx].tolist())

    def summary(self) -> dict | None:
        if not self.count:
            return None
        return {"count": self.count, "min": self.low, "max": self.high, "mean": self.total / self.count,
                "sampled": len(self.sample.items)}


def _values(rng) -> Values:
    return Values(BottomK(SCORE_SAMPLE, rng))


@dataclass
class LabelStats:
    samples: int
    rng: np.random.Generator
    images: int = 0
    captions: int = 0
    best_words: Counter = field(default_factory=Counter)  # words in the best caption -> images
    all_words: Counter = field(default_factory=Counter)  # words in any caption -> captions
    captions_per_image: Counter = field(default_factory=Counter)
    tags_per_image: Counter = field(default_factory=Counter)
    vocabulary: TopCounter = field(default_factory=TopCounter)
    tags: TopCounter = field(default_factory=TopCounter)
    teachers: TopCounter = field(default_factory=lambda: TopCounter(limit=1000, keep=100))
    teacher_params: TopCounter = field(default_factory=lambda: TopCounter(limit=1000, keep=100))
    caption_scores: Values = field(init=False)
    similarities: Values = field(init=False)
    tag_scores: Values = field(init=False)
    grid: BottomK = field(init=False)

    def __post_init__(self):
        self.caption_scores, self.similarities, self.tag_scores = (_values(self.rng) for _ in range(3))
        self.grid = BottomK(self.samples, self.rng)

    def add(self, batch: pa.RecordBatch) -> None:
        n = batch.num_rows
        self.images += n
        caps, tags = batch.column("captions"), batch.column("tags")
        n_caps = pc.fill_null(pc.list_value_length(caps), 0).to_numpy(zero_copy_only=False)
        n_tags = pc.fill_null(pc.list_value_length(tags), 0).to_numpy(zero_copy_only=False)
        self.captions += int(n_caps.sum())
        self.captions_per_image.update(_histogram(n_caps))
        self.tags_per_image.update(_histogram(n_tags))

        flat = pc.list_flatten(caps)
        first = set((np.cumsum(n_caps) - n_caps)[n_caps > 0].tolist())  # index of each image's best caption
        words = Counter()
        for i, text in enumerate(pc.struct_field(flat, "text").to_pylist()):
            tokens = WORD.findall((text or "").lower())
            words.update(tokens)
            self.all_words[len(tokens)] += 1
            if i in first:
                self.best_words[len(tokens)] += 1
        self.vocabulary.update(words)
        self.caption_scores.add(_floats(pc.struct_field(flat, "score")))
        self.similarities.add(_floats(pc.struct_field(flat, "similarity")))

        flat_tags = pc.list_flatten(tags)
        keys = pc.binary_join_element_wise(pc.struct_field(flat_tags, "label"), pc.struct_field(flat_tags, "name"),
                                           "\x1f")
        self.tags.update({tuple(k.split("\x1f", 1)): c for k, c in _value_counts(keys).items()})
        self.tag_scores.add(_floats(pc.struct_field(flat_tags, "score")))

        pairs = pc.binary_join_element_wise(pc.fill_null(batch.column("captioner"), "(none)"),
                                            pc.fill_null(batch.column("tagger"), "(none)"), "\x1f")
        self.teachers.update({tuple(k.split("\x1f", 1)): c for k, c in _value_counts(pairs).items()})
        self.teacher_params.update(_value_counts(batch.column("teacher_params")))
        self.grid.offer(n, lambda idx: _sample_rows(batch.take(pa.array(idx, pa.int64()))))

    def summary(self) -> dict:
        teachers = self.teachers.most_common(100)
        return {
            "images": self.images,
            "captions": {
                "total": self.captions,
                "per_image": _int_keys(self.captions_per_image),
                "words_best": _int_keys(self.best_words),
                "words_all": _int_keys(self.all_words),
                "mean_words_best": _mean(self.best_words),
                "mean_words_all": _mean(self.all_words),
                "vocabulary_size": self.vocabulary.distinct(),
                "counts_approximate": self.vocabulary.approximate,
                "top_words": [[w, c] for w, c in self.vocabulary.most_common(30)],
                "score": self.caption_scores.summary(),
                "similarity": self.similarities.summary(),
            },
            "tags": {
                "total": int(sum(k * v for k, v in self.tags_per_image.items())),
                "distinct": self.tags.distinct(),
                "counts_approximate": self.tags.approximate,
                "per_image": _int_keys(self.tags_per_image),
                "top": [{"label": k[0], "name": k[1], "count": c} for k, c in self.tags.most_common(50)],
                "score": self.tag_scores.summary(),
            },
            "teachers": [{"captioner": k[0], "tagger": k[1], "images": c} for k, c in teachers],
            "teacher_params": [{"params": k, "images": c} for k, c in self.teacher_params.most_common(5)],
            "tiny_random": any("tiny-random" in part for k, _ in teachers for part in k),
        }


@dataclass
class FailureStats:
    rows: int = 0
    by_kind: dict = field(default_factory=dict)  # (stage, error_type) -> [count, example message, image_id]

    def add(self, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows
        groups = pa.Table.from_batches([batch]).group_by(["stage", "error_type"], use_threads=False).aggregate(
            [("image_id", "count"), ("message", "first"), ("image_id", "first")])
        for g in groups.to_pylist():
            entry = self.by_kind.setdefault((g["stage"], g["error_type"]), [0, g["message_first"], g["image_id_first"]])
            entry[0] += g["image_id_count"]

    def summary(self) -> dict:
        by_stage, by_type = Counter(), Counter()
        for (stage, error_type), (count, _, _) in self.by_kind.items():
            by_stage[stage] += count
            by_type[error_type] += count
        kinds = sorted(self.by_kind.items(), key=lambda kv: (-kv[1][0], kv[0]))
        return {"total": self.rows, "by_stage": dict(sorted(by_stage.items())),
                "by_error_type": dict(sorted(by_type.items())),
                "examples": [{"stage": s, "error_type": t, "count": c, "message": m, "image_id": i}
                             for (s, t), (c, m, i) in kinds]}


def _floats(arr: pa.Array) -> np.ndarray:
    return pc.drop_null(arr).to_numpy(zero_copy_only=False).astype(np.float64)


def _value_counts(arr: pa.Array) -> dict:
    counts = pc.value_counts(pc.drop_null(arr))
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))


def _histogram(values: np.ndarray) -> dict[int, int]:
    distinct, counts = np.unique(values, return_counts=True)
    return dict(zip(distinct.tolist(), counts.tolist()))


def _mean(hist: Counter) -> float | None:
    return sum(k * v for k, v in hist.items()) / sum(hist.values()) if hist else None


def _int_keys(hist: Counter) -> dict:
    return {str(k): v for k, v in sorted(hist.items())}  # JSON object keys are strings


def _sample_rows(batch: pa.RecordBatch) -> list[dict]:
    rows = batch.select(["image_id", "source_uri", "width", "height", "captions", "tags"]).to_pylist()
    for r in rows:  # a sample card shows a few of each; the rest would only bloat memory
        r["captions"], r["tags"] = r["captions"][:3], r["tags"][:8]
    return rows


# ---- reading ----------------------------------------------------------------------------

def iter_batches(path: str, schema: VersionedSchema, columns: list[str]):
    """Record batches of every part file under `path`, version-checked, only `columns` read."""
    for file in parquet_files(path):
        with fsspec.open(file, "rb") as f:
            pf = pq.ParquetFile(f)
            schema.check(pf.schema_arrow, where=file)
            yield from pf.iter_batches(batch_size=BATCH_ROWS, columns=columns)


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


def resolve_inputs(args: argparse.Namespace) -> Inputs:
    if not 0 <= args.samples <= MAX_SAMPLES:
        raise UsageError(f"--samples must be between 0 and {MAX_SAMPLES}, not {args.samples}")
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


def build(inputs: Inputs, *, samples: int = 24, seed: int = 0) -> dict:
    """Read everything and aggregate: the summary, the sample rows and the extra documents."""
    run_record = read_json(inputs.run_json, "--run-json") if inputs.run_json else None
    tag_eval = check_tag_eval(read_json(inputs.tag_eval, "--tag-eval"), inputs.tag_eval) if inputs.tag_eval else None
    stats = LabelStats(samples=samples, rng=np.random.default_rng(seed))
    for batch in iter_batches(inputs.labels, LABELS, LABEL_COLUMNS):
        stats.add(batch)
    fails = FailureStats()
    if inputs.failures:
        for batch in iter_batches(inputs.failures, FAILURES, FAILURE_COLUMNS):
            fails.add(batch)
    grid = stats.grid.items
    add_thumbnails(grid)
    labels = stats.summary()
    summary = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": {"labels": inputs.labels, "failures": inputs.failures, "run_json": inputs.run_json,
                   "tag_eval": inputs.tag_eval},
        "counts": {"labeled": stats.images, "failed": fails.rows, "total": stats.images + fails.rows},
        "labels": labels,
        "failures": fails.summary() if inputs.failures else None,
        "samples": {"requested": samples, "shown": len(grid), "seed": seed,
                    "unreadable": sum(1 for r in grid if r["thumbnail"] is None),
                    "image_ids": [r["image_id"] for r in grid]},
        # Also from run.json: a run that labeled nothing still says which teachers it had.
        "tiny_random": labels["tiny_random"] or "tiny-random" in json.dumps((run_record or {}).get("teachers")),
        "tag_eval": None if tag_eval is None else {"threshold": tag_eval["threshold"], **tag_eval["overall"]},
    }
    return {"summary": summary, "grid": grid, "run": run_record, "tag_eval": tag_eval,
            "caption_scores": stats.caption_scores.sample.items, "similarities": stats.similarities.sample.items,
            "tag_scores": stats.tag_scores.sample.items}


def plots(data: dict) -> dict[str, bytes]:
    """name -> PNG bytes, only for the plots that have data."""
    s = data["summary"]["labels"]
    caps, tags = s["captions"], s["tags"]

    def ints(hist):
        return {int(k): v for k, v in hist.items()}

    out = {}
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
    pngs = plots(data)
    fs, root = fsspec.core.url_to_fs(output)
    fs.makedirs(root, exist_ok=True)
    for name, png in pngs.items():
        with fs.open(f"{root}/{name}.png", "wb") as f:
            f.write(png)
    with fs.open(f"{root}/summary.json", "w") as f:
        f.write(json.dumps(data["summary"], indent=2, sort_keys=True))
    with fs.open(f"{root}/index.html", "w") as f:
        f.write(report_plots.render_page(data, pngs))
    return storage.join(output, "index.html")


# ---- command line -------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + error, like the other CLIs' errors
        raise UsageError(message)


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m pipelines.report", description=__doc__.splitlines()[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", help="a labeling job's --output: labels/, failures/ and run.json inside")
    where.add_argument("--labels", help="the labels table (directory, glob or file; local, gs://, s3://)")
    ap.add_argument("--failures", default=None, help="the failures table (default with --run: OUT/failures)")
    ap.add_argument("--run-json", default=None, help="the run record (default with --run: OUT/run.json)")
    ap.add_argument("--tag-eval", default=None, help="tag_eval.json (or its directory) from pipelines.evaluate_tags: adds tag quality")
    ap.add_argument("--output", required=True, help="report directory (local, gs://, s3://)")
    ap.add_argument("--samples", type=int, default=24, help="images in the sample grid")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sample grid and the score samples")
    return ap


def run(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        inputs = resolve_inputs(args)
        data = build(inputs, samples=args.samples, seed=args.seed)
    except (ValueError, OSError) as e:  # UsageError, SchemaVersionError, unreadable or missing inputs
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        page = write_report(data, args.output)
    except OSError as e:
        print(f"{PROG}: error: cannot write the report to {args.output}: {e}", file=sys.stderr)
        return EXIT_USAGE
    c = data["summary"]["counts"]
    print(f"{PROG}: {c['labeled']} labeled, {c['failed']} failed -> {page}", file=sys.stderr)
    return 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
