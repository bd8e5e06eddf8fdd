"""Open Images box annotations, streamed: class list, per-image box groups, and the join
with the image manifest.

The official box files are large (the train split has ~15M rows), so nothing here holds
more than one image's boxes at a time. That works because the files are sorted by
ImageID: the boxes of one image are contiguous, and a merge join against a manifest
sorted the same way needs no index. An unsorted file is refused rather than silently
split into several groups per image.

Every data row of a box file is accounted for in `BoxStats`: it is either a kept box or
counted under exactly one skip reason, so `rows == boxes + skipped()` always holds.
"""
from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import fsspec
import numpy as np

REQUIRED_COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")
# Annotation tools round a little past the edge; beyond this a coordinate is wrong, not rounded.
EDGE_TOLERANCE = 1e-6
SORT_HINT = "sort it by ImageID first, e.g. (head -n1 F; tail -n+2 F | LC_ALL=C sort -t, -k1,1 -s)"

Ref = TypeVar("Ref")
Item = TypeVar("Item")
BoxGroup = tuple[str, np.ndarray, np.ndarray]


@dataclass
class BoxStats:
    """What happened to every row of a box file and every image of the join."""

    rows: int = 0  # data rows read (blank lines are not rows)
    boxes: int = 0  # rows kept as boxes
    images_with_boxes: int = 0  # groups yielded by iter_box_groups
    skipped_malformed: int = 0  # missing fields, unparseable or non-finite numbers, broken CSV
    skipped_unverified: int = 0  # Confidence == 0: a human said the object is not there
    skipped_unknown_label: int = 0  # LabelName not in the class list
    skipped_out_of_range: int = 0  # a coordinate outside [0, 1] beyond EDGE_TOLERANCE
    skipped_inverted: int = 0  # XMin > XMax or YMin > YMax
    skipped_degenerate: int = 0  # zero width or height
    annotations_without_image: int = 0  # groups whose ImageID no manifest ref has (join)
    images_without_boxes: int = 0  # refs with no group: negative samples (join)
    duplicate_images: int = 0  # repeated ref ids after the first (join)
    images_with_errors: int = 0  # refs carrying a manifest error, passed through unjoined

    def skipped(self) -> int:
        return (self.skipped_malformed + self.skipped_unverified + self.skipped_unknown_label
                + self.skipped_out_of_range + self.skipped_inverted + self.skipped_degenerate)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def read_classes(path: str) -> list[tuple[str, str]]:
    """(LabelName, DisplayName) pairs in file order; class index = position + 1 (0 is background).

    The header line is optional because the official files disagree: v4-v6
    `class-descriptions-boxable.csv` has none, oidv7's has `LabelName,DisplayName`.
    The class list defines the model's output layer, so any defect is an error, not a skip.
    """
    classes: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    with fsspec.open(path, "r", encoding="utf-8-sig", newline="", compression="infer") as f:
        reader = csv.reader(f)
        for values in reader:
            line = reader.line_num
            if not any(v.strip() for v in values):
                continue
            if not classes and not seen and [v.strip() for v in values] == ["LabelName", "DisplayName"]:
                continue
            if len(values) != 2:
                raise ValueError(f"{path}: line {line}: expected 2 fields LabelName,DisplayName, got {len(values)}")
            label, name = values[0].strip(), values[1].strip()
            if not label:
                raise ValueError(f"{path}: line {line}: empty LabelName")
            if label in seen:
                raise ValueError(f"{path}: line {line}: duplicate LabelName {label!r} (first on line {seen[label]})")
            seen[label] = line
            classes.append((label, name))
    if not classes:
        raise ValueError(f"{path}: no classes")
    return classes


def class_index(classes: Iterable[tuple[str, str]]) -> dict[str, int]:
    """LabelName -> class index (1-based, 0 is background), the `class_index` of iter_box_groups."""
    return {label: i for i, (label, _) in enumerate(classes, start=1)}


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)


def _clamp(v: float) -> float | None:
    """v inside [0, 1] (values within EDGE_TOLERANCE outside are pulled in), else None."""
    if -EDGE_TOLERANCE <= v <= 1.0 + EDGE_TOLERANCE:
        return min(max(v, 0.0), 1.0)
    return None


def _parse_row(rec: dict[str, str], class_index: dict[str, int], stats: BoxStats
               ) -> tuple[float, float, float, float, int] | None:
    """(xmin, ymin, xmax, ymax, class) for a usable row; None after counting why not.

    A row is counted by the first check it fails, in the order of the checks below, so
    every skipped row lands in exactly one counter.
    """
    try:
        xmin, xmax, ymin, ymax = (float(rec[k]) for k in ("XMin", "XMax", "YMin", "YMax"))
        confidence = rec.get("Confidence", "").strip()
        verified = float(confidence) != 0.0 if confidence else True
    except (ValueError, TypeError):
        stats.skipped_malformed += 1
        return None
    if not all(math.isfinite(v) for v in (xmin, xmax, ymin, ymax)):
        stats.skipped_malformed += 1
        return None
    if not verified:
        stats.skipped_unverified += 1
        return None
    label = class_index.get(rec["LabelName"].strip())
    if label is None:
        stats.skipped_unknown_label += 1
        return None
    clamped = [_clamp(v) for v in (xmin, ymin, xmax, ymax)]
    if any(v is None for v in clamped):
        stats.skipped_out_of_range += 1
        return None
    xmin, ymin, xmax, ymax = clamped
    if xmin > xmax or ymin > ymax:
        stats.skipped_inverted += 1
        return None
    if xmin == xmax or ymin == ymax:
        stats.skipped_degenerate += 1
        return None
    return xmin, ymin, xmax, ymax, label


