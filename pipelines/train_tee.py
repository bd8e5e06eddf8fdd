"""Train the TEE as a detector on Open Images box annotations.

    python -m pipelines.train_tee --images train-images.csv --image-root IMAGES \
        --annotations train-boxes.csv --classes class-descriptions-boxable.csv \
        --tee tee-d0 --output RUN --max-steps 90000 [--resume]

    torchrun --nproc_per_node 8 -m pipelines.train_tee ...   (DDP, one GPU per process)

Data is streamed (manifest and boxes both sorted by image id, merged on the fly);
images with no boxes train as negatives. RUN/model is a TEE directory (config.json +
model.safetensors) that extract_features and evaluate_tee take as --tee; RUN/metrics.jsonl
has the losses and, with --val-annotations, mAP@0.5 on held-out images.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from pipelines.cli import EXIT_OK, CommandParser, UsageError, usage_error
from pipelines.data import images, sources
from pipelines.train.flags import add_train_flags, preflight, print_notes

PROG = "train_tee"


def parse_args(argv):
    """The flags (UsageError for unknown or missing ones). Module-level imports stay light:
    --help imports no torch."""
    ap = CommandParser(prog="python -m pipelines.train_tee", description=__doc__.splitlines()[0])
    d = ap.add_argument_group("data (Open Images formats; manifest and boxes sorted by image id)")
    d.add_argument("--images", required=True, help="image manifest: Open Images CSV, image_id,uri table, or a glob")
    d.add_argument("--input-format", default="auto", choices=sources.KINDS)
    d.add_argument("--image-root", default=None)
    d.add_argument("--image-path-template", default=sources.DEFAULT_TEMPLATE)
    d.add_argument("--annotations", required=True, help="box CSV: ImageID,Source,LabelName,Confidence,XMin,XMax,...")
    d.add_argument("--classes", required=True, help="class descriptions CSV: LabelName,DisplayName")
    d.add_argument("--attributes", default=None,
                   help="Open Images visual relationships CSV sorted by ImageID: its 'is' rows are the boxes' "
                        "attributes (colour, material...), which train the TEE's attribute head")
    d.add_argument("--attribute-classes", default=None,
                   help="attribute descriptions CSV: LabelName,DisplayName (the head's outputs; with --attributes)")
    d.add_argument("--val-images", default=None, help="held-out manifest for mAP@0.5")
    d.add_argument("--val-image-root", default=None)
    d.add_argument("--val-annotations", default=None)
    d.add_argument("--val-limit", type=int, default=None, help="evaluate on the first N held-out images")
    d.add_argument("--max-pixels", type=int, default=images.DEFAULT_MAX_PIXELS)
    d.add_argument("--shuffle-buffer", type=int, default=10_000, help="samples in the streaming shuffle buffer")
    m = ap.add_argument_group("model")
    m.add_argument("--tee", default="tee-d0",
                   help="a registered config to train from scratch (tee-d0; tee-tiny or 'tiny' for tests; tiny:<name> alike) "
                        "or a saved TEE directory to fine-tune")
    m.add_argument("--image-size", type=int, default=None, help="override the config's input size")
    m.add_argument("--class-agnostic-boxes", action=argparse.BooleanOptionalAction, default=None,
                   help="one box refinement per region for all classes, or (--no-...) one per class "
                        "(unset: the config's; registered configs are class-agnostic; a new TEE only)")
    m.add_argument("--pretrained-backbone", action="store_true",
                   help="start the backbone from timm's ImageNet weights (needs the model hub)")
    m.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=True)
    m.add_argument("--scale-jitter", type=float, default=0.6, help="smallest image scale inside the square (1: off)")
    add_train_flags(ap, lr=1e-3, batch_size=8)
    return ap.parse_args(argv)


def build_model(args, classes, attributes=()):
    from models.tee import TEE, NotATEE, build_tee, list_tees, tiny_name

    name = tiny_name(args.tee) or args.tee
    if name in list_tees():
        overrides = {"pretrained_backbone": args.pretrained_backbone}
        if args.image_size:
            overrides["image_size"] = args.image_size
        if args.class_agnostic_boxes is not None:
            overrides["class_agnostic_boxes"] = args.class_agnostic_boxes
        if attributes:
            overrides["attributes"] = tuple(attributes)
        return build_tee(name, classes=classes, seed=args.seed, **overrides)
    if not os.path.isdir(args.tee) and "://" not in args.tee:
        raise ValueError(f"--tee {args.tee!r} is neither a registered config ({', '.join(list_tees())}) "
                         "nor a saved TEE directory")
    try:
        model = TEE.from_pretrained(args.tee)
    except NotATEE as e:
        raise UsageError(f"--tee {e}") from e
    if tuple(model.config.classes) != tuple(classes):
        raise ValueError(f"--tee {args.tee} was trained on {model.config.num_classes} other classes than "
                         f"--classes ({len(classes)}); fine-tuning needs the same class list")
    if tuple(model.config.attributes) != tuple(attributes):
        raise ValueError(f"--tee {args.tee} has {len(model.config.attributes)} attributes, --attribute-classes "
                         f"gives {len(attributes)}: fine-tuning needs the same attribute list (or none on both)")
    if args.image_size and args.image_size != model.config.image_size:
        raise ValueError("--image-size cannot change the input size of a saved TEE")
    if args.class_agnostic_boxes is not None and args.class_agnostic_boxes != model.config.class_agnostic_boxes:
        flag = "--class-agnostic-boxes" if args.class_agnostic_boxes else "--no-class-agnostic-boxes"
        raise ValueError(f"{flag} cannot change the box head of a saved TEE ({args.tee})")
    return model.train()


def run(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        cfg, notes = preflight(args, PROG)
    except UsageError as e:
        return usage_error(PROG, e)
    # Heavy imports only once the flags are good: --help and flag errors come back at once.
    from pipelines.data.annotations import read_classes
    from pipelines.eval.tee import evaluate_tee
    from pipelines.train.detection_data import DetectionData, DetectionStream, collate, detection_loss, scan
    from pipelines.train.loop import Trainer, fit_and_report, init_distributed

    try:
        source = sources.SourceSpec(input=args.images, kind=args.input_format, image_root=args.image_root,
                                    path_template=args.image_path_template)
        sources.check(source)
        classes = tuple(read_classes(args.classes))
        if (args.attributes is None) != (args.attribute_classes is None):
            raise ValueError("--attributes and --attribute-classes go together")
        attributes = tuple(read_classes(args.attribute_classes)) if args.attribute_classes else ()
        data = DetectionData(source=source, annotations=args.annotations, classes=classes,
                             max_pixels=args.max_pixels, attributes=args.attributes, attribute_classes=attributes)
        report = scan(data)
        if report["images"] == 0:
            raise ValueError(f"no usable training images in {args.images}")
        val = None
        if args.val_annotations or args.val_images:
            if not (args.val_annotations and args.val_images):
                raise ValueError("--val-images and --val-annotations go together")
            val_source = sources.SourceSpec(input=args.val_images, kind=args.input_format,
                                            image_root=args.val_image_root, path_template=args.image_path_template)
            sources.check(val_source)
            val = DetectionData(source=val_source, annotations=args.val_annotations, classes=classes,
                                max_pixels=args.max_pixels)
        model = build_model(args, classes, attributes)
        dist = init_distributed(cfg.device if cfg.device != "auto" else "cpu")
        stream = DetectionStream(data, image_size=model.config.image_size, hflip=args.hflip,
                                 scale_jitter=args.scale_jitter, shuffle_buffer=args.shuffle_buffer,
                                 seed=cfg.seed, batch_size=cfg.batch_size, rank=dist.rank, world=dist.world)
    except (ValueError, FileNotFoundError, sources.SourceError) as e:
        return usage_error(PROG, e)
    print_notes(PROG, notes)
    if args.check_only:
        return EXIT_OK
    if dist.main:
        skipped = {k: v for k, v in report.items() if k.startswith("skipped_") and v}
        print(f"train_tee: {report['images']} training images ({report['negative_images']} without boxes), "
              f"{report['boxes']} boxes; annotation rows skipped: {report['skipped_rows']} {skipped or ''}; "
              f"{report['annotations_without_image']} annotated images not in the manifest", file=sys.stderr)
        if "attributes" in report:
            a = report["attributes"]
            print(f"train_tee: {a['attributes']} attributes on {a['boxes_with_attributes']} boxes; relationship rows "
                  f"not attributes {a['not_attributes']}, malformed {a['skipped_malformed']}, unknown labels "
                  f"{a['skipped_unknown']}, not matching a kept box {a['unmatched']}", file=sys.stderr)

    def evaluator(m):
        result = evaluate_tee(m, val, batch_size=cfg.batch_size, limit=args.val_limit)
        return {"map50": result["map50"], "val_images": result["images"]}

    trainer = Trainer(model, cfg, stream, collate, detection_loss,
                      save_model=lambda m, d: m.save_pretrained(d),
                      evaluate=evaluator if val is not None else None,
                      signature={"tee": model.config.to_dict(), "batch_size": cfg.batch_size,
                                 "grad_accum": cfg.grad_accum, "seed": cfg.seed},
                      run_info={"job": "train_tee", "tee": model.config.to_dict(), "data": report,
                                "argv": sys.argv[1:] if argv is None else list(argv)})
    return fit_and_report(trainer, "train_tee")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run())


if __name__ == "__main__":
    main()
