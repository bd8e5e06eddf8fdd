"""What a curator fixes: duplicates, repeated captions, weak labels, image sizes, attribution.

Streamed with the card's other numbers (pipelines.eval.card), in bounded memory:
- exact duplicates (same sha256), repeated image ids and repeated best captions are
  grouped on disk (pipelines.data.idset.KeyGroups), so their counts are exact at any size;
- widths, heights and aspect ratios (to 0.01) are exact histograms: at most a few
  thousand distinct values whatever the number of images;
- licenses and authors are counted like the tags (exact until 200,000 distinct keys);
- the lowest-scored and least image-similar best captions are kept as the k smallest.

`Curation.finish` writes every flagged image id as CSV (image_id, reason, detail), one
row per (image, reason), grouped by reason: the page links it, a curator filters it.
"""
from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.data.idset import KeyGroups
from pipelines.data.text import caption_key
from pipelines.eval.card import BottomK, TopCounter, int_keys, sample_rows, value_counts

COLUMNS = ["image_id", "source_uri", "sha256", "width", "height", "license", "author", "captions", "tags"]
REASONS = ("duplicate_image", "repeated_image_id", "repeated_caption", "low_caption_score", "low_similarity")
SHOWN_GROUPS = 20
FLAGGED_CSV = "flagged.csv"


def best_captions(captions: pa.Array) -> tuple[np.ndarray, list, np.ndarray, np.ndarray]:
    """Each image's first (the teacher's top-ranked) caption: (has one, text, score, similarity).

    Rows without captions get None / NaN; null similarities (no reranking) are NaN.
    """
    n_caps = pc.fill_null(pc.list_value_length(captions), 0).to_numpy(zero_copy_only=False)
    has = n_caps > 0
    first = (np.cumsum(n_caps) - n_caps)[has]  # flat index of each captioned image's first caption
    flat = pc.list_flatten(captions)
    texts: list = [None] * len(n_caps)
    scores, sims = np.full(len(n_caps), np.nan), np.full(len(n_caps), np.nan)
    if len(first):
        picked = flat.take(pa.array(first, pa.int64()))
        for i, text in zip(np.flatnonzero(has).tolist(), pc.struct_field(picked, "text").to_pylist()):
            texts[i] = text
        scores[has] = pc.struct_field(picked, "score").to_numpy(zero_copy_only=False)
        sims[has] = pc.fill_null(pc.struct_field(picked, "similarity"), np.nan).to_numpy(zero_copy_only=False)
    return has, texts, scores, sims


def _row(batch: pa.RecordBatch, i: int, key: float) -> dict:
    """Row i as the sample grid shows it, with the value it was picked by."""
    return {**sample_rows(batch.slice(i, 1))[0], "key": key}


