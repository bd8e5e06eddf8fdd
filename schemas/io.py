"""Reading the project's Parquet tables from any fsspec URL, version-checked."""
from __future__ import annotations

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.base import VersionedSchema


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


def read_table(path: str, schema: VersionedSchema, columns: list[str] | None = None) -> pa.Table:
    """Read every file of a table, rejecting files of an unknown schema version."""
    tables = []
    for file in parquet_files(path):
        with fsspec.open(file, "rb") as f:
            pf = pq.ParquetFile(f)
            schema.check(pf.schema_arrow, where=file)
            tables.append(pf.read(columns=columns))
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
            pf = pq.ParquetFile(f)
            schema.check(pf.schema_arrow, where=file)
            total += pf.metadata.num_rows
    return total
