"""A TEE scored as a detector on held-out Open Images boxes: its own regions, mAP@0.5.

The regions scored are what the student will read (up to num_regions per image, one
class each), not a separate detector output. Unreadable images are counted and left out.
"""
from __future__ import annotations

import time

from pipelines.data.annotations import BoxStats
from pipelines.eval.detection import evaluate_detections
from pipelines.train.detection_data import DetectionData, iter_samples, read_image


def evaluate_tee(model, data: DetectionData, *, batch_size: int = 8, limit: int | None = None) -> dict:
    """Run `model.extract` over the held-out images; returns mAP@0.5 with per-class AP and counts."""
    stats = BoxStats()
    dets, gts = [], []
    unreadable = 0
    pending: list = []

    def flush():
        regions = model.extract([p for p, _, _ in pending])
        for r, (_, boxes, labels) in zip(regions, pending):
            dets.append({"boxes": r.boxes, "scores": r.scores, "labels": r.classes})
            gts.append({"boxes": boxes, "labels": labels})
        pending.clear()

    t0 = time.monotonic()
    for n, (ref, boxes, labels) in enumerate(iter_samples(data, stats)):
        if limit is not None and n >= limit:
            break
        try:
            if ref.error:
                raise ValueError(ref.error)
            pending.append((read_image(ref, data, model.config.image_size), boxes, labels))
        except Exception:
            unreadable += 1
            continue
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    result = evaluate_detections(dets, gts, num_classes=model.config.num_classes, iou_threshold=0.5)
    names = {i + 1: c for i, c in enumerate(model.config.classes)}
    per_class = {names[k][1]: {"label": names[k][0], **v} for k, v in result["per_class"].items()
                 if v["num_gt"] or v["num_det"]}
    return {"map50": result["map"], "images": len(gts), "unreadable_images": unreadable,
            "seconds": round(time.monotonic() - t0, 2), "per_class": per_class, "annotations": stats.to_dict()}


def format_table(result: dict, top: int = 20) -> str:
    lines = [f"mAP@0.5 = {result['map50']:.4f} over {result['images']} images "
             f"({result['unreadable_images']} unreadable)", "",
             "| class | AP@0.5 | ground truth | detections |", "|---|---:|---:|---:|"]
    rows = sorted(result["per_class"].items(), key=lambda kv: -kv[1]["num_gt"])
    for name, v in rows[:top]:
        ap = "-" if v["ap"] is None else f"{v['ap']:.4f}"
        lines.append(f"| {name} | {ap} | {v['num_gt']} | {v['num_det']} |")
    if len(rows) > top:
        lines.append(f"| ... {len(rows) - top} more classes in the JSON | | | |")
    return "\n".join(lines)
