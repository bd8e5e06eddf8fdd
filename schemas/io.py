"""Reading the project's Parquet tables from any fsspec URL, version-checked.

Every Parquet read of the project goes through here, on the calling thread only: no
pre-buffering (whose reads run on Arrow's I/O pool) and no threaded decoding (Arrow's
CPU pool). Otherwise a pool thread can drop the last reference to a buffer Arrow read
from a Python (fsspec) file after the read returned; if that happens while the
interpreter exits, the thread cannot take the GIL, is unwound inside a noexcept
destructor and the process aborts after finishing its work ("terminate called without
an active exception", exit 134; seen in core dumps of our jobs, in ~PyBuffer on a pool
thread). apache/arrow#49942 fixes it after pyarrow 25, which Beam 2.77 pins us to.
"""
from __future__ import annotations

from typing import Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.base import VersionedSchema

BATCH_ROWS = 4096


def _open(f) -> pq.ParquetFile:
    return pq.ParquetFile(f, pre_buffer=False)


def parquet_files(path: str) -> list[str]:
    """The Parquet files of a table: `path` is a directory, a glob, or one file. Sorted."""
    fs, root = fsspec.core.url_to_fs(path)
    if any(ch in root for ch in "*?["):
        found = fs.glob(root)
    elif fs.isdir(root):
        found = fs.glob(root.rstrip("/") + "/*.parquet")
    else:
        found = [root] if fs.exists(root) else []
    return [fs.unstrip_protocol(p) if "://" in path else p for p in sorted(found)]


def file_schema(file: str, schema: VersionedSchema | None = None) -> pa.Schema:
    """One file's Arrow schema from its footer (checked against `schema` when given)."""
    with fsspec.open(file, "rb") as f:
        found = _open(f).schema_arrow
    if schema is not None:
        schema.check(found, where=file)
    return found


def _later(schema: VersionedSchema | None, found: pa.Schema, columns: list[str] | None) -> list[pa.Field]:
    """Requested columns a file of an older (readable) version predates: they read as nulls."""
    if schema is None or columns is None:
        return []
    fields = {f.name: f for f in schema.fields}
    return [fields[c] for c in columns if c not in found.names and c in fields and fields[c].nullable]


def _with_nulls(batch, later: list[pa.Field], columns: list[str]):
    if not later:
        return batch
    arrays = {name: batch.column(name) for name in batch.schema.names}
    arrays.update({f.name: pa.nulls(batch.num_rows, f.type) for f in later})
    return type(batch).from_arrays([arrays[c] for c in columns], names=columns)


def iter_file_batches(file: str, schema: VersionedSchema | None = None, columns: list[str] | None = None,
                      batch_rows: int = BATCH_ROWS, check=None) -> Iterator[pa.RecordBatch]:
    """Record batches of one file, only `columns` read; `check(arrow_schema)` may refuse the file first.

    Nullable columns a readable older version did not have come back as nulls."""
    with fsspec.open(file, "rb") as f:
        pf = _open(f)
        if schema is not None:
            schema.check(pf.schema_arrow, where=file)
        if check is not None:
            check(pf.schema_arrow)
        later = _later(schema, pf.schema_arrow, columns)
        present = [c for c in columns if c not in {f.name for f in later}] if later else columns
        for batch in pf.iter_batches(batch_size=batch_rows, columns=present, use_threads=False):
            yield _with_nulls(batch, later, columns)


def read_file(file: str, schema: VersionedSchema | None = None, columns: list[str] | None = None) -> pa.Table:
    """One file as a table, only `columns` read (nullable columns an older version lacks: nulls)."""
    with fsspec.open(file, "rb") as f:
        pf = _open(f)
        if schema is not None:
            schema.check(pf.schema_arrow, where=file)
        later = _later(schema, pf.schema_arrow, columns)
        present = [c for c in columns if c not in {f.name for f in later}] if later else columns
        return _with_nulls(pf.read(columns=present, use_threads=False), later, columns)


def iter_batches(path: str, schema: VersionedSchema, columns: list[str] | None = None,
                 batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Record batches of every file of a table, version-checked; memory bounded by one batch."""
    for file in parquet_files(path):
        yield from iter_file_batches(file, schema, columns, batch_rows)


def read_table(path: str, schema: VersionedSchema, columns: list[str] | None = None) -> pa.Table:
    """Read every file of a table, rejecting files of an unknown schema version."""
    tables = [read_file(file, schema, columns) for file in parquet_files(path)]
    if not tables:
        arrow = schema.arrow
        if columns is not None:
            arrow = pa.schema([arrow.field(c) for c in columns], metadata=arrow.metadata)
        return arrow.empty_table()
    return pa.concat_tables(tables)


def count_rows(path: str, schema: VersionedSchema) -> int:
    """Row count from the file footers only (no data pages read)."""
    total = 0
    for file in parquet_files(path):
        with fsspec.open(file, "rb") as f:
            pf = _open(f)
            schema.check(pf.schema_arrow, where=file)
            total += pf.metadata.num_rows
    return total
