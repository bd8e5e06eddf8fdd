"""--retry-failures: which failures rows a retry reprocesses, and settling its outputs.

A failures row is transient when the same image, read and run again with the same
settings, may well succeed: a read that failed on a server error, a timeout or a broken
connection, or a model that raised (out of memory, a worker lost). It is permanent when
the answer cannot change: a bad manifest row, a missing (404) or forbidden file, bytes
that do not decode, a model that ran and found nothing (EmptyOutput), captions below
--min-caption-similarity, a row that failed validation. `--retry-failures` retries the
transient rows, `--retry-failures all` every row.

After the job, each retried image has a new row (labels/features when it recovered,
failures when it failed again) in a part this job committed; `settle` then rewrites
every older failures part that held one of them without its row, so each image keeps
exactly one row. Parts are rewritten as they are written: the new part is published
whole, then the old one removed.
"""
from __future__ import annotations

import re
from collections import Counter

from pipelines.beam import sinks
from pipelines.data.idset import IdSet
from schemas import FAILURES, VersionedSchema

MODES = ("transient", "all")
FAILURE_COLUMNS = ["image_id", "stage", "error_type", "message"]  # what the classification reads

# The read errors storage.read_bytes gives up on at once (pipelines/data/storage.py): the
# exception types it treats as permanent, and any other error carrying a 4xx status.
PERMANENT_READ_TYPES = frozenset({"FileNotFoundError", "PermissionError", "IsADirectoryError",
                                  "NotADirectoryError", "PermanentReadError"})
RETRYABLE_STATUSES = frozenset({408, 429})  # timeouts and rate limits: 4xx, yet transient
LEADING_STATUS = re.compile(r"^\s*(\d{3})\b")  # aiohttp's ClientResponseError: "503, message='...'"
MODEL_STAGES = frozenset({"caption", "tag", "extract"})


def is_transient(stage: str, error_type: str, message: str | None) -> bool:
    """Could the same image succeed on a second attempt with the same settings?"""
    if stage == "read":
        if error_type in PERMANENT_READ_TYPES:
            return False
        status = LEADING_STATUS.match(message or "")
        if status is not None:
            code = int(status.group(1))
            return not (400 <= code < 500) or code in RETRYABLE_STATUSES
        return True  # 5xx, timeouts, resets, unknown errors: a retry costs one read
    if stage in MODEL_STAGES:
        return error_type != "EmptyOutput"  # the model ran and found nothing: it would again
    return False  # manifest, decode, rerank, label: the input or the settings decide


def retryable(row: dict, mode: str) -> bool:
    """Does `--retry-failures mode` reprocess this failures row?"""
    if mode not in MODES:
        raise ValueError(f"--retry-failures must be one of {', '.join(MODES)}, not {mode!r}")
    return mode == "all" or is_transient(row["stage"], row["error_type"], row["message"])


def kind(row: dict) -> str:
    """A failures row's kind in run.json: stage/error_type."""
    return f"{row['stage']}/{row['error_type']}"


def settle(output: str, tables: dict[str, VersionedSchema], old_parts: set[str], mode: str, *,
           codec: str, scratch: str | None = None) -> dict:
    """After a retry job: drop the older failures rows of the images it wrote a new row for.

    `tables` is the job's (its own table first, then failures); `old_parts` are the part
    URLs that existed before the job. Returns the retry's counts for run.json.
    """
    recovered, failed_again = 1, 2  # where an image's new row went
    with IdSet(scratch) as fresh:
        for table in tables:
            outcome = failed_again if table == "failures" else recovered
            for part in sinks.list_parts(output, table):
                if part not in old_parts:
                    fresh.add_all(sinks.part_ids(part, tables[table]), outcome)
        counts: Counter = Counter()
        left_alone: Counter = Counter()
        for part in sinks.list_parts(output, "failures"):
            if part not in old_parts:
                continue
            drop = []
            for index, row in enumerate(sinks.part_rows(part, FAILURES, FAILURE_COLUMNS)):
                if not retryable(row, mode):
                    left_alone[kind(row)] += 1
                    continue
                outcome = fresh.mark(row["image_id"])
                if outcome is None:  # not in this input any more, or labeled by an earlier attempt
                    counts["not_retried"] += 1
                    continue
                counts["recovered" if outcome == recovered else "failed_again"] += 1
                drop.append(index)
            if drop:
                sinks.drop_rows(output, "failures", FAILURES, part, drop, codec=codec)
    return {"mode": mode, "retried": counts["recovered"] + counts["failed_again"],
            "recovered": counts["recovered"], "failed_again": counts["failed_again"],
            "not_retried": counts["not_retried"], "left_alone": sum(left_alone.values()),
            "left_alone_by_kind": dict(sorted(left_alone.items()))}