def iter_box_groups(path: str, class_index: dict[str, int], stats: BoxStats) -> Iterator[BoxGroup]:
    """Stream (ImageID, boxes (n, 4) float32 normalized xmin,ymin,xmax,ymax, labels (n,) int64).

    One group per ImageID, in file order, each with at least one kept box: an image whose
    rows were all skipped yields nothing here (its rows are in `stats`); it becomes a
    negative sample only if the manifest lists it (see join_sorted). Note the CSV's
    column order is XMin,XMax,YMin,YMax while the arrays are xyxy.
    """
    for image_id, rows in _sorted_groups(path, "box file", REQUIRED_COLUMNS, stats,
                                         lambda rec: _parse_row(rec, class_index, stats)):
        yield _group(image_id, rows, stats)


def _sorted_groups(path: str, what: str, required: Sequence[str], stats, parse: Callable[[dict], Item | None]
                   ) -> Iterator[tuple[str, list[Item]]]:
    """(ImageID, parsed rows) per ImageID of a CSV sorted by ImageID, groups with no usable row left out.

    `parse(record)` returns the row's value or None after counting why not; `stats` needs
    `rows` and `skipped_malformed`. An unsorted file is refused, not split into groups.
    """
    with fsspec.open(path, "r", encoding="utf-8-sig", errors="replace", newline="",
                     compression="infer") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, None) or []]
        if not header:
            raise ValueError(f"{what} {path!r} is empty (no header row)")
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(f"{what} {path!r} lacks columns {', '.join(missing)}; "
                             f"header is {','.join(header)[:200]!r}")
        current: str | None = None
        rows: list[Item] = []
        while True:
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error:
                # One broken row must not end a 15M-row file; it is counted, not guessed at.
                stats.rows += 1
                stats.skipped_malformed += 1
                continue
            if not any(v.strip() for v in values):
                continue
            stats.rows += 1
            image_id = values[0].strip() if values else ""
            if len(values) != len(header) or not image_id:
                stats.skipped_malformed += 1
                continue
            if image_id != current:
                if current is not None and image_id < current:
                    raise ValueError(
                        f"{path}: line {reader.line_num}: ImageID {image_id!r} sorts before the previous "
                        f"{current!r}; the {what} must be sorted by ImageID: {SORT_HINT}"
                    )
                if rows:
                    yield current, rows
                current, rows = image_id, []
            item = parse(dict(zip(header, values)))
            if item is not None:
                rows.append(item)
        if rows:
            yield current, rows


def _group(image_id: str, rows: list[tuple[float, float, float, float, int]], stats: BoxStats) -> BoxGroup:
    stats.boxes += len(rows)
    stats.images_with_boxes += 1
    boxes = np.array([r[:4] for r in rows], dtype=np.float32).reshape(-1, 4)
    labels = np.array([r[4] for r in rows], dtype=np.int64)
    return image_id, boxes, labels


def join_sorted(refs: Iterable[Ref], groups: Iterable[BoxGroup], stats: BoxStats
                ) -> Iterator[tuple[Ref, np.ndarray, np.ndarray]]:
    """Merge join of manifest refs with box groups, both sorted by image id.

    Every ref yields once, with its boxes or with empty (0, 4)/(0,) arrays (a negative
    sample), except repeated ids after the first (`duplicate_images`). Groups no ref asks
    for are counted in `annotations_without_image` and dropped; to count them all, the
    rest of the box stream is read after the last ref. A ref carrying a manifest `error`
    (its id may be a placeholder such as "row:7") is passed through with empty arrays and
    takes no part in the join, so it still ends as a failures row downstream.
    """
    it = iter(groups)
    group = next(it, None)
    previous_ref: str | None = None
    previous_group: str | None = None

    def advance() -> BoxGroup | None:
        nonlocal previous_group
        previous_group = group[0]
        nxt = next(it, None)
        if nxt is not None and nxt[0] <= previous_group:
            raise ValueError(f"box groups out of order: {nxt[0]!r} after {previous_group!r}; {SORT_HINT}")
        return nxt

    for ref in refs:
        if getattr(ref, "error", None):
            stats.images_with_errors += 1
            yield (ref, *_empty())
            continue
        image_id = ref.image_id
        if previous_ref is not None:
            if image_id == previous_ref:
                stats.duplicate_images += 1
                continue
            if image_id < previous_ref:
                raise ValueError(
                    f"image refs out of order: {image_id!r} after {previous_ref!r}; the manifest must be "
                    f"sorted by image id for the join: {SORT_HINT}"
                )
        previous_ref = image_id
        while group is not None and group[0] < image_id:
            stats.annotations_without_image += 1
            group = advance()
        if group is not None and group[0] == image_id:
            yield ref, group[1], group[2]
            group = advance()
        else:
            stats.images_without_boxes += 1
            yield (ref, *_empty())
    while group is not None:
        stats.annotations_without_image += 1
        group = advance()


