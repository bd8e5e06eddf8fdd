"""The features table: one row per image the TEE extracted region features from.

Regions are stored in the TEE's order (confident regions first, best score first), one
list entry per region:
  boxes     list<fixed_size_list<float32, 4>>  normalised xyxy in the full, oriented image
                                               (0 <= x0 <= x1 <= 1, 0 <= y0 <= y1 <= 1)
  scores    list<float32>                       the region's class score
  labels    list<string>                        class label ids (e.g. Open Images MIDs)
  names     list<string>                        display names (the student's tags)
  features  list<float16>                       num_regions * feature_dim values, row-major
                                                (region 0's vector first); read them back with
                                                `region_features`, which reshapes to (n, d)
  attributes        list<list<string>>          (version 2) per region the attribute names the
                                                TEE's attribute head scored >= its threshold, best
                                                first; null for a TEE without one (and version 1)
  attribute_scores  list<list<float32>>         their scores, in the same order

`sha256` (of the file's bytes), `width` and `height` (full resolution after orientation)
follow the labels table's conventions, so the corpus join can check that a labels row
and a features row describe the same file. `extractor` is the TEE's extractor id (a hash
of its config and weights); `extractor_source` says where it came from.
"""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from schemas.base import VersionedSchema

BOX = pa.list_(pa.float32(), 4)  # x0, y0, x1, y1

FEATURES = VersionedSchema(
    name="features",
    version=2,
    # Version 1: the same without attributes and attribute_scores (they read as null).
    readable_versions=(1,),
    fields=(
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("num_regions", pa.int32(), nullable=False),
        pa.field("boxes", pa.list_(BOX), nullable=False),
        pa.field("scores", pa.list_(pa.float32()), nullable=False),
        pa.field("labels", pa.list_(pa.string()), nullable=False),
        pa.field("names", pa.list_(pa.string()), nullable=False),
        pa.field("features", pa.list_(pa.float16()), nullable=False),
        pa.field("feature_dim", pa.int32(), nullable=False),
        pa.field("attributes", pa.list_(pa.list_(pa.string()))),
        pa.field("attribute_scores", pa.list_(pa.list_(pa.float32()))),
        pa.field("extractor", pa.string(), nullable=False),
        pa.field("extractor_source", pa.string(), nullable=False),
        pa.field("schema_version", pa.int32(), nullable=False),
        pa.field("extracted_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ),
)


def features_row(
    *,
    image_id: str,
    source_uri: str,
    sha256: str,
    width: int,
    height: int,
    boxes,
    scores,
    labels,
    names,
    features,
    extractor: str,
    extractor_source: str,
    attributes=None,
    attribute_scores=None,
    extracted_at: datetime | None = None,
) -> dict:
    """Build a features row from one image's regions; raises ValueError on inconsistent shapes.

    boxes (n, 4) normalised xyxy, scores (n,), labels and names n strings each,
    features (n, feature_dim) of any float dtype: stored as float16, so values beyond
    float16's range (|x| > 65504) or non-finite values are refused rather than written as inf.
    attributes and attribute_scores (both or neither): n lists each, of equal lengths.
    """
    feats = np.asarray(features)
    if feats.ndim != 2 or feats.shape[1] < 1:
        raise ValueError(f"features must be (num_regions, feature_dim >= 1), not shape {feats.shape}")
    n, dim = feats.shape
    box = np.asarray(boxes, dtype=np.float32)
    if n == 0 and box.size == 0:
        box = box.reshape(0, 4)
    if box.shape != (n, 4):
        raise ValueError(f"boxes must be ({n}, 4) for {n} regions, not shape {box.shape}")
    score = np.asarray(scores, dtype=np.float32)
    if score.shape != (n,):
        raise ValueError(f"scores must be ({n},) for {n} regions, not shape {score.shape}")
    labels, names = [str(x) for x in labels], [str(x) for x in names]
    if len(labels) != n or len(names) != n:
        raise ValueError(f"need {n} labels and names for {n} regions, got {len(labels)} and {len(names)}")
    if not np.isfinite(box).all() or not np.isfinite(score).all():
        raise ValueError("boxes and scores must be finite")
    if ((box < 0) | (box > 1)).any() or (box[:, 0] > box[:, 2]).any() or (box[:, 1] > box[:, 3]).any():
        raise ValueError("boxes must be normalised xyxy: 0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1")
    if (attributes is None) != (attribute_scores is None):
        raise ValueError("attributes and attribute_scores go together")
    if attributes is not None:
        attributes = [[str(a) for a in region] for region in attributes]
        attribute_scores = [[float(x) for x in region] for region in attribute_scores]
        if len(attributes) != n or [len(a) for a in attributes] != [len(x) for x in attribute_scores]:
            raise ValueError(f"need {n} attribute lists with one score per attribute")
    with np.errstate(over="ignore"):  # overflow becomes inf, refused just below
        half = feats.astype(np.float16)
    if not np.isfinite(half).all():
        raise ValueError("features must be finite and within float16 range (|x| <= 65504)")
    return {
        "image_id": image_id,
        "source_uri": source_uri,
        "sha256": sha256,
        "width": int(width),
        "height": int(height),
        "num_regions": int(n),
        "boxes": [b for b in box],  # 1-d float32 arrays: Arrow converts them without Python floats
        "scores": score,
        "labels": labels,
        "names": names,
        "features": half.reshape(-1),
        "feature_dim": int(dim),
        "attributes": attributes,
        "attribute_scores": attribute_scores,
        "extractor": extractor,
        "extractor_source": extractor_source,
        "schema_version": FEATURES.version,
        "extracted_at": extracted_at or datetime.now(timezone.utc),
    }


def region_features(rows) -> np.ndarray:
    """Region features as a (regions, feature_dim) float16 array.

    `rows` is a features row as a dict (e.g. from `to_pylist()`), or an Arrow Table /
    RecordBatch of features rows (e.g. `table.slice(i, 1)` for image i). Several rows
    are stacked in order, so a one-row slice gives that image's (num_regions, feature_dim).
    Corpus rows and tables work the same way (same `features`, `feature_dim`,
    `num_regions` columns).
    """
    if isinstance(rows, dict):
        n, dim = int(rows["num_regions"]), int(rows["feature_dim"])
        flat = np.asarray(rows["features"], dtype=np.float16)
        if flat.size != n * dim:
            raise ValueError(f"row {rows.get('image_id')!r} has {flat.size} feature values, "
                             f"not num_regions * feature_dim = {n} * {dim}")
        return flat.reshape(n, dim)
    if isinstance(rows, pa.RecordBatch):
        rows = pa.Table.from_batches([rows])
    if not isinstance(rows, pa.Table):
        raise TypeError(f"expected a features or corpus row (dict) or an Arrow Table/RecordBatch, not {type(rows).__name__}")
    dims = set(rows.column("feature_dim").to_pylist())
    if len(dims) > 1:
        raise ValueError(f"rows mix feature dimensions {sorted(dims)}: read them one extractor at a time")
    dim = dims.pop() if dims else 1
    column = rows.column("features")
    chunks = [c.flatten() for c in column.chunks]  # flatten() honours slices
    flat = (np.concatenate([c.to_numpy(zero_copy_only=False) for c in chunks]) if chunks
            else np.zeros(0, np.float16)).astype(np.float16, copy=False)
    expected = sum(rows.column("num_regions").to_pylist()) * dim
    if flat.size != expected:
        raise ValueError(f"{flat.size} feature values where num_regions * feature_dim says {expected}")
    return flat.reshape(-1, dim)
