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
from dataclasses import fields

from pipelines import images, sources
from pipelines.training import TrainConfig, Trainer, fit_and_report

EXIT_USAGE = 2


def add_train_flags(ap: argparse.ArgumentParser, **defaults) -> None:
    """The shared loop's flags (every trainer takes the same ones)."""
    g = ap.add_argument_group("training loop")
    g.add_argument("--output", required=True, help="run directory: checkpoints, model, metrics.jsonl (local or gs://)")
    g.add_argument("--max-steps", type=int, required=True)
    g.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    g.add_argument("--stop-at", type=int, default=0,
                   help="end this run after step N with a checkpoint, keeping the --max-steps schedule "
                        "(time-boxed or preemptible slots; continue with --resume)")
    g.add_argument("--batch-size", type=int, default=defaults.get("batch_size", 8), help="per process")
    g.add_argument("--lr", type=float, default=defaults.get("lr", 1e-3))
    g.add_argument("--weight-decay", type=float, default=defaults.get("weight_decay", 0.05))
    g.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"))
    g.add_argument("--warmup-steps", type=int, default=defaults.get("warmup_steps", 100))
    g.add_argument("--schedule", default="cosine", choices=("cosine", "constant"))
    g.add_argument("--grad-clip", type=float, default=10.0, help="max gradient norm (0: off)")
    g.add_argument("--grad-accum", type=int, default=1, help="batches per optimizer step")
    g.add_argument("--no-bf16", dest="bf16", action="store_false", help="no bf16 autocast on CUDA")
    g.add_argument("--log-every", type=int, default=10)
    g.add_argument("--checkpoint-every", type=int, default=500)
    g.add_argument("--eval-every", type=int, default=0, help="validation every N steps (0: at the end only)")
    g.add_argument("--keep-checkpoints", type=int, default=2)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--num-workers", type=int, default=2, help="data loading processes per training process")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda (torchrun: one GPU per process)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (metrics.jsonl still written)")


def train_config(args: argparse.Namespace) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    return TrainConfig(**values, progress=not args.no_progress)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m pipelines.train_tee", description=__doc__.splitlines()[0])
    d = ap.add_argument_group("data (Open Images formats; manifest and boxes sorted by image id)")
    d.add_argument("--images", required=True, help="image manifest: Open Images CSV, image_id,uri table, or a glob")
    d.add_argument("--input-format", default="auto", choices=sources.KINDS)
    d.add_argument("--image-root", default=None)
    d.add_argument("--image-path-template", default=sources.DEFAULT_TEMPLATE)
    d.add_argument("--annotations", required=True, help="box CSV: ImageID,Source,LabelName,Confidence,XMin,XMax,...")
    d.add_argument("--classes", required=True, help="class descriptions CSV: LabelName,DisplayName")
    d.add_argument("--val-images", default=None, help="held-out manifest for mAP@0.5")
    d.add_argument("--val-image-root", default=None)
    d.add_argument("--val-annotations", default=None)
    d.add_argument("--val-limit", type=int, default=None, help="evaluate on the first N held-out images")
    d.add_argument("--max-pixels", type=int, default=images.DEFAULT_MAX_PIXELS)
    d.add_argument("--shuffle-buffer", type=int, default=10_000, help="samples in the streaming shuffle buffer")
    m = ap.add_argument_group("model")
    m.add_argument("--tee", default="tee-d0",
                   help="a registered config to train from scratch (tee-d0; tee-tiny or 'tiny' for tests) "
                        "or a saved TEE directory to fine-tune")
    m.add_argument("--image-size", type=int, default=None, help="override the config's input size")
    m.add_argument("--pretrained-backbone", action="store_true",
                   help="start the backbone from timm's ImageNet weights (needs the model hub)")
    m.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=True)
    m.add_argument("--scale-jitter", type=float, default=0.6, help="smallest image scale inside the square (1: off)")
    add_train_flags(ap, lr=1e-3, batch_size=8)
    return ap.parse_args(argv)


def build_model(args, classes):
    from models.tee import TEE, build_tee, list_tees

    name = "tee-tiny" if args.tee == "tiny" else args.tee
    if name in list_tees():
        overrides = {"pretrained_backbone": args.pretrained_backbone}
        if args.image_size:
            overrides["image_size"] = args.image_size
        return build_tee(name, classes=classes, seed=args.seed, **overrides)
    if not os.path.isdir(args.tee) and "://" not in args.tee:
        raise ValueError(f"--tee {args.tee!r} is neither a registered config ({', '.join(list_tees())}) "
                         "nor a saved TEE directory")
    model = TEE.from_pretrained(args.tee)
    if tuple(model.config.classes) != tuple(classes):
        raise ValueError(f"--tee {args.tee} was trained on {model.config.num_classes} other classes than "
                         f"--classes ({len(classes)}); fine-tuning needs the same class list")
    if args.image_size and args.image_size != model.config.image_size:
        raise ValueError("--image-size cannot change the input size of a saved TEE")
    return model.train()


def run(argv: list[str] | None = None) -> int:
    from pipelines.boxes import read_classes
    from pipelines.detection_data import DetectionData, DetectionStream, collate, detection_loss, scan
    from pipelines.evaluate_tee import evaluate
    from pipelines.training import init_distributed

    args = parse_args(argv)
    try:
        cfg = train_config(args)
        source = sources.SourceSpec(input=args.images, kind=args.input_format, image_root=args.image_root,
                                    path_template=args.image_path_template)
        sources.check(source)
        classes = tuple(read_classes(args.classes))
        data = DetectionData(source=source, annotations=args.annotations, classes=classes,
                             max_pixels=args.max_pixels)
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
        model = build_model(args, classes)
        dist = init_distributed(cfg.device if cfg.device != "auto" else "cpu")
        stream = DetectionStream(data, image_size=model.config.image_size, hflip=args.hflip,
                                 scale_jitter=args.scale_jitter, shuffle_buffer=args.shuffle_buffer,
                                 seed=cfg.seed, batch_size=cfg.batch_size, rank=dist.rank, world=dist.world)
    except (ValueError, FileNotFoundError, sources.SourceError) as e:
        print(f"train_tee: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if dist.main:
        skipped = {k: v for k, v in report.items() if k.startswith("skipped_") and v}
        print(f"train_tee: {report['images']} training images ({report['negative_images']} without boxes), "
              f"{report['boxes']} boxes; annotation rows skipped: {report['skipped_rows']} {skipped or ''}; "
              f"{report['annotations_without_image']} annotated images not in the manifest", file=sys.stderr)

    def evaluator(m):
        result = evaluate(m, val, batch_size=cfg.batch_size, limit=args.val_limit)
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
