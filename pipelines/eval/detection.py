"""Detection mAP at one IoU threshold: VOC-style all-point interpolated AP per class.

Small and dependency-free (numpy only) so that training, benchmarks and tests score a
detector the same way. Class indices follow `pipelines.data.annotations`: 1..num_classes, 0 is
background and is never a valid label here.

Matching, per image and class, in descending score: a detection takes the unmatched
ground-truth box it overlaps most, if that IoU >= threshold (a true positive); otherwise
it is a false positive, so a second detection of an already found object counts
against the detector. (The VOC devkit instead looks only at the single best-overlapping
box, matched or not; the two differ only for clustered objects.)
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np


def average_precision(scores: Any, is_tp: Any, num_gt: int) -> float:
    """All-point interpolated AP: area under the precision envelope over recall.

    `scores` and `is_tp` describe every detection of one class over the whole dataset;
    ties in score keep their given order (a stable sort), so results are reproducible.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    is_tp = np.asarray(is_tp, dtype=bool).reshape(-1)
    if scores.shape != is_tp.shape:
        raise ValueError(f"scores ({scores.size}) and is_tp ({is_tp.size}) must have the same length")
    if num_gt <= 0:
        raise ValueError(f"AP needs at least one ground-truth box, num_gt is {num_gt}")
    if int(is_tp.sum()) > num_gt:
        raise ValueError(f"{int(is_tp.sum())} true positives but only {num_gt} ground-truth boxes")
    if scores.size == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(is_tp[order])
    fp = np.cumsum(~is_tp[order])
    recall = tp / num_gt
    precision = tp / (tp + fp)
    # Sentinels: recall runs from 0 to 1; the envelope makes precision non-increasing.
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) IoU of xyxy boxes; zero-area pairs get 0 rather than a division by zero."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _boxes(value: Any, where: str) -> np.ndarray:
    arr = np.asarray(value if value is not None else np.zeros((0, 4)), dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{where}: boxes must have shape (n, 4), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{where}: boxes contain NaN or infinity")
    return arr


def _vector(value: Any, n: int, dtype: type, name: str, where: str) -> np.ndarray:
    arr = np.asarray(value if value is not None else [], dtype=dtype).reshape(-1)
    if arr.size != n:
        raise ValueError(f"{where}: {n} boxes but {arr.size} {name}")
    return arr


def _image(record: Mapping, with_scores: bool, num_classes: int, where: str
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if not isinstance(record, Mapping):
        raise ValueError(f"{where}: expected a dict with boxes, labels{', scores' if with_scores else ''}; "
                         f"got {type(record).__name__}")
    boxes = _boxes(record.get("boxes"), where)
    labels = _vector(record.get("labels"), len(boxes), np.int64, "labels", where)
    if labels.size and (labels.min() < 1 or labels.max() > num_classes):
        bad = labels[(labels < 1) | (labels > num_classes)][0]
        raise ValueError(f"{where}: label {bad} is outside 1..{num_classes} (0 is background)")
    scores = None
    if with_scores:
        scores = _vector(record.get("scores"), len(boxes), np.float64, "scores", where)
        if not np.isfinite(scores).all():
            raise ValueError(f"{where}: scores contain NaN or infinity")
    return boxes, labels, scores


def _pairs(detections: Any, ground_truth: Any) -> Iterable[tuple[str, Mapping | None, Mapping]]:
    """(name for messages, detections or None, ground truth) per image."""
    if isinstance(detections, Mapping) != isinstance(ground_truth, Mapping):
        raise ValueError("detections and ground_truth must both be dicts keyed by image id, or both sequences")
    if isinstance(ground_truth, Mapping):
        extra = [k for k in detections if k not in ground_truth]
        if extra:
            raise ValueError(f"detections for {len(extra)} image(s) without ground truth, e.g. {extra[0]!r}")
        for key, gt in ground_truth.items():
            yield f"image {key!r}", detections.get(key), gt
        return
    dets, gts, end = iter(detections), iter(ground_truth), object()
    n = 0
    while True:
        det, gt = next(dets, end), next(gts, end)
        if det is end and gt is end:
            return
        if det is end or gt is end:
            longer = "ground_truth" if det is end else "detections"
            raise ValueError(f"detections and ground_truth differ in length: {longer} has more than {n} images")
        yield f"image {n}", det, gt
        n += 1


def evaluate_detections(detections: Any, ground_truth: Any, num_classes: int,
                        iou_threshold: float = 0.5) -> dict:
    """mAP over classes 1..num_classes at `iou_threshold`.

    Inputs, per image: detections `{"boxes": (n, 4) xyxy, "scores": (n,), "labels": (n,)}`,
    ground truth the same without scores (any array-likes, CPU tensors included). Either
    two sequences aligned by position (same image order, same length), or two dicts keyed
    by image id, where an image missing from `detections` simply has no detections.
    Boxes may be in any one coordinate system (normalized or pixels) shared by both.

    Returns `{"map", "per_class": {class: {"ap", "num_gt", "num_det"}}, "iou_threshold",
    "num_images"}`. A class without ground truth has ap None and is left out of the mean
    (its detections cannot be scored against recall); with no ground truth at all, map is nan.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, not {num_classes}")
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], not {iou_threshold}")
    scores: dict[int, list[np.ndarray]] = {c: [] for c in range(1, num_classes + 1)}
    hits: dict[int, list[np.ndarray]] = {c: [] for c in range(1, num_classes + 1)}
    num_gt = dict.fromkeys(range(1, num_classes + 1), 0)
    num_images = 0
    for where, det, gt in _pairs(detections, ground_truth):
        num_images += 1
        gt_boxes, gt_labels, _ = _image(gt, False, num_classes, f"ground truth, {where}")
        det_boxes, det_labels, det_scores = _image(
            {} if det is None else det, True, num_classes, f"detections, {where}")
        for c in np.unique(gt_labels):
            num_gt[int(c)] += int((gt_labels == c).sum())
        for c in np.unique(det_labels):
            mine = det_labels == c
            s, tp = _match(det_boxes[mine], det_scores[mine], gt_boxes[gt_labels == c], iou_threshold)
            scores[int(c)].append(s)
            hits[int(c)].append(tp)
    per_class = {}
    for c in range(1, num_classes + 1):
        s = np.concatenate(scores[c]) if scores[c] else np.zeros(0)
        tp = np.concatenate(hits[c]) if hits[c] else np.zeros(0, bool)
        ap = average_precision(s, tp, num_gt[c]) if num_gt[c] else None
        per_class[c] = {"ap": ap, "num_gt": num_gt[c], "num_det": int(s.size)}
    aps = [v["ap"] for v in per_class.values() if v["ap"] is not None]
    return {"map": float(np.mean(aps)) if aps else math.nan, "per_class": per_class,
            "iou_threshold": iou_threshold, "num_images": num_images}


def _match(boxes: np.ndarray, scores: np.ndarray, gt: np.ndarray, iou_threshold: float
           ) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching of one image's detections of one class: (scores, is_tp) in score order."""
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    is_tp = np.zeros(len(boxes), bool)
    if len(gt):
        iou = box_iou(boxes, gt)
        taken = np.zeros(len(gt), bool)
        for i in range(len(boxes)):
            candidates = np.where(taken, -1.0, iou[i])
            j = int(np.argmax(candidates))
            if candidates[j] >= iou_threshold:
                taken[j] = True
                is_tp[i] = True
    return scores, is_tp


__all__ = ["average_precision", "box_iou", "evaluate_detections"]
