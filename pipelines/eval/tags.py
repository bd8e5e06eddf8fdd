"""Tag quality: a labeling run's tags against Open Images human-verified image labels.

A tag on a verified-positive class is a true positive, on a verified-negative class a
false positive; a verified-positive class left untagged is a false negative; tags on
classes nobody verified for the image are counted, not scored. The labels are read by
column and the human-labels CSV is streamed, so memory grows with the labels only.
"""
from __future__ import annotations

import csv
import json
from array import array
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import fsspec
import numpy as np

from schemas import LABELS
from schemas.io import iter_file_batches, parquet_files
from schemas.vocab import load_vocab

CURVE_POINTS = 50
REQUIRED_HUMAN_COLUMNS = ("ImageID", "LabelName", "Confidence")


# ---- reading ------------------------------------------------------------------------

@dataclass
class Predictions:
    """The labels' tags, per image: {image_id: ((label, score), ...)}, and the run's thresholds."""
    tags: dict[str, tuple] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # label -> the tagger's display name
    thresholds: set = field(default_factory=set)  # tag.threshold of every run the rows came from
    rows: int = 0
    duplicate_rows: int = 0


def read_predictions(labels: str, batch_size: int = 10_000, on_rows=None) -> Predictions:
    """Stream the labels table (image_id, tags, teacher_params only); on_rows(n) after each batch of n rows."""
    files = parquet_files(labels)
    if not files:
        raise FileNotFoundError(f"--labels {labels}: no Parquet files there")
    out = Predictions()
    params_seen: dict[str, float | None] = {}  # teacher_params is one string per run: parse it once
    interned: dict[str, str] = {}  # one string object per class, however many images have it
    for file in files:
        for batch in iter_file_batches(file, LABELS, ["image_id", "tags", "teacher_params"], batch_size):
            if on_rows is not None:
                on_rows(batch.num_rows)
            for image_id, tags, params in zip(*(batch.column(c).to_pylist() for c in batch.schema.names)):
                out.rows += 1
                if params not in params_seen:
                    params_seen[params] = _run_threshold(params)
                out.thresholds.add(params_seen[params])
                if image_id in out.tags:  # e.g. a run that ended "inconsistent": score each image once
                    out.duplicate_rows += 1
                    continue
                pairs = []
                for t in tags:
                    label = interned.setdefault(t["label"], t["label"])
                    out.names.setdefault(label, t["name"])
                    pairs.append((label, t["score"]))
                out.tags[image_id] = tuple(pairs)
    return out


def _run_threshold(teacher_params: str) -> float | None:
    try:
        value = json.loads(teacher_params)["tag"]["threshold"]
    except (ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def load_classes(path: str) -> dict[str, str]:
    """Open Images class descriptions (LabelName,DisplayName; header or not) -> {label: name}."""
    return dict(load_vocab(path))


def read_human_labels(path: str, image_ids) -> tuple[dict[str, dict[str, bool]], int]:
    """Stream the human-labels CSV, keeping only rows of `image_ids`.

    Returns ({image_id: {label: verified positive?}}, rows read). A class verified by
    several sources counts once, positive if any source says so.
    """
    verified: dict[str, dict[str, bool]] = defaultdict(dict)
    with fsspec.open(path, "r", encoding="utf-8-sig", newline="", compression="infer") as f:
        reader = csv.reader(f)
        header = next(reader, None) or []
        missing = [c for c in REQUIRED_HUMAN_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"--human-labels {path}: no {', '.join(missing)} column in the header {header!r}; "
                             "expected ImageID,Source,LabelName,Confidence")
        i_id, i_label, i_conf = (header.index(c) for c in REQUIRED_HUMAN_COLUMNS)
        rows = 0
        for line, row in enumerate(reader, start=2):
            rows += 1
            if not row or row[i_id] not in image_ids:
                continue
            try:
                positive = float(row[i_conf]) > 0.5  # 1 verified positive, 0 verified negative
            except (IndexError, ValueError) as e:
                raise ValueError(f"--human-labels {path}: line {line} has no numeric Confidence: {row!r}") from e
            labels = verified[row[i_id]]
            labels[row[i_label]] = labels.get(row[i_label], False) or positive
    return dict(verified), rows


# ---- scoring ------------------------------------------------------------------------

def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _f1(tp: int, fp: int, fn: int) -> float | None:
    # 2TP / (2TP + FP + FN): the harmonic mean of P and R where both exist, 0 when a class
    # with positives or predictions got no true positive.
    return _ratio(2 * tp, 2 * tp + fp + fn)


def scores(tp: int, fp: int, fn: int) -> dict:
    return {"precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn), "f1": _f1(tp, fp, fn)}


def evaluate(pred: Predictions, human: dict[str, dict[str, bool]], classes: dict[str, str],
             threshold: float, curve_from: float) -> dict:
    """The tag_eval.json result (see the module docstring for the rules)."""
    per_class: dict[str, Counter] = defaultdict(Counter)
    unverified = 0
    # Scores of tags on verified classes, for the curve: TP(t) = positives scored >= t.
    pos_scores, neg_scores = array("d"), array("d")
    positives = 0
    for image_id, verified in human.items():
        seen, tagged = set(), set()
        for label, score in pred.tags[image_id]:
            if label in seen:  # a class tagged twice is one prediction
                continue
            seen.add(label)
            if label not in verified:
                unverified += score >= threshold
                continue
            (pos_scores if verified[label] else neg_scores).append(score)
            if score >= threshold:
                tagged.add(label)
                per_class[label]["tp" if verified[label] else "fp"] += 1
        for label, positive in verified.items():
            if positive:
                positives += 1
                if label not in tagged:
                    per_class[label]["fn"] += 1

    tp, fp, fn = (sum(c[k] for c in per_class.values()) for k in ("tp", "fp", "fn"))
    rows = [{"label": label, "name": classes.get(label) or pred.names.get(label, label),
             **scores(c["tp"], c["fp"], c["fn"]), "tp": c["tp"], "fp": c["fp"], "fn": c["fn"]}
            for label, c in sorted(per_class.items())]
    with_positives = [r["f1"] for r in rows if r["tp"] + r["fn"] > 0]
    return {
        "threshold": threshold,
        "overall": {**scores(tp, fp, fn), "tp": tp, "fp": fp, "fn": fn, "images": len(human)},
        "macro_f1": sum(with_positives) / len(with_positives) if with_positives else None,
        "per_class": rows,
        "curve": curve(np.frombuffer(pos_scores), np.frombuffer(neg_scores), positives, curve_from),
        "unverified_tags": unverified,
        "images_without_human_labels": len(pred.tags) - len(human),
    }


def curve(pos_scores: np.ndarray, neg_scores: np.ndarray, positives: int, start: float) -> list[dict]:
    """Micro precision/recall/F1 at CURVE_POINTS thresholds from `start` to 1."""
    pos, neg = np.sort(pos_scores), np.sort(neg_scores)
    out = []
    for t in np.linspace(start, 1.0, CURVE_POINTS):
        t = float(t)
        tp = int(pos.size - np.searchsorted(pos, t, side="left"))  # scores >= t
        fp = int(neg.size - np.searchsorted(neg, t, side="left"))
        out.append({"threshold": t, **scores(tp, fp, positives - tp)})
    return out
