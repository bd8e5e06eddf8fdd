"""Arrow/Parquet schemas of every table the project writes, with versioned readers."""
from schemas.base import SchemaVersionError, VersionedSchema
from schemas.failures import FAILURES, STAGES, failure_row
from schemas.io import count_rows, read_table
from schemas.labels import LABELS, labels_row

__all__ = [
    "FAILURES",
    "LABELS",
    "STAGES",
    "SchemaVersionError",
    "VersionedSchema",
    "count_rows",
    "failure_row",
    "labels_row",
    "read_table",
]
