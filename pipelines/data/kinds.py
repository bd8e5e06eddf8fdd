"""What a path holds, named for error messages: a run folder, a table, a model directory.

A command handed the wrong kind of folder says what it got ("a features run
(extract_features)", "a MiniVLM student") instead of failing on a symptom (an empty card,
a list of unknown config keys). Reads only small files: run.json, config.json, one Parquet
footer.
"""
from __future__ import annotations

import json

from pipelines.data import storage

RUNS = {  # run.json "job" -> what it is and the table it writes
    "pseudo_label": ("a labeling run (pseudo_label)", "labels"),
    "extract_features": ("a features run (extract_features)", "features"),
    "build_corpus": ("a corpus (build_corpus)", "shards"),
}
TABLES = {"labels": "a labels table", "failures": "a failures table", "features": "a features table",
          "corpus": "corpus shards"}


def what_is(path: str) -> str | None:
    """A short description of what `path` holds, or None when it is none of the project's kinds."""
    try:
        return _run(path) or _export(path) or _model(path) or _table(path) or _training_run(path)
    except OSError:
        return None


def _json(url: str) -> dict | None:
    if not storage.exists(url):
        return None
    try:
        data = json.loads(storage.read_text(url))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _run(path: str) -> str | None:
    record = _json(storage.join(path, "run.json"))
    if record is None:
        return None
    return RUNS.get(record.get("job"), (f"a {record.get('job')} run", None))[0]


def _export(path: str) -> str | None:
    record = _json(storage.join(path, "export.json"))
    if record is None or record.get("format") != "minivlm-onnx":
        return None
    return f"an ONNX export of a MiniVLM captioner ({record.get('precision', 'fp32')}, pipelines.export)"


def _model(path: str) -> str | None:
    config = _json(storage.join(path, "config.json"))
    if config is None:
        return None
    if "backbone" in config and "fpn_channels" in config:
        return "a TEE (region feature extractor)"
    if "num_layers" in config and "region_feature_dim" in config:
        task = config.get("task", "pretraining")
        return f"a MiniVLM student ({task} checkpoint)"
    model_type = config.get("model_type")
    return f"a Hugging Face model ({model_type})" if model_type else "a model directory"


def _table(path: str) -> str | None:
    from schemas.base import NAME_KEY
    from schemas.io import file_schema, parquet_files

    files = parquet_files(path)
    if not files:
        return None
    meta = file_schema(files[0]).metadata or {}
    name = meta.get(NAME_KEY, b"").decode()
    return TABLES.get(name, f"a {name} table" if name else "a Parquet table of another tool")


def _training_run(path: str) -> str | None:
    if storage.exists(storage.join(path, "model")) and storage.exists(storage.join(path, "metrics.jsonl")):
        inner = _model(storage.join(path, "model"))
        return f"a training run folder holding {inner} in model/" if inner else "a training run folder"
    return None
