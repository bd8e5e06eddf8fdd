"""Precision, recall and F1 of a labeling run's tags against Open Images human-verified image-level labels.

    python -m pipelines.evaluate_tags --labels OUT/labels \\
        --human-labels oidv7-train-annotations-human-imagelabels.csv \\
        --classes oidv7-class-descriptions.csv [--output DIR] [--threshold T]

Only images in both the labels and the human labels count, and for each of them only
the classes a human verified for that image: a tag on a verified-positive class is a
true positive, on a verified-negative class a false positive; a verified-positive class
the teacher did not tag (at the threshold) is a false negative. Tags on classes nobody
verified for the image are counted (`unverified_tags`) but not scored: Open Images
verified only some classes per image, so an unverified tag is not known to be wrong.
Tags are matched by `label` (the MID), so the tagger's vocabulary must use Open Images
MIDs for anything to match.

The threshold defaults to the run's own (teacher_params tag.threshold). Tags below it
were never stored, so the precision-recall curve starts there, not at 0.

Memory grows with the labels (their tags and the human labels of their images), not
with the human-labels file, which is streamed (the full Open Images train file has
about 100M rows).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from array import array
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow.parquet as pq

from pipelines import storage
from schemas import LABELS
from schemas.io import parquet_files

CURVE_POINTS = 50
REQUIRED_HUMAN_COLUMNS = ("ImageID", "LabelName", "Confidence")
EXIT_USAGE = 2


# ---- reading ------------------------------------------------------------------------

@dataclass
class Predictions:
    """The labels' tags, per image: {image_id: ((label, score), ...)}, and the run's thresholds."""
    tags: dict[str, tuple] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # label -> the tagger's display name
    thresholds: set = field(default_factory=set)  # tag.threshold of every run the rows came from
    rows: int = 0
    duplicate_rows: int = 0


def read_predictions(labels: str, batch_size: int = 10_000) -> Predictions:
    """Stream the labels table (image_id, tags, teacher_params only)."""
    files = parquet_files(labels)
    if not files:
        raise FileNotFoundError(f"--labels {labels}: no Parquet files there")
    out = Predictions()
    params_seen: dict[str, float | None] = {}  # teacher_params is one string per run: parse it once
    interned: dict[str, str] = {}  # one string object per class, however many images have it
    for file in files:
        with fsspec.open(file, "rb") as f:
            pf = pq.ParquetFile(f)
            LABELS.check(pf.schema_arrow, where=file)
            for batch in pf.iter_batches(batch_size=batch_size, columns=["image_id", "tags", "teacher_params"]):
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
    from teachers.tagger import load_vocab

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


# ---- the command line ---------------------------------------------------------------

def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def format_table(result: dict, top: int = 10) -> str:
    o = result["overall"]
    lines = [(f"tags at threshold {result['threshold']:g} on {o['images']} images with human labels "
              f"(labeled images without any, not counted: {result['images_without_human_labels']})"),
             (f"precision {_fmt(o['precision'])}  recall {_fmt(o['recall'])}  F1 {_fmt(o['f1'])}  "
              f"(TP {o['tp']}, FP {o['fp']}, FN {o['fn']}); macro-F1 {_fmt(result['macro_f1'])}"),
             (f"tags on classes nobody verified for their image, not scored (neither right nor wrong): "
              f"{result['unverified_tags']}"), ""]
    ranked = sorted((r for r in result["per_class"] if r["tp"] + r["fn"] > 0),
                    key=lambda r: (-r["f1"], -(r["tp"] + r["fn"]), r["label"]))
    shown = ranked if len(ranked) <= 2 * top else [*ranked[:top], None, *ranked[-top:]]
    lines += ["| class | label | precision | recall | F1 | TP | FP | FN |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in shown:
        if r is None:
            lines.append(f"| ... {len(ranked) - 2 * top} more classes | | | | | | | |")
            continue
        lines.append(f"| {r['name']} | {r['label']} | {_fmt(r['precision'])} | {_fmt(r['recall'])} | "
                     f"{_fmt(r['f1'])} | {r['tp']} | {r['fp']} | {r['fn']} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m pipelines.evaluate_tags", description=__doc__.splitlines()[0])
    ap.add_argument("--labels", required=True, help="the labeling job's labels table (OUT/labels; local, gs://, s3://)")
    ap.add_argument("--human-labels", required=True,
                    help="Open Images human-verified image labels CSV (ImageID,Source,LabelName,Confidence)")
    ap.add_argument("--classes", required=True, help="Open Images class descriptions CSV (LabelName,DisplayName)")
    ap.add_argument("--threshold", type=float, default=None,
                    help="score a tag at or above this (default: the run's --tag-threshold, from teacher_params)")
    ap.add_argument("--output", default=None, help="also write DIR/tag_eval.json")
    return ap.parse_args(argv)


def pick_threshold(asked: float | None, run_thresholds: set) -> tuple[float, float]:
    """(the threshold to score at, where the curve starts). Raises ValueError."""
    known = {t for t in run_thresholds if t is not None}
    if asked is not None and not 0.0 <= asked <= 1.0:
        raise ValueError(f"--threshold must be within [0, 1], not {asked}")
    if not known:
        if asked is None:
            raise ValueError("the labels' teacher_params have no tag.threshold (no tagger ran?): pass --threshold")
        return asked, asked
    # Rows of runs with different thresholds (--resume with other flags) are only
    # comparable at or above the highest one: below it, some rows never stored their tags.
    floor = max(known)
    if len(known) > 1:
        print(f"evaluate_tags: warning: the labels come from runs with tag thresholds {sorted(known)}; "
              f"below {floor:g} some images never stored their tags", file=sys.stderr)
    if asked is not None and asked < floor:
        print(f"evaluate_tags: warning: --threshold {asked:g} is below the run's {floor:g}: tags under {floor:g} "
              f"were never stored, so this scores as {floor:g} would", file=sys.stderr)
    return (floor if asked is None else asked), floor


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        pred = read_predictions(args.labels)
        threshold, curve_from = pick_threshold(args.threshold, pred.thresholds)
        classes = load_classes(args.classes)
        human, _ = read_human_labels(args.human_labels, pred.tags.keys())
        result = evaluate(pred, human, classes, threshold, curve_from)
    except (ValueError, FileNotFoundError) as e:
        print(f"evaluate_tags: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if pred.duplicate_rows:
        print(f"evaluate_tags: warning: {pred.duplicate_rows} labels rows repeat an image id; "
              "each image was scored once (its first row)", file=sys.stderr)
    print(format_table(result))
    print(f"\nprecision-recall curve: {len(result['curve'])} thresholds from {curve_from:g} (the run's threshold: "
          "tags below it were never stored) to 1")
    if args.output:
        path = storage.join(args.output, "tag_eval.json")
        storage.write_text(path, json.dumps(result, indent=2))
        print(f"-> {path}")
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
