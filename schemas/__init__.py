"""Arrow/Parquet schemas of every table the project writes, with versioned readers."""
from schemas.base import SchemaVersionError, VersionedSchema
from schemas.corpus import CORPUS, corpus_row
from schemas.failures import FAILURES, STAGES, failure_row
from schemas.features import FEATURES, features_row, region_features
from schemas.io import count_rows, read_table
from schemas.labels import LABELS, labels_row

__all__ = [
    "CORPUS",
    "FAILURES",
    "FEATURES",
    "LABELS",
    "STAGES",
    "SchemaVersionError",
    "VersionedSchema",
    "corpus_row",
    "count_rows",
    "failure_row",
    "features_row",
    "labels_row",
    "read_table",
    "region_features",
]
