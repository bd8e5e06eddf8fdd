"""NLVR2 statements: a sentence about a pair of images and whether it is true of them.

Two record forms are read, one per line (JSON Lines) or as a JSON array:
- the official release: `{"identifier": "dev-850-0-0", "sentence", "label": "True",
  "left_url", "right_url", ...}`; the pair's images are the files `dev-850-0-img0.png` and
  `dev-850-0-img1.png`, so the identifier without its last `-<n>` (the statement's number)
  plus `-img0` / `-img1` gives the image ids;
- LXMERT's preprocessed form: `{"identifier", "img0": "dev-850-0-img0", "img1", "sent",
  "label": 1}`. Where `img0` / `img1` are present they name the image ids (our synthetic
  scenes name theirs this way too).

The official files are JSON Lines although named `.json`, so outside a `.jsonl` path the
form is told by the text: one JSON array is the array form, several JSON values are JSON
Lines. A top-level value that is neither (a wrapper object, a scalar) is a ValueError.
A label is "True"/"False" (any case), true/false or 1/0; a record without one (the hidden
test set) is kept with label None. A record missing a field or with any other label, or a
line that is not JSON, is counted in `NLVR2Stats` and skipped, never fatal.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from pipelines.data import storage


@dataclass
class Statement:
    identifier: str
    sentence: str
    left: str  # image id of img0
    right: str  # image id of img1
    label: bool | None  # None: not labelled (kept)


@dataclass
class NLVR2Stats:
    statements: int = 0  # kept
    malformed: int = 0  # records (or lines) missing a field, with an unknown label, or not JSON
    unlabeled: int = 0  # kept without a label

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


_MALFORMED = object()  # a label that is present but is none of the accepted kinds


def _label(raw):
    if raw is None:
        return None
    if isinstance(raw, bool):  # before int: True is an int too
        return raw
    if isinstance(raw, int):
        return {1: True, 0: False}.get(raw, _MALFORMED)
    if isinstance(raw, str):
        return {"true": True, "false": False}.get(raw.strip().lower(), _MALFORMED)
    return _MALFORMED


def _images(rec: dict, identifier: str) -> tuple[str, str] | None:
    if "img0" in rec or "img1" in rec:
        left, right = rec.get("img0"), rec.get("img1")
        ok = isinstance(left, str) and isinstance(right, str) and left.strip() and right.strip()
        return (left.strip(), right.strip()) if ok else None
    pair, sep, number = identifier.rpartition("-")
    if not sep or not pair or not number.isdigit():
        return None
    return f"{pair}-img0", f"{pair}-img1"


def _statement(rec, stats: NLVR2Stats) -> Statement | None:
    identifier = rec.get("identifier") if isinstance(rec, dict) else None
    sentence = rec.get("sentence", rec.get("sent")) if isinstance(rec, dict) else None
    if not isinstance(identifier, str) or not identifier.strip() or not isinstance(sentence, str) \
            or not sentence.strip():
        stats.malformed += 1
        return None
    identifier = identifier.strip()
    images, label = _images(rec, identifier), _label(rec.get("label"))
    if images is None or label is _MALFORMED:
        stats.malformed += 1
        return None
    stats.unlabeled += label is None
    return Statement(identifier, sentence.strip(), images[0], images[1], label)


def _records(path: str, text: str, stats: NLVR2Stats) -> list:
    if not path.endswith(".jsonl"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if text.lstrip().startswith("["):
                raise ValueError(f"{path} is not valid JSON ({e})") from e
            data = None  # several values: JSON Lines, as the official files are
        if isinstance(data, list):
            return data
        if isinstance(data, dict) and "identifier" in data:
            return [data]  # one statement, however it is laid out
        if data is not None:
            # A wrapper object ({"data": [...]}) or a scalar: the file, not a line, is wrong.
            raise ValueError(f"{path} is not NLVR2: the top-level JSON value is neither an array nor a statement")
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            stats.malformed += 1
    return out


def read_nlvr2(path: str) -> tuple[list[Statement], NLVR2Stats]:
    """The statements of an NLVR2 file (JSON Lines or a JSON array), in file order."""
    stats = NLVR2Stats()
    records = _records(path, storage.read_text(path), stats)
    out = [s for s in (_statement(rec, stats) for rec in records) if s is not None]
    stats.statements = len(out)
    return out, stats
