"""The data card's numbers: bounded-memory statistics of a labels and a failures table.

The tables are streamed batch by batch (only the needed columns), so memory does not
grow with the number of images. Integer histograms are exact; score distributions are
drawn from a uniform random sample of at most SCORE_SAMPLE values (min/max/mean exact);
the sample grid is a seeded uniform sample. Word and tag counts are exact until more
than 200,000 distinct keys are seen; then only the 100,000 most frequent are kept, the
counts become approximate and the number of distinct words is estimated (HyperLogLog).
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex

from schemas import VersionedSchema
from schemas.io import iter_batches as read_batches

LABEL_COLUMNS = ["image_id", "source_uri", "sha256", "width", "height", "license", "author", "captions", "tags",
                 "captioner", "tagger", "teacher_params"]
FAILURE_COLUMNS = ["image_id", "stage", "error_type", "message"]
BATCH_ROWS = 2048
SCORE_SAMPLE = 20_000
# Letters and digits with their combining marks (a Devanagari vowel sign is a mark, not a
# break), with inner apostrophes ("don't"): punctuation is not vocabulary. Scripts written
# without spaces (Chinese, Japanese) count a whole run as one word.
WORD = regex.compile(r"[\p{L}\p{N}][\p{L}\p{N}\p{M}]*(?:'[\p{L}\p{N}][\p{L}\p{N}\p{M}]*)*")


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
    """The k items with the smallest keys in a stream, vectorised per batch.

    Without keys every item draws a random one: a uniform random sample. With keys (a
    caption's score) it is the k lowest. One numpy partition per batch instead of a
    Python loop per item, and only winners are ever materialised.
    """

    def __init__(self, k: int, rng: np.random.Generator | None = None):
        self.k, self.rng = k, rng
        self.keys = np.empty(0)
        self.items: list = []

    def offer(self, n: int, take, keys: np.ndarray | None = None) -> None:
        """Offer n items; take(indices) returns the items at those indices (only winners asked for)."""
        if n == 0 or self.k == 0:
            return
        keys = self.rng.random(n) if keys is None else np.asarray(keys, dtype=np.float64)
        both = np.concatenate([self.keys, keys])
        keep = np.argpartition(both, self.k - 1)[: self.k] if len(both) > self.k else np.arange(len(both))
        keep.sort()
        old, new = keep[keep < len(self.keys)], keep[keep >= len(self.keys)] - len(self.keys)
        self.items = [self.items[i] for i in old] + list(take(new))
        self.keys = np.concatenate([self.keys[old], keys[new]])

    def ordered(self) -> list:
        """The items, smallest key first."""
        return [self.items[i] for i in np.argsort(self.keys, kind="stable")]


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
        self.tags.update({tuple(k.split("\x1f", 1)): c for k, c in value_counts(keys).items()})
        self.tag_scores.add(_floats(pc.struct_field(flat_tags, "score")))

        pairs = pc.binary_join_element_wise(pc.fill_null(batch.column("captioner"), "(none)"),
                                            pc.fill_null(batch.column("tagger"), "(none)"), "\x1f")
        self.teachers.update({tuple(k.split("\x1f", 1)): c for k, c in value_counts(pairs).items()})
        self.teacher_params.update(value_counts(batch.column("teacher_params")))
        self.grid.offer(n, lambda idx: sample_rows(batch.take(pa.array(idx, pa.int64()))))

    def summary(self) -> dict:
        teachers = self.teachers.most_common(100)
        return {
            "images": self.images,
            "captions": {
                "total": self.captions,
                "per_image": int_keys(self.captions_per_image),
                "words_best": int_keys(self.best_words),
                "words_all": int_keys(self.all_words),
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
                "per_image": int_keys(self.tags_per_image),
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


def value_counts(arr: pa.Array) -> dict:
    counts = pc.value_counts(pc.drop_null(arr))
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))


def _histogram(values: np.ndarray) -> dict[int, int]:
    distinct, counts = np.unique(values, return_counts=True)
    return dict(zip(distinct.tolist(), counts.tolist()))


def _mean(hist: Counter) -> float | None:
    return sum(k * v for k, v in hist.items()) / sum(hist.values()) if hist else None


def int_keys(hist: Counter) -> dict:
    return {str(k): v for k, v in sorted(hist.items())}  # JSON object keys are strings


def sample_rows(batch: pa.RecordBatch) -> list[dict]:
    rows = batch.select(["image_id", "source_uri", "width", "height", "captions", "tags"]).to_pylist()
    for r in rows:  # a sample card shows a few of each; the rest would only bloat memory
        r["captions"], r["tags"] = r["captions"][:3], r["tags"][:8]
    return rows


def iter_batches(path: str, schema: VersionedSchema, columns: list[str]):
    """Record batches of every part file under `path`, version-checked, only `columns` read."""
    yield from read_batches(path, schema, columns, BATCH_ROWS)
