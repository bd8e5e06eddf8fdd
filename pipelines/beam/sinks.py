"""Writing outputs: committed Parquet part files and the run record.

Rows are written in part files of at most `rows_per_part` rows, each published whole
(on local disks: written under a temporary name, then renamed; object stores publish
an object only once its upload completes), so a part is either all there or not at all. A
killed job therefore leaves only complete parts behind, and `--resume` skips exactly
the images they hold. Part names are a hash of the image ids inside, so a retried
bundle that writes the same rows replaces its earlier part instead of duplicating it.
"""
from __future__ import annotations

import hashlib
import json
import time
import uuid
from contextlib import contextmanager

import apache_beam as beam
import fsspec
import pyarrow.parquet as pq

from pipelines.data import storage
from schemas import VersionedSchema

CODECS = ("zstd", "snappy", "gzip", "brotli", "none")
IN_PROGRESS = ".inprogress"  # suffix of parts being written; never matched by *.parquet


class CommitParts(beam.DoFn):
    """rows -> OUTPUT/<table>/part-<hash>.parquet, committed every `rows_per_part` rows.

    A part is also committed when its oldest row has waited `max_wait_s` (failures can
    be rare: they should not sit in memory until the end) and at the end of a bundle.
    """

    def __init__(self, output: str, table: str, schema: VersionedSchema, *, rows_per_part: int = 1000,
                 codec: str = "zstd", max_wait_s: float = 60.0):
        if codec not in CODECS:
            raise ValueError(f"--compression must be one of {', '.join(CODECS)}, not {codec!r}")
        if rows_per_part < 1:
            raise ValueError(f"--rows-per-part must be >= 1, not {rows_per_part}")
        self.output, self.table, self.schema = output, table, schema
        self.rows_per_part, self.codec, self.max_wait_s = rows_per_part, codec, max_wait_s
        self.parts = beam.metrics.Metrics.counter("sinks", f"{table}_parts")

    def start_bundle(self):
        self.buffer: list[dict] = []
        self.first_at = 0.0

    def process(self, row: dict):
        if not self.buffer:
            self.first_at = time.monotonic()
        self.buffer.append(row)
        if len(self.buffer) >= self.rows_per_part or time.monotonic() - self.first_at >= self.max_wait_s:
            self._commit()

    def finish_bundle(self):
        if self.buffer:
            self._commit()

    def _commit(self) -> None:
        rows, self.buffer = self.buffer, []
        commit_part(self.output, self.table, self.schema, rows, codec=self.codec)
        self.parts.inc()


def part_name(rows: list[dict]) -> str:
    ids = "\n".join(sorted(r["image_id"] for r in rows))
    return f"part-{hashlib.sha256(ids.encode()).hexdigest()[:24]}.parquet"


def commit_part(output: str, table: str, schema: VersionedSchema, rows: list[dict], *, codec: str = "zstd") -> str:
    """Publish `rows` as one whole part file. Returns its URL.

    Rows were validated where they were built (MakeRow, failure_row); Arrow still
    enforces the column types here, so nothing malformed reaches a file.
    """
    import pyarrow as pa

    data = pa.Table.from_pylist(rows, schema=schema.arrow)
    final = storage.join(output, f"{table}/{part_name(rows)}")
    with publish(final) as f:
        pq.write_table(data, f, compression=codec, row_group_size=len(rows))
    return final


@contextmanager
def publish(url: str):
    """Open `url` for writing binary; the file appears whole when the block ends, or not at all.

    Local disks: written under a temporary name (never matching *.parquet), then renamed.
    Object stores publish an object only when its upload completes: already atomic, and a
    rename there is a copy + delete (or, on GCS emulators, an unsupported call).
    """
    fs, final_path = fsspec.core.url_to_fs(url)
    if storage.is_remote(url):
        f = fs.open(final_path, "wb")
        try:
            yield f
        except BaseException:
            f.discard()  # abort the upload (gcsfs, s3fs) rather than publish a partial object
            f.closed = True
            raise
        f.close()
        return
    tmp_path = f"{final_path}.{uuid.uuid4().hex[:8]}{IN_PROGRESS}"
    fs.makedirs(final_path.rsplit("/", 1)[0], exist_ok=True)
    try:
        with fs.open(tmp_path, "wb") as f:
            yield f
    except BaseException:
        if fs.exists(tmp_path):
            fs.rm(tmp_path)
        raise
    fs.mv(tmp_path, final_path)  # a rename: the file appears whole or not at all


def list_parts(output: str, table: str) -> list[str]:
    """Committed part files of a table (URLs), sorted."""
    from schemas.io import parquet_files

    return parquet_files(storage.join(output, table))


def remove_in_progress(output: str, table: str) -> int:
    """Delete parts a killed job left half-written. Returns how many."""
    fs, root = fsspec.core.url_to_fs(storage.join(output, table))
    if not fs.exists(root):
        return 0
    stale = fs.glob(root.rstrip("/") + f"/*{IN_PROGRESS}")
    for path in stale:
        fs.rm(path)
    return len(stale)


def write_run_record(output: str, record: dict) -> str:
    path = storage.join(output, "run.json")
    storage.write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return path


def reconcile(output: str, schemas: dict[str, VersionedSchema], *, codec: str = "zstd") -> int:
    """Remove extra copies of an image from committed parts; returns how many rows went.

    A runner that retries a bundle whose first attempt had already committed parts can
    commit an image twice (differently composed parts, or a transient error that ended
    differently). `schemas` maps table folders to schemas, the job's own table first and
    then failures: earlier tables win (labels or features over failures); among copies in
    one table, the part that sorts first wins. Affected parts are rewritten without the
    extra rows. Reads only image_id columns.
    """
    import pyarrow as pa

    from schemas.io import read_table

    seen: set[str] = set()
    drops: dict[tuple[str, str], list[int]] = {}
    for table in schemas:
        for part in list_parts(output, table):
            ids = read_table(part, schemas[table], columns=["image_id"]).column("image_id").to_pylist()
            for index, image_id in enumerate(ids):
                if image_id in seen:
                    drops.setdefault((table, part), []).append(index)
                else:
                    seen.add(image_id)
    for (table, part), indexes in drops.items():
        data = read_table(part, schemas[table])
        keep = sorted(set(range(data.num_rows)) - set(indexes))
        rows = data.take(pa.array(keep, type=pa.int64())).to_pylist()
        if rows:
            commit_part(output, table, schemas[table], rows, codec=codec)
        if not rows or part_name(rows) != part.rsplit("/", 1)[-1]:
            storage.remove(part)
    return sum(len(v) for v in drops.values())
