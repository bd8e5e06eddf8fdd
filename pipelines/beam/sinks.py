"""Writing outputs: committed Parquet part files and the run record.

Rows are written in part files of at most `rows_per_part` rows, each published whole
(on local disks: written under a temporary name, then renamed; object stores publish
an object only once its upload completes), so a part is either all there or not at all. A
killed job therefore leaves only complete parts behind, and `--resume` skips exactly
the images they hold. Part names are a hash of the image ids inside and of the run
(its start time), so a retried bundle that writes the same rows replaces its earlier
part instead of duplicating it, while a later run (--retry-failures) that writes rows
for the same ids never replaces a part it did not write.
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
from pipelines.data.idset import IdSet
from schemas import VersionedSchema

CODECS = ("zstd", "snappy", "gzip", "brotli", "none")
IN_PROGRESS = ".inprogress"  # suffix of parts being written; never matched by *.parquet


class CommitParts(beam.DoFn):
    """rows -> OUTPUT/<table>/part-<hash>.parquet, committed every `rows_per_part` rows.

    A part is also committed when its oldest row has waited `max_wait_s` (failures can
    be rare: they should not sit in memory until the end) and at the end of a bundle.
    """

    def __init__(self, output: str, table: str, schema: VersionedSchema, *, rows_per_part: int = 1000,
                 codec: str = "zstd", max_wait_s: float = 60.0, run_id: str = ""):
        if codec not in CODECS:
            raise ValueError(f"--compression must be one of {', '.join(CODECS)}, not {codec!r}")
        if rows_per_part < 1:
            raise ValueError(f"--rows-per-part must be >= 1, not {rows_per_part}")
        self.output, self.table, self.schema = output, table, schema
        self.rows_per_part, self.codec, self.max_wait_s = rows_per_part, codec, max_wait_s
        self.run_id = run_id  # names this run's parts apart from every other run's
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
        commit_part(self.output, self.table, self.schema, rows, codec=self.codec, run_id=self.run_id)
        self.parts.inc()


def part_name(rows: list[dict], run_id: str = "") -> str:
    """part-<hash of the rows' image ids, and of `run_id` when given>.parquet."""
    ids = "\n".join(sorted(r["image_id"] for r in rows))
    key = f"{run_id}\n{ids}" if run_id else ids
    return f"part-{hashlib.sha256(key.encode()).hexdigest()[:24]}.parquet"


def commit_part(output: str, table: str, schema: VersionedSchema, rows: list[dict], *, codec: str = "zstd",
                run_id: str = "") -> str:
    """Publish `rows` as one whole part file. Returns its URL.

    Rows were validated where they were built (MakeRow, failure_row); Arrow still
    enforces the column types here, so nothing malformed reaches a file.
    """
    import pyarrow as pa

    data = pa.Table.from_pylist(rows, schema=schema.arrow)
    final = storage.join(output, f"{table}/{part_name(rows, run_id)}")
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


def part_ids(part: str, schema: VersionedSchema) -> list[str]:
    """The image ids of one committed part, in row order (only that column is read)."""
    from schemas.io import read_file

    return read_file(part, schema, columns=["image_id"]).column("image_id").to_pylist()


def part_rows(part: str, schema: VersionedSchema, columns: list[str]) -> list[dict]:
    """`columns` of one committed part's rows, in row order: at most --rows-per-part rows."""
    from schemas.io import read_file

    return read_file(part, schema, columns=columns).to_pylist()


def drop_rows(output: str, table: str, schema: VersionedSchema, part: str, indexes: list[int], *,
              codec: str = "zstd") -> None:
    """Rewrite a committed part without the rows at `indexes`.

    The rest is published whole as a new part (named by its ids, like every part) before
    the old part is removed: a job killed in between leaves those rows twice, never none,
    and the next run's reconciliation drops the extra copies.
    """
    import pyarrow as pa

    from schemas.io import read_file

    data = read_file(part, schema)
    keep = sorted(set(range(data.num_rows)) - set(indexes))
    rows = data.take(pa.array(keep, type=pa.int64())).to_pylist()
    if rows:
        commit_part(output, table, schema, rows, codec=codec)
    if not rows or part_name(rows) != part.rsplit("/", 1)[-1]:
        storage.remove(part)


def reconcile(output: str, schemas: dict[str, VersionedSchema], *, codec: str = "zstd",
              scratch: str | None = None) -> int:
    """Remove extra copies of an image from committed parts; returns how many rows went.

    A runner that retries a bundle whose first attempt had already committed parts can
    commit an image twice (differently composed parts, or a transient error that ended
    differently). `schemas` maps table folders to schemas, the job's own table first and
    then failures: earlier tables win (labels or features over failures); among copies in
    one table, the part that sorts first wins. Affected parts are rewritten without the
    extra rows. Reads only image_id columns; the ids seen so far are kept on disk (in
    `scratch`), so memory does not grow with the output.
    """
    drops: dict[tuple[str, str], list[int]] = {}
    with IdSet(scratch) as seen:
        for table in schemas:
            for part in list_parts(output, table):
                for index, image_id in enumerate(part_ids(part, schemas[table])):
                    if not seen.add(image_id):
                        drops.setdefault((table, part), []).append(index)
    for (table, part), indexes in drops.items():
        drop_rows(output, table, schemas[table], part, indexes, codec=codec)
    return sum(len(v) for v in drops.values())
