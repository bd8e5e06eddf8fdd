"""The corpus table: one row per image with both labels and region features, for training.

A corpus row is the union of a labels row and a features row of the same image (same
`image_id`, same `sha256`): the teachers' captions and tags, the TEE's regions, and the
split the row belongs to. Region columns are the features table's, renamed where a
labels column has the same meaning (`region_labels` beside the teacher's `tags`):

  image_id, sha256, width, height  the image (full resolution, after orientation)
  split                            "train" | "val" (held out by a hash of image_id)
  captions                         list<struct<text, score, similarity>>, best first
  tags                             list<struct<label, name, score>>, the teacher tagger's
  num_regions, boxes               normalised xyxy, the TEE's order (best first)
  region_scores, region_labels,    one entry per region
  region_names
  features, feature_dim            num_regions * feature_dim float16 values, row-major;
                                   `schemas.region_features` reshapes them to (n, d)
  extractor                        the TEE's extractor id
  captioner, tagger                the teachers (model id + revision), null if none ran
  license, author, original_url    the image's attribution, from its labels row (version 2;
                                   version-1 corpora lack them and stay readable)
  region_attributes                per region the TEE's attribute names (features' `attributes`;
                                   version 3, null where the TEE has no attribute head)
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from schemas.base import VersionedSchema
from schemas.features import BOX
from schemas.labels import CAPTION, TAG

SPLITS = ("train", "val")

CORPUS = VersionedSchema(
    name="corpus",
    version=3,
    # version 1: without license, author, original_url; version 2: without region_attributes
    readable_versions=(1, 2),
    fields=(
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("captions", pa.list_(CAPTION), nullable=False),
        pa.field("tags", pa.list_(TAG), nullable=False),
        pa.field("num_regions", pa.int32(), nullable=False),
        pa.field("boxes", pa.list_(BOX), nullable=False),
        pa.field("region_scores", pa.list_(pa.float32()), nullable=False),
        pa.field("region_labels", pa.list_(pa.string()), nullable=False),
        pa.field("region_names", pa.list_(pa.string()), nullable=False),
        pa.field("features", pa.list_(pa.float16()), nullable=False),
        pa.field("feature_dim", pa.int32(), nullable=False),
        pa.field("extractor", pa.string(), nullable=False),
        pa.field("captioner", pa.string()),
        pa.field("tagger", pa.string()),
        pa.field("license", pa.string()),
        pa.field("author", pa.string()),
        pa.field("original_url", pa.string()),
        pa.field("region_attributes", pa.list_(pa.list_(pa.string()))),
        pa.field("schema_version", pa.int32(), nullable=False),
    ),
)

# What the join reads of each input table (the rest stays in the inputs).
LABELS_COLUMNS = ("image_id", "sha256", "width", "height", "captions", "tags", "captioner", "tagger", "license",
                  "author", "original_url")
FEATURES_COLUMNS = ("image_id", "sha256", "width", "height", "num_regions", "boxes", "scores", "labels",
                    "names", "features", "feature_dim", "extractor", "attributes")


def corpus_row(labels_row: dict, features_row: dict, split: str) -> dict:
    """Join one labels row and one features row of the same image into a corpus row.

    Rows are dicts as `labels_row` / `features_row` build them or as read from their
    tables (`features` as a float16 array or a list of floats; extra columns are ignored).
    Raises ValueError naming the problem when the two rows do not describe the same image
    (image_id, sha256, width, height) or a row is inconsistent (region list lengths,
    num_regions * feature_dim feature values, missing values). float16 features are
    carried bit for bit.
    """
    lab, fea = labels_row, features_row
    image_id = lab.get("image_id")
    if not isinstance(image_id, str) or not image_id:
        raise ValueError(f"labels row has no valid image_id ({image_id!r})")
    if fea.get("image_id") != image_id:
        raise ValueError(f"labels row {image_id!r} joined with features row {fea.get('image_id')!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if not lab.get("sha256") or lab.get("sha256") != fea.get("sha256"):
        raise ValueError(f"{image_id}: labels sha256 {lab.get('sha256')!r} != features sha256 "
                         f"{fea.get('sha256')!r}: computed from different files")
    for key in ("width", "height"):
        if lab.get(key) is None or lab.get(key) != fea.get(key) or int(lab[key]) < 1:
            raise ValueError(f"{image_id}: labels {key} {lab.get(key)!r} != features {key} {fea.get(key)!r} "
                             "(the same file oriented differently?)")
    n, dim = fea.get("num_regions"), fea.get("feature_dim")
    if n is None or dim is None or int(n) < 0 or int(dim) < 1:
        raise ValueError(f"{image_id}: bad num_regions {n!r} or feature_dim {dim!r}")
    n, dim = int(n), int(dim)
    if fea.get("boxes") is None or fea.get("features") is None:
        raise ValueError(f"{image_id}: features row has no boxes or features")
    boxes = np.asarray(fea["boxes"], dtype=np.float32)
    if n == 0 and boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    feats = np.asarray(fea["features"], dtype=np.float16).reshape(-1)
    if boxes.shape != (n, 4):
        raise ValueError(f"{image_id}: {n} regions but boxes of shape {boxes.shape}")
    if feats.size != n * dim:
        raise ValueError(f"{image_id}: {feats.size} feature values, not num_regions * feature_dim = {n} * {dim}")
    lists = {name: fea.get(name) for name in ("scores", "labels", "names")}
    for name, values in lists.items():
        if values is None or len(values) != n:
            raise ValueError(f"{image_id}: {n} regions but {0 if values is None else len(values)} {name}")
    attributes = fea.get("attributes")
    if attributes is not None and len(attributes) != n:
        raise ValueError(f"{image_id}: {n} regions but {len(attributes)} attribute lists")
    row = {
        "image_id": image_id,
        "sha256": lab["sha256"],
        "width": int(lab["width"]),
        "height": int(lab["height"]),
        "split": split,
        "captions": lab.get("captions"),
        "tags": lab.get("tags"),
        "num_regions": n,
        "boxes": [b for b in boxes],  # 1-d float32 arrays: Arrow converts them without Python floats
        "region_scores": np.asarray(lists["scores"], dtype=np.float32),
        "region_labels": list(lists["labels"]),
        "region_names": list(lists["names"]),
        "features": feats,
        "feature_dim": dim,
        "extractor": fea.get("extractor"),
        "captioner": lab.get("captioner"),
        "tagger": lab.get("tagger"),
        "license": lab.get("license"),
        "author": lab.get("author"),
        "original_url": lab.get("original_url"),
        "region_attributes": None if attributes is None else [list(a) for a in attributes],
        "schema_version": CORPUS.version,
    }
    if not row["extractor"]:
        raise ValueError(f"{image_id}: features row has no extractor id")
    return CORPUS.validate_row(row)