# ---- attributes: Open Images visual relationships "is" -----------------------------------

ATTRIBUTE_COLUMNS = ("ImageID", "LabelName1", "LabelName2", "XMin1", "XMax1", "YMin1", "YMax1", "RelationshipLabel")
# Relationship boxes repeat the box file's numbers; this only absorbs float printing.
BOX_MATCH_TOLERANCE = 1e-4
AttributeRow = tuple[int, tuple[float, float, float, float], int]  # (class, xyxy, attribute index 0..A-1)


@dataclass
class AttributeStats:
    """What happened to every row of a relationship file; rows == attributes + the skips."""

    rows: int = 0
    attributes: int = 0  # "is" rows kept
    not_attributes: int = 0  # other relationships ("on", "holds"...): not about one object
    skipped_malformed: int = 0
    skipped_unknown: int = 0  # an object class or attribute label not in the lists
    unmatched: int = 0  # kept rows whose object is not one of the image's kept boxes (or image not listed)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _parse_attribute(rec: dict[str, str], class_index: dict[str, int], attribute_index: dict[str, int],
                     stats: AttributeStats) -> AttributeRow | None:
    if rec["RelationshipLabel"].strip() != "is":
        stats.not_attributes += 1
        return None
    try:
        box = [_clamp(float(rec[k])) for k in ("XMin1", "YMin1", "XMax1", "YMax1")]
    except ValueError:
        box = [None]
    if any(v is None for v in box):
        stats.skipped_malformed += 1
        return None
    label, attribute = class_index.get(rec["LabelName1"].strip()), attribute_index.get(rec["LabelName2"].strip())
    if label is None or attribute is None:
        stats.skipped_unknown += 1
        return None
    stats.attributes += 1
    return label, tuple(box), attribute - 1


def iter_attribute_groups(path: str, class_index: dict[str, int], attribute_index: dict[str, int],
                          stats: AttributeStats) -> Iterator[tuple[str, list[AttributeRow]]]:
    """(ImageID, [(class, box xyxy, attribute index)]) per image of a relationship CSV sorted by ImageID.

    `attribute_index` maps attribute LabelNames to 1-based indices (class_index of the
    attribute list); rows of other relationships are counted, not kept.
    """
    yield from _sorted_groups(path, "relationship file", ATTRIBUTE_COLUMNS, stats,
                              lambda rec: _parse_attribute(rec, class_index, attribute_index, stats))


def attach_attributes(samples: Iterable[tuple[Ref, np.ndarray, np.ndarray]],
                      groups: Iterable[tuple[str, list[AttributeRow]]], num_attributes: int,
                      stats: AttributeStats) -> Iterator[tuple[Ref, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """join_sorted's samples with each box's attributes: (ref, boxes, labels, attributes (n, A)
    float32 0/1, known (n,) bool).

    `known` marks boxes with at least one attribute row: annotators label attributes on
    some objects only, so an object without rows is unknown, not "none of them". A row
    is matched to the image's box of the same class within BOX_MATCH_TOLERANCE.
    """
    it = iter(groups)
    group = next(it, None)
    for ref, boxes, labels in samples:
        attributes = np.zeros((len(boxes), num_attributes), np.float32)
        known = np.zeros(len(boxes), bool)
        image_id = None if getattr(ref, "error", None) else ref.image_id
        while image_id is not None and group is not None and group[0] < image_id:
            stats.unmatched += len(group[1])
            group = next(it, None)
        if image_id is not None and group is not None and group[0] == image_id:
            for label, box, attribute in group[1]:
                close = np.abs(boxes - np.asarray(box, np.float32)).max(axis=1, initial=0) <= BOX_MATCH_TOLERANCE
                hit = np.flatnonzero(close & (labels == label)) if len(boxes) else []
                if len(hit):
                    attributes[hit[0], attribute] = 1.0
                    known[hit[0]] = True
                else:
                    stats.unmatched += 1
            group = next(it, None)
        yield ref, boxes, labels, attributes, known
    while group is not None:  # the rest of the file: attributes of images the samples do not have
        stats.unmatched += len(group[1])
        group = next(it, None)


__all__ = ["AttributeStats", "BoxStats", "attach_attributes", "class_index", "iter_attribute_groups",
           "iter_box_groups", "join_sorted", "read_classes"]
