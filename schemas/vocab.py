"""The tag vocabulary format, shared by the tagger teacher and the student's TEE.

A vocabulary is the Open Images class-descriptions CSV: `LabelName,DisplayName` rows,
header optional. The bundled default (`vocabularies/default_tags.csv`) is this project's
own small list of common visual concepts; for Open Images work pass the official file.
"""
from __future__ import annotations

import csv
import io
import os

DEFAULT_VOCAB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vocabularies", "default_tags.csv")


def read_vocab(text: str, where: str = "vocabulary") -> list[tuple[str, str]]:
    """Parse `LabelName,DisplayName` rows (header optional) into (label, name) pairs, first occurrence wins."""
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["labelname", "displayname"]:
        rows = rows[1:]
    vocab, seen = [], set()
    for n, row in enumerate(rows, start=1):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise ValueError(f"{where}: row {n} is not 'LabelName,DisplayName': {row!r}")
        label = row[0].strip()
        if label not in seen:
            seen.add(label)
            vocab.append((label, row[1].strip()))
    if not vocab:
        raise ValueError(f"{where} has no tags")
    return vocab


def load_vocab(path: str = DEFAULT_VOCAB) -> list[tuple[str, str]]:
    """A vocabulary file (local, gs://, s3://, ...; BOM tolerated) -> (label, name) pairs."""
    import fsspec

    with fsspec.open(path, "r", encoding="utf-8-sig") as f:
        return read_vocab(f.read(), where=path)
