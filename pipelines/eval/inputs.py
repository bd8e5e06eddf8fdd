"""The evaluation commands' inputs checked for their kind before any work: a labeling run
folder where a labels table is expected (or a features run where a labeling run is), a
student where a TEE is.

Without these a wrong folder is read as an empty table (a data card saying "0 labeled",
exit 0) or fails on a symptom (a list of unknown config keys). Each check returns the
one-line complaint, or None when the path is the right kind, or none of the kinds the
project knows: then the reader's own error speaks ("does not exist", "expected a
'labels' table"). The commands raise the complaint as their usage error (pipelines.eval
stays below pipelines.cli). Only small files are read (pipelines.data.kinds).
"""
from __future__ import annotations

from pipelines.data import storage
from pipelines.data.kinds import RUNS, TABLES, what_is

LABELING_RUN = RUNS["pseudo_label"][0]
LABELS_TABLE = TABLES["labels"]
TEE = "a TEE"  # how pipelines.data.kinds begins a TEE's description


def labels_table_problem(flag: str, path: str, *, run_flag: str | None = None) -> str | None:
    """`path` should be a labels table; a run folder gets the table inside it suggested
    (and `run_flag` when the command takes the whole run)."""
    from schemas.io import parquet_files

    if parquet_files(path):
        return None  # a table: the schema check names a table of another kind precisely
    kind = what_is(path)
    inner = storage.join(path, "labels")
    # (a labeling run whose run.json is missing still has its table inside)
    if kind == LABELING_RUN or (kind is None and parquet_files(inner)):
        also = f", or {run_flag} {path}" if run_flag else ""
        return f"{flag} {path} is {kind or 'a run folder (labels/ inside)'}: pass {inner}{also}"
    return None if kind is None else f"{flag} {path} is {kind}, not {LABELS_TABLE}"


def labeling_run_problem(flag: str, path: str, *, table_flag: str) -> str | None:
    """`path` should be a labeling run (pseudo_label's --output); a labels table gets
    `table_flag` suggested."""
    kind = what_is(path)
    if kind is None or kind == LABELING_RUN:
        return None
    also = f": pass {table_flag} {path}" if kind == LABELS_TABLE else ""
    return f"{flag} {path} is {kind}, not a labeling run{also}"


def tee_problem(flag: str, path: str) -> str | None:
    """`path` should be a saved TEE; train_tee's run folder gets its model/ suggested."""
    kind = what_is(path)
    if kind is None or kind.startswith(TEE):
        return None
    if f"holding {TEE}" in kind:
        return f"{flag} {path} is {kind}: pass {storage.join(path, 'model')}"
    return f"{flag} {path} is {kind}, not a TEE"
