"""mAP@0.5 of a TEE on held-out Open Images box annotations.

    python -m pipelines.evaluate_tee --tee DIR --images VAL_IMAGES.csv --annotations VAL_BOXES.csv \\
        [--output EVAL_DIR]

The TEE's own regions are what is scored (up to num_regions per image, one class
each): the detections the student will read, not a separate detector output.
Annotation labels the TEE has no class for are counted and skipped. Unreadable images
are counted and left out of the score. Memory grows with the number of held-out boxes
and regions (kept for the AP computation), not with image sizes. A table goes to
stdout; EVAL_DIR gets tee_eval.json, the full result.
"""
from __future__ import annotations

import argparse
import json
import sys

# Only light imports up here: --help and flag errors must not wait for torch (models.tee and
# pipelines.eval.tee are imported in run(), after the flags are checked).
from pipelines.cli import EXIT_OK, CommandParser, UsageError, check_device, usage_error
from pipelines.data import images, sources, storage

PROG = "evaluate_tee"
RESULT_FILE = "tee_eval.json"


def parser() -> CommandParser:
    ap = CommandParser(prog="python -m pipelines.evaluate_tee", description=__doc__.splitlines()[0])
    ap.add_argument("--tee", required=True, help="saved TEE directory (local, gs://, s3://) or 'tiny'")
    ap.add_argument("--images", required=True, help="image manifest sorted by image id (as for train_tee)")
    ap.add_argument("--input-format", default="auto", choices=sources.KINDS, help="how to read --images")
    ap.add_argument("--image-root", default=None, help="where the manifest's images are")
    ap.add_argument("--image-path-template", default=sources.DEFAULT_TEMPLATE,
                    help="an image's path under --image-root")
    ap.add_argument("--annotations", required=True, help="Open Images box CSV sorted by ImageID")
    ap.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    ap.add_argument("--limit", type=int, default=None, help="evaluate on the first N images")
    ap.add_argument("--max-pixels", type=int, default=images.DEFAULT_MAX_PIXELS,
                    help="refuse images with more pixels (decompression bombs)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: CUDA if present)")
    out = ap.add_mutually_exclusive_group()
    out.add_argument("--output", metavar="DIR", default=None, help=f"also write the full result to DIR/{RESULT_FILE}")
    out.add_argument("--json", metavar="FILE", default=None,
                     help=f"the older spelling, kept for compatibility: the full result to FILE "
                          f"(--output DIR writes it to DIR/{RESULT_FILE})")
    return ap


def parse_args(argv) -> argparse.Namespace:
    """The flags and the --tee's kind, checked: UsageError for anything wrong, before any work."""
    from pipelines.eval.inputs import tee_problem

    args = parser().parse_args(argv)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, not {args.batch_size}")
    check_device(args.device)
    problem = tee_problem("--tee", args.tee)  # a student, a run folder: named, not loaded as a TEE
    if problem:
        raise UsageError(problem)
    return args


def result_path(args) -> str | None:
    return storage.join(args.output, RESULT_FILE) if args.output else args.json


def evaluate(args) -> dict:
    """Load the TEE and score it; ValueError or FileNotFoundError for inputs it cannot use."""
    import torch

    from models.tee import load_tee
    from pipelines.eval.tee import evaluate_tee
    from pipelines.train.detection_data import DetectionData

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model, provenance = load_tee(args.tee, map_location=device)
    source = sources.SourceSpec(input=args.images, kind=args.input_format, image_root=args.image_root,
                                path_template=args.image_path_template)
    sources.check(source)
    data = DetectionData(source=source, annotations=args.annotations, classes=model.config.classes,
                         max_pixels=args.max_pixels)
    result = evaluate_tee(model, data, batch_size=args.batch_size, limit=args.limit)
    result.update(tee=provenance, extractor=model.extractor_id())
    return result


def run(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        result = evaluate(args)
    except (UsageError, ValueError, FileNotFoundError) as e:
        return usage_error(PROG, e)
    from pipelines.eval.tee import format_table

    print(format_table(result))
    path = result_path(args)
    if path:
        storage.write_text(path, json.dumps(result, indent=2))
        print(f"-> {path}")
    return EXIT_OK


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
