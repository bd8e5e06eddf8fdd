"""Does the TEE learn? Train it from scratch on synthetic scenes and score held-out ones.

    python -m benchmarks.tee_learning [--split test|validation] [--seed N] [--max-steps 1200] [--json PATH]

Writes synthetic train/validation sets (shapes of four classes and eight colours on
textured backgrounds, exact boxes, ~10% empty scenes) in Open Images formats, runs the
real `pipelines.train_tee` on them (streaming data, augmentation, checkpoints), and
reports mAP@0.5 on held-out scenes for the trained TEE next to the same architecture
untrained. Two held-out splits are written, each its own scenes: validation, where anything
is chosen, and test (the default --split), which the tables report. Reduced configuration, because this runs on a laptop-class CPU
with no ImageNet weights: tee-tiny (timm tinynet_e backbone, BiFPN 32 x 1) at 128 px.
Target on 2 CPU cores: mAP@0.5 >= 0.5 within 15 minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

from benchmarks.caption_learning import add_split_flags, write_held_out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.tee_learning", description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=None, help="where data and the run go (default: a temporary directory)")
    ap.add_argument("--train-images", type=int, default=2000)
    add_split_flags(ap)
    ap.add_argument("--scene-size", type=int, default=160, help="pixels of the generated images")
    ap.add_argument("--tee", default="tee-tiny")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--max-steps", type=int, default=1200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--num-workers", type=int, default=1)
    ap.add_argument("--class-agnostic-boxes", action=argparse.BooleanOptionalAction, default=None,
                    help="one box refinement per region for all classes, or (--no-...) one per class "
                         "(unset: the config's)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from benchmarks.synthetic_scenes import write_dataset
    from models.tee import TEE, build_tee
    from pipelines.data import sources
    from pipelines.data.annotations import read_classes
    from pipelines.eval.tee import evaluate_tee
    from pipelines.train.detection_data import DetectionData
    from pipelines.train_tee import run as train

    work = args.work or tempfile.mkdtemp(prefix="tee_learning_")
    t0 = time.monotonic()
    tr = write_dataset(work, args.train_images, seed=args.seed + 1, size=args.scene_size, subset="train",
                       prefix="train-")
    va = write_held_out(work, args.val_images, seed=args.seed + 2, size=args.scene_size)[args.split]
    data_s = time.monotonic() - t0
    classes = tuple(read_classes(tr["classes_csv"]))
    val = DetectionData(source=sources.SourceSpec(input=va["images_csv"]), annotations=va["boxes_csv"],
                        classes=classes)

    boxes = {} if args.class_agnostic_boxes is None else {"class_agnostic_boxes": args.class_agnostic_boxes}
    untrained = build_tee(args.tee, classes=classes, seed=args.seed, image_size=args.image_size, **boxes)
    before = evaluate_tee(untrained, val, batch_size=args.batch_size)

    run_dir = os.path.join(work, "run")
    t1 = time.monotonic()
    rc = train(["--images", tr["images_csv"], "--annotations", tr["boxes_csv"], "--classes", tr["classes_csv"],
                "--tee", args.tee, "--image-size", str(args.image_size), "--output", run_dir,
                "--max-steps", str(args.max_steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
                "--warmup-steps", str(min(100, args.max_steps // 10)), "--log-every", "50",
                "--checkpoint-every", str(max(1, args.max_steps // 2)), "--num-workers", str(args.num_workers),
                "--seed", str(args.seed), "--no-progress",
                *([] if args.class_agnostic_boxes is None else
                  ["--class-agnostic-boxes" if args.class_agnostic_boxes else "--no-class-agnostic-boxes"])])
    train_s = time.monotonic() - t1
    if rc != 0:
        print(f"tee_learning: training failed (exit {rc})", file=sys.stderr)
        return rc
    trained = TEE.from_pretrained(os.path.join(run_dir, "model"))
    after = evaluate_tee(trained, val, batch_size=args.batch_size)

    cfg = trained.config
    result = {
        "split": args.split, "seed": args.seed,
        "untrained_map50": before["map50"], "trained_map50": after["map50"],
        "train_seconds": round(train_s, 1), "data_seconds": round(data_s, 1),
        "total_seconds": round(time.monotonic() - t0, 1),
        "steps": args.max_steps, "batch_size": args.batch_size, "lr": args.lr,
        "train_images": args.train_images, "val_images": after["images"], "threads": torch.get_num_threads(),
        "config": {"tee": cfg.name, "backbone": cfg.backbone, "image_size": cfg.image_size,
                   "class_agnostic_boxes": cfg.class_agnostic_boxes,
                   "fpn": f"{cfg.fpn_channels} x {cfg.fpn_repeats}", "feature_dim": cfg.feature_dim,
                   "classes": [c[1] for c in classes],
                   "parameters": sum(p.numel() for p in trained.parameters())},
        "per_class_ap": {k: v["ap"] for k, v in after["per_class"].items()},
        "run_dir": run_dir,
    }
    print(f"\n| TEE | mAP@0.5 ({args.split} split, seed {args.seed}) | training |")
    print("|---|---:|---|")
    print(f"| untrained ({cfg.name}, random init) | {before['map50']:.3f} | - |")
    print(f"| trained | {after['map50']:.3f} | {args.max_steps} steps x {args.batch_size} images, "
          f"{train_s / 60:.1f} min on {torch.get_num_threads()} threads |")
    print(f"\nconfig: {cfg.backbone} + BiFPN {cfg.fpn_channels}x{cfg.fpn_repeats} at {cfg.image_size} px, "
          f"{'class-agnostic' if cfg.class_agnostic_boxes else 'class-specific'} boxes, "
          f"{result['config']['parameters'] / 1e6:.2f} M parameters, classes {', '.join(c[1] for c in classes)}; "
          f"{args.train_images} train / {after['images']} {args.split} scenes of {args.scene_size} px")
    print("per-class AP: " + ", ".join(f"{k} {v:.3f}" for k, v in result["per_class_ap"].items() if v is not None))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
