"""What the task fine-tunes share. finetune_retrieval and finetune_nlvr2: a pre-trained student,
items that pair text with images, the features of those images -> a fine-tuned run through the
shared loop; finetune_vqa: loading the student with its fresh head, and what it freezes.

Each command reads its own files into items and says which images an item needs; the
rest (the checks before any work, the fresh heads, the feature store, streams, the
trainer, its signature for exact resume) is one path here.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Callable

from pipelines.cli import EXIT_OK, usage_error
from pipelines.train.flags import add_train_flags, check_kind, check_task, print_notes

STUDENT = "a MiniVLM student (pipelines.train_student's output)"


@dataclass(frozen=True)
class PairTask:
    prog: str
    task: str  # the checkpoint's task: retrieval | nlvr2
    images_of: Callable  # item -> the image ids it needs
    stream: type  # a pair_data.PairStream
    collate: type


def add_task_flags(ap: argparse.ArgumentParser, d, **train_defaults) -> None:
    """Every task fine-tune's flags beside its own data flags (`d`, its "data" group): the features,
    validation, the pre-trained student, the tag threshold and the training loop."""
    d.add_argument("--features", required=True, help="extract_features output (or a corpus) for --train's images")
    d.add_argument("--val-features", help="features of --val's images (default: --features)")
    d.add_argument("--val-batches", type=int, default=20, help="batches of the validation data per validation")
    d.add_argument("--allow-extractor-mismatch", action="store_true",
                   help="train even if the features came from another TEE than the student's")
    m = ap.add_argument_group("model")
    m.add_argument("--init", required=True, help="a pre-trained student: pipelines.train_student's output")
    m.add_argument("--tag-min-score", type=float, default=None,
                   help="TEE regions at least this confident give the tags (default: the TEE's score_thresh)")
    add_train_flags(ap, **train_defaults)


def pretrained_student(args, seed: int, start: Callable) -> tuple:
    """args.init (a pre-trained student) -> (model, tokenizer) with `start(model, tag_min_score)`
    run under `seed` (fresh heads: the same seed, the same run). ValueError / UsageError (one
    line) for a checkpoint of another task or a tag threshold outside [0, 1]."""
    import torch

    from models.captioning import resolve_checkpoint
    from models.minivlm import MiniVLM, load_tokenizer

    check_kind("--init", args.init, STUDENT, ("a MiniVLM student", "a training run folder holding a MiniVLM"))
    init = resolve_checkpoint(args.init)
    model = MiniVLM.from_pretrained(init)
    check_task(model, "--init", args.init, "pretraining", "a pre-trained one (pipelines.train_student's output)")
    tokenizer = load_tokenizer(init)
    tag_min = args.tag_min_score if args.tag_min_score is not None else (
        model.tee.config.score_thresh if model.tee is not None else model.config.tag_min_score)
    if not 0 <= tag_min <= 1:
        raise ValueError(f"--tag-min-score must be in [0, 1], not {tag_min}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        start(model, tag_min)
    return model, tokenizer


def freeze_unused(model) -> None:
    """Train mode, with what a task fine-tune does not use frozen: the TEE (the data holds its
    features already), the contrastive and masked-token heads (DDP must not wait for their gradients)."""
    model.train()
    if model.tee is not None:
        model.tee.requires_grad_(False)
    model.contrastive.requires_grad_(False)
    model.mlm.requires_grad_(False)


def finetune_pairs(args, cfg, notes: list[str], spec: PairTask, train_items: list, val_items: list,
                   data: dict) -> int:
    """Checks (exit 2 with one line), then training; `data` describes the items for run info."""
    from pipelines.train.featurestore import FeatureStore, feature_files, image_ids
    from pipelines.train.pair_data import RegionSource
    from pipelines.train.pretrain_data import check_extractors

    prog = spec.prog
    try:
        model, tokenizer = pretrained_student(args, cfg.seed, lambda m, tag_min: m.start_task(spec.task, tag_min))
        train_files = feature_files(args.features, "--features")
        val_files = feature_files(args.val_features or args.features, "--val-features") if val_items else []
        seen = check_extractors(train_files, model.config.extractor_id,
                                allow_mismatch=args.allow_extractor_mismatch, tee=f"--init {args.init}")
        have = image_ids(train_files)
        without = sum(1 for item in train_items if not all(i in have for i in spec.images_of(item)))
        if without == len(train_items):
            raise ValueError(f"none of the {len(train_items)} --train items has its images in --features")
    except Exception as e:  # noqa: BLE001 (one line for anything wrong with flags, data or models)
        return usage_error(prog, e if isinstance(e, ValueError) else f"{type(e).__name__}: {e}")
    print_notes(prog, notes)
    if args.check_only:
        return EXIT_OK
    if os.environ.get("RANK", "0") == "0":
        print(f"{prog}: {len(train_items)} training items ({without} without features for their images)",
              file=sys.stderr)
    from pipelines.train.loop import Trainer, fit_and_report, init_distributed, validate

    freeze_unused(model)
    dist = init_distributed(cfg.device if cfg.device != "auto" else "cpu")
    c = model.config

    def wanted(items) -> set[str]:
        return {i for item in items for i in spec.images_of(item)}

    def source(store):
        return RegionSource(store, feature_dim=c.region_feature_dim, max_regions=c.max_regions,
                            tag_min_score=c.tag_min_score)

    # Validation from the same features (no --val-features): one store, one pass over the files.
    shared = bool(val_items) and val_files == train_files
    train_store = FeatureStore(train_files, wanted(train_items) | (wanted(val_items) if shared else set()))
    collate = spec.collate(tokenizer, c)
    train = spec.stream(train_items, source(train_store), seed=cfg.seed, batch_size=cfg.batch_size,
                        rank=dist.rank, world=dist.world)
    evaluate = None
    if val_items:
        val_store = train_store if shared else FeatureStore(val_files, wanted(val_items))
        val = spec.stream(val_items, source(val_store), shuffle=False, seed=cfg.seed, batch_size=cfg.batch_size)

        def evaluate(m):
            return validate(m, val, collate, max_batches=args.val_batches, seed=cfg.seed)

    signature = {"model": {k: v for k, v in c.to_dict().items() if k != "init"}, "batch_size": cfg.batch_size,
                 "grad_accum": cfg.grad_accum, "seed": cfg.seed}
    trainer = Trainer(model, cfg, train, collate, lambda net, batch: net(batch),
                      save_model=lambda m, d: m.save_pretrained(d, tokenizer), evaluate=evaluate, signature=signature,
                      run_info={"job": prog, "init": args.init, "train": args.train, "features": args.features,
                                "val": args.val, "model": c.to_dict(),
                                "data": {**data, "items_without_features": without}, "extractors": dict(seen)})
    return fit_and_report(trainer, prog)


# ---- reading, for the commands ------------------------------------------------------------

def read_caption_pairs(path: str, splits: str, flag: str) -> tuple[list[tuple[str, str]], dict]:
    """(image_id, caption) for every caption of the chosen splits of a Karpathy-split file, and its stats."""
    from pipelines.data.retrieval import parse_splits, read_karpathy

    images, stats = read_karpathy(path, parse_splits(splits))
    if not images:
        raise ValueError(f"{flag} {path} has no image with a caption in split(s) {splits} "
                         f"({stats.malformed} malformed records, {stats.other_splits} in other splits)")
    return [(im.image_id, caption) for im in images for caption in im.captions], stats.to_dict()


def read_statements(path: str, flag: str, *, need_labels: bool):
    """NLVR2 statements (only labelled ones when need_labels) and the reader's stats; ValueError when none."""
    from pipelines.data.nlvr2 import read_nlvr2

    statements, stats = read_nlvr2(path)
    if need_labels:
        statements = [s for s in statements if s.label is not None]
    if not statements:
        raise ValueError(f"{flag} {path} holds no usable{' labelled' if need_labels else ''} statement "
                         f"({stats.malformed} malformed)")
    return statements, stats.to_dict()
