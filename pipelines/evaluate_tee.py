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

from pipelines.data import images, sources, storage
from pipelines.eval.tee import evaluate_tee, format_table
from pipelines.train.detection_data import DetectionData


def run(argv: list[str] | None = None) -> int:
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
        result = evaluate_tee(model, data, batch_size=args.batch_size, limit=args.limit)
    except (ValueError, FileNotFoundError) as e:
        print(f"evaluate_tee: error: {e}", file=sys.stderr)
        return 2
    result.update(tee=provenance, extractor=model.extractor_id())
    print(format_table(result))
    if args.json:
        storage.write_text(args.json, json.dumps(result, indent=2))
    return 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
