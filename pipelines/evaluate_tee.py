"""mAP@0.5 of a TEE on held-out Open Images box annotations.

    python -m pipelines.evaluate_tee --tee DIR --images VAL_IMAGES.csv --annotations VAL_BOXES.csv

The TEE's own regions are what is scored (up to num_regions per image, one class
each): the detections the student will read, not a separate detector output.
Annotation labels the TEE has no class for are counted and skipped. Unreadable images
are counted and left out of the score. Memory grows with the number of held-out boxes
and regions (kept for the AP computation), not with image sizes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from pipelines import images, sources, storage
from pipelines.boxes import BoxStats
from pipelines.detection_data import DetectionData, iter_samples, read_image
from pipelines.detection_eval import evaluate_detections


def evaluate(model, data: DetectionData, *, batch_size: int = 8, limit: int | None = None) -> dict:
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


def main(argv: list[str] | None = None) -> int:
    from models.tee import load_tee

    ap = argparse.ArgumentParser(prog="python -m pipelines.evaluate_tee", description=__doc__.splitlines()[0])
    ap.add_argument("--tee", required=True, help="saved TEE directory (local, gs://, s3://) or 'tiny'")
    ap.add_argument("--images", required=True, help="image manifest sorted by image id (as for train_tee)")
    ap.add_argument("--input-format", default="auto", choices=sources.KINDS)
    ap.add_argument("--image-root", default=None)
    ap.add_argument("--image-path-template", default=sources.DEFAULT_TEMPLATE)
    ap.add_argument("--annotations", required=True, help="Open Images box CSV sorted by ImageID")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--limit", type=int, default=None, help="evaluate on the first N images")
    ap.add_argument("--max-pixels", type=int, default=images.DEFAULT_MAX_PIXELS)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="also write the full result here")
    args = ap.parse_args(argv)
    try:
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, not {args.batch_size}")
        model, provenance = load_tee(args.tee, map_location=args.device)
        source = sources.SourceSpec(input=args.images, kind=args.input_format, image_root=args.image_root,
                                    path_template=args.image_path_template)
        sources.check(source)
        data = DetectionData(source=source, annotations=args.annotations, classes=model.config.classes,
                             max_pixels=args.max_pixels)
        result = evaluate(model, data, batch_size=args.batch_size, limit=args.limit)
    except (ValueError, FileNotFoundError) as e:
        print(f"evaluate_tee: error: {e}", file=sys.stderr)
        return 2
    result.update(tee=provenance, extractor=model.extractor_id())
    print(format_table(result))
    if args.json:
        storage.write_text(args.json, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