@dataclass
class Curation:
    workdir: str
    lowest: int = 12
    min_repeats: int = 2
    widths: Counter = field(default_factory=Counter)
    heights: Counter = field(default_factory=Counter)
    aspects: Counter = field(default_factory=Counter)  # w/h rounded to 0.01 -> images
    licenses: TopCounter = field(default_factory=lambda: TopCounter(limit=1000, keep=100))
    authors: TopCounter = field(default_factory=TopCounter)
    missing: Counter = field(default_factory=Counter)  # "license" / "author" -> images without one
    captioned: int = 0

    def __post_init__(self):
        if self.min_repeats < 2:
            raise ValueError(f"min_repeats must be at least 2, not {self.min_repeats}")
        self.hashes, self.ids, self.captions = (KeyGroups(self.workdir) for _ in range(3))
        self.low_score, self.low_similarity = BottomK(self.lowest), BottomK(self.lowest)

    def add(self, batch: pa.RecordBatch) -> None:
        ids = batch.column("image_id").to_pylist()
        self.hashes.add_all(zip(batch.column("sha256").to_pylist(), ids))
        self.ids.add_all((i, i) for i in ids)
        w = batch.column("width").to_numpy(zero_copy_only=False)
        h = batch.column("height").to_numpy(zero_copy_only=False)
        self.widths.update(w.tolist())
        self.heights.update(h.tolist())
        self.aspects.update(np.round(w / np.maximum(h, 1), 2).tolist())
        for name, counter in (("license", self.licenses), ("author", self.authors)):
            counts = _counts(batch.column(name))
            counter.update(counts)
            self.missing[name] += batch.num_rows - sum(counts.values())

        has, texts, scores, sims = best_captions(batch.column("captions"))
        self.captioned += int(has.sum())
        self.captions.add_all((caption_key(t), i) for t, i, h_ in zip(texts, ids, has) if h_)
        for best, values in ((self.low_score, scores), (self.low_similarity, sims)):
            rows = np.flatnonzero(np.isfinite(values))
            best.offer(len(rows), lambda idx: [_row(batch, int(rows[j]), float(values[rows[j]])) for j in idx],
                       keys=values[rows])

    # ---- after the stream -------------------------------------------------------------

    def finish(self) -> dict:
        """The curator's summary; writes workdir/flagged.csv and releases the on-disk groups."""
        try:
            summary = self._summary()
            summary["flagged"] = self._write_flagged(os.path.join(self.workdir, FLAGGED_CSV))
            return summary
        finally:
            self.close()

    def close(self) -> None:
        for groups in (self.hashes, self.ids, self.captions):
            groups.close()

    def _summary(self) -> dict:
        def groups(g: KeyGroups, min_size: int = 2) -> dict:
            count, images = g.shared(min_size)
            return {"groups": count, "images": images,
                    "largest": [{"key": k, "images": n, "first": first} for k, n, first in g.largest(SHOWN_GROUPS,
                                                                                                     min_size)]}

        images = sum(self.widths.values())
        return {
            "duplicates": groups(self.hashes),
            "repeated_ids": groups(self.ids),
            "best_captions": {"captioned": self.captioned, "distinct": self.captions.distinct(),
                              "min_repeats": self.min_repeats, **groups(self.captions, self.min_repeats)},
            "sizes": {"width": int_keys(self.widths), "height": int_keys(self.heights),
                      "aspect": {f"{k:.2f}": v for k, v in sorted(self.aspects.items())},
                      "width_range": _range(self.widths), "height_range": _range(self.heights),
                      "images": images},
            "attribution": {
                "licenses": [[k, c] for k, c in self.licenses.most_common(20)],
                "distinct_licenses": self.licenses.distinct(),
                "authors": [[k, c] for k, c in self.authors.most_common(20)],
                "distinct_authors": self.authors.distinct(),
                "authors_approximate": self.authors.approximate,
                "without_license": self.missing["license"], "without_author": self.missing["author"],
            },
            "lowest": {"k": self.lowest, "score": self.low_score.ordered(),
                       "similarity": self.low_similarity.ordered()},
        }

    def _write_flagged(self, path: str) -> dict:
        counts = Counter()
        with open(path, "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(["image_id", "reason", "detail"])

            def flag(image_id: str, reason: str, detail: str) -> None:
                counts[reason] += 1
                out.writerow([_cell(image_id), reason, _cell(detail)])

            for sha, image_id, n, first in self.hashes.members():
                flag(image_id, "duplicate_image", f"sha256 {sha}: {n} images, first {first}")
            for _, image_id, n, _ in self.ids.members():
                flag(image_id, "repeated_image_id", f"{n} rows")
            for text, image_id, n, _ in self.captions.members(self.min_repeats):
                flag(image_id, "repeated_caption", f"{n} images: {text}")
            for reason, best, what in (("low_caption_score", self.low_score, "score"),
                                       ("low_similarity", self.low_similarity, "similarity")):
                for row in best.ordered():
                    text = row["captions"][0]["text"] if row["captions"] else ""
                    flag(row["image_id"], reason, f"{what} {row['key']:.4g}: {text}")
        return {"file": FLAGGED_CSV, "rows": sum(counts.values()), "by_reason": {r: counts[r] for r in REASONS}}


def _counts(column: pa.Array) -> dict:
    # Empty strings count as missing, like nulls: neither names anyone.
    return {k: c for k, c in value_counts(column).items() if k}


def _cell(text: str) -> str:
    # A cell starting with = + - @ is a formula to a spreadsheet: a caption must not run as one.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _range(hist: Counter) -> dict | None:
    if not hist:
        return None
    values = sorted(hist)
    total, seen, median = sum(hist.values()), 0, None
    for v in values:
        seen += hist[v]
        if seen * 2 >= total:
            median = v
            break
    return {"min": values[0], "median": median, "max": values[-1]}
