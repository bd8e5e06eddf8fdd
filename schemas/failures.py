"""The failures table: one row per input image a job could not process, and why."""
from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa

from schemas.base import VersionedSchema

# Where in the job an image failed, in pipeline order. Both jobs share manifest, read and
# decode; caption, tag, rerank (every caption below --min-caption-similarity), label are
# the labeling job's, extract the feature extraction job's.
# Adding a value here needs no version bump: readers never check it.
STAGES = ("manifest", "read", "decode", "caption", "tag", "rerank", "label", "extract")

FAILURES = VersionedSchema(
    name="failures",
    version=1,
    fields=(
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("error_type", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("schema_version", pa.int32(), nullable=False),
        pa.field("failed_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ),
)

MAX_MESSAGE = 2000  # a traceback-sized message is noise in a table; keep the head


def failure_row(
    *,
    image_id: str,
    source_uri: str | None,
    stage: str,
    error_type: str,
    message: str,
    failed_at: datetime | None = None,
) -> dict:
    if stage not in STAGES:
        raise ValueError(f"unknown failure stage {stage!r}; expected one of {', '.join(STAGES)}")
    message = str(message).strip() or error_type
    return {
        "image_id": image_id,
        "source_uri": source_uri,
        "stage": stage,
        "error_type": error_type,
        "message": message[:MAX_MESSAGE],
        "schema_version": FAILURES.version,
        "failed_at": failed_at or datetime.now(timezone.utc),
    }
