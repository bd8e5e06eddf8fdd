"""Writing outputs: versioned Parquet tables and the run record."""
from __future__ import annotations

import json

from apache_beam.io.parquetio import WriteToParquet

from pipelines import storage
from schemas import VersionedSchema

CODECS = ("zstd", "snappy", "gzip", "brotli", "none")


def write_table(rows, output: str, table: str, schema: VersionedSchema, *, num_shards: int = 0,
                codec: str = "zstd", row_group_mb: int = 64):
    """rows -> OUTPUT/<table>/<table>-SSSSS-of-NNNNN.parquet, with the schema's version stamped."""
    if codec not in CODECS:
        raise ValueError(f"--compression must be one of {', '.join(CODECS)}, not {codec!r}")
    if num_shards < 0:
        raise ValueError(f"--num-shards must be >= 0 (0 lets the runner choose), not {num_shards}")
    if row_group_mb < 1:
        raise ValueError(f"--row-group-mb must be >= 1, not {row_group_mb}")
    return rows | f"Write{table.title()}" >> WriteToParquet(
        file_path_prefix=storage.join(output, f"{table}/{table}"),
        schema=schema.arrow,
        codec=codec,
        num_shards=num_shards,
        file_name_suffix=".parquet",
        row_group_buffer_size=row_group_mb * 1024 * 1024,
        record_batch_size=256,
    )


def write_run_record(output: str, record: dict) -> str:
    path = storage.join(output, "run.json")
    storage.write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return path
