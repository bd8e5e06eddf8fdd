"""The labels table: one row per image the teachers labeled."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pyarrow as pa

from schemas.base import VersionedSchema

CAPTION = pa.struct(
    [
        pa.field("text", pa.string(), nullable=False),
        # Captioner's sequence score (length-normalised log-probability under beam search).
        pa.field("score", pa.float32(), nullable=False),
        # Image-text similarity when captions were reranked; null otherwise.
        pa.field("similarity", pa.float32(), nullable=True),
    ]
)
TAG = pa.struct(
    [
        pa.field("label", pa.string(), nullable=False),  # vocabulary id, e.g. an Open Images MID
        pa.field("name", pa.string(), nullable=False),  # display name
        pa.field("score", pa.float32(), nullable=False),
    ]
)

LABELS = VersionedSchema(
    name="labels",
    version=1,
    fields=(
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("license", pa.string()),
        pa.field("author", pa.string()),
        pa.field("original_url", pa.string()),
        pa.field("captions", pa.list_(CAPTION), nullable=False),
        pa.field("tags", pa.list_(TAG), nullable=False),
        pa.field("captioner", pa.string()),
        pa.field("tagger", pa.string()),
        pa.field("teacher_params", pa.string(), nullable=False),
        pa.field("schema_version", pa.int32(), nullable=False),
        pa.field("labeled_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ),
)


def labels_row(
    *,
    image_id: str,
    source_uri: str,
    sha256: str,
    width: int,
    height: int,
    captions: list[dict],
    tags: list[dict],
    captioner: str | None,
    tagger: str | None,
    teacher_params: dict,
    license: str | None = None,
    author: str | None = None,
    original_url: str | None = None,
    labeled_at: datetime | None = None,
) -> dict:
    """Build a labels row; captions and tags are sorted best first here, once."""
    captions = sorted(
        ({"text": c["text"], "score": float(c["score"]), "similarity": c.get("similarity")} for c in captions),
        key=lambda c: -c["score"] if c["similarity"] is None else -c["similarity"],
    )
    tags = sorted(
        ({"label": t["label"], "name": t["name"], "score": float(t["score"])} for t in tags),
        key=lambda t: -t["score"],
    )
    return {
        "image_id": image_id,
        "source_uri": source_uri,
        "sha256": sha256,
        "width": int(width),
        "height": int(height),
        "license": license or None,
        "author": author or None,
        "original_url": original_url or None,
        "captions": captions,
        "tags": tags,
        "captioner": captioner,
        "tagger": tagger,
        "teacher_params": json.dumps(teacher_params, sort_keys=True),
        "schema_version": LABELS.version,
        "labeled_at": labeled_at or datetime.now(timezone.utc),
    }
