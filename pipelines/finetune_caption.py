"""Fine-tune a pre-trained MiniVLM student for captioning (OSCAR style, masked caption tokens).

    python -m pipelines.finetune_caption --init CKPT --train CORPUS --output CKPT2 --max-steps 20000
    python -m pipelines.finetune_caption --init CKPT --train captions_train.json --features FEATS \\
        --val captions_val.json --val-features FEATS_VAL --output CKPT2 --max-steps 20000
    scripts/train_student.sh 8 ...   (torchrun: give it `-m pipelines.finetune_caption` flags, see docs/student.md)

--init is a pipelines.train_student output (CKPT or CKPT/model). --train is a distilled
corpus (pseudo captions as targets; CORPUS/val is the validation split) or a COCO
captions JSON with --features, the pipelines.extract_features output for its images
(made by the same TEE as the student's). CKPT2/model is the captioning checkpoint for
pipelines.caption and pipelines.evaluate_captions; CKPT2/metrics.jsonl has step, loss,
caption_loss, caption_accuracy, lr, samples_per_s and validation rows.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import asdict, replace

from pipelines.cli import EXIT_OK, CommandParser, UsageError, usage_error
from pipelines.data import storage
from pipelines.train.flags import add_train_flags, check_kind, preflight, print_notes

PROG = "finetune_caption"
STUDENT = "a MiniVLM student (pipelines.train_student's output)"


def parse_args(argv):
    """The flags (UsageError for unknown or missing ones). Module-level imports stay light:
    --help imports no torch."""
    ap = CommandParser(prog="python -m pipelines.finetune_caption", description=__doc__.splitlines()[0])
    d = ap.add_argument_group("data")
    d.add_argument("--train", required=True, help="a build_corpus output, or a COCO captions JSON (with --features)")
    d.add_argument("--features", help="with a COCO --train: the extract_features output of its images")
    d.add_argument("--val", help="validation data, like --train (default for a corpus: its val/ split)")
    d.add_argument("--val-features", help="with a COCO --val: the extract_features output of its images")
    d.add_argument("--shuffle-buffer", type=int, default=1000, help="rows in the streaming shuffle buffer")
    d.add_argument("--val-batches", type=int, default=20, help="batches of the validation data per validation")
    d.add_argument("--allow-extractor-mismatch", action="store_true",
                   help="train even if the features came from another TEE than the student's")
    m = ap.add_argument_group("model")
    m.add_argument("--init", required=True, help="a pre-trained student: pipelines.train_student's output")
    m.add_argument("--tag-min-score", type=float, default=None,
                   help="TEE regions at least this confident give the tags (default: the TEE's score_thresh)")
    o = ap.add_argument_group("objective")
    o.add_argument("--mask-prob", type=float, default=0.15, help="of a caption's tokens, masked per step")
    o.add_argument("--max-masked", type=int, default=3, help="at most this many masked tokens per caption")
    add_train_flags(ap, lr=5e-5, batch_size=32, warmup_steps=500, weight_decay=0.01)
    return ap.parse_args(argv)


def data_files(data: str, features: str | None, what: str) -> tuple[list[str], dict | None, object]:
    """--train/--val -> (shard files, COCO references or None, the schema they must have)."""
    from pipelines.train.caption_data import read_coco_captions
    from pipelines.train.pretrain_data import check_corpus_finished, shard_files
    from schemas import CORPUS, FEATURES

    if data.endswith(".json"):
        if not features:
            raise ValueError(f"--{what} is a COCO captions JSON: give the features of its images with "
                             f"--{'features' if what == 'train' else 'val-features'}")
        table = storage.join(features, "features")
        files = shard_files(table if storage.exists(table) else features)
        if not files:
            raise ValueError(f"{features} holds no features Parquet: run pipelines.extract_features on the images")
        return files, read_coco_captions(data), FEATURES
    if features:
        raise ValueError(f"--{what} {data} is a corpus (it has its features); --features is for a COCO JSON")
    shards = storage.join(data, "shards" if what == "train" else "val")
    if storage.exists(shards):
        check_corpus_finished(data)
    files = shard_files(shards if storage.exists(shards) else data)
    if not files:
        raise ValueError(f"{data} holds no corpus shards: build it with pipelines.build_corpus")
    return files, None, CORPUS


def check_inputs(args) -> None:
    """Folders of another kind than each flag takes, named as what they are (a TEE as --init, a
    labeling run as --train), before anything reads them as what they are not."""
    check_kind("--init", args.init, STUDENT, ("a MiniVLM student", "a training run folder holding a MiniVLM student"))
    corpus = ("a corpus", "corpus shards")  # a corpus folder, or one of its shards/ and val/ folders
    features = ("a features",)  # an extract_features run, or its features/ table
    for flag, data, features_flag, feats in (("--train", args.train, "--features", args.features),
                                             ("--val", args.val, "--val-features", args.val_features)):
        if data and not data.endswith(".json"):
            check_kind(flag, data, "a corpus (pipelines.build_corpus's output) or a COCO captions JSON", corpus)
        if feats:
            check_kind(features_flag, feats, "extracted features (pipelines.extract_features's output)", features)


def run(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        cfg, notes = preflight(args, PROG)
    except UsageError as e:
        return usage_error(PROG, e)
    # Heavy imports only once the flags are good: --help and flag errors come back at once.
    from models.captioning import resolve_checkpoint
    from models.minivlm import MiniVLM, load_tokenizer
    from pipelines.train.caption_data import CaptionCollate, CaptionStream, MaskingConfig
    from pipelines.train.loop import Trainer, fit_and_report, init_distributed, validate
    from pipelines.train.pretrain_data import check_extractors, check_shards

    try:
        check_inputs(args)
        masking = MaskingConfig(mask_prob=args.mask_prob, max_masked=args.max_masked)
        train_files, train_refs, schema = data_files(args.train, args.features, "train")
        if args.val:
            val_files, val_refs, val_schema = data_files(args.val, args.val_features, "val")
        elif train_refs is None and storage.exists(storage.join(args.train, "val")):
            val_files, val_refs, val_schema = data_files(args.train, None, "val")
        else:
            val_files, val_refs, val_schema = [], None, schema
        check_shards(train_files, schema)
        check_shards(val_files, val_schema)
        init = resolve_checkpoint(args.init)
        model = MiniVLM.from_pretrained(init)
        tokenizer = load_tokenizer(init)
        if model.config.task not in ("pretraining", "captioning"):
            raise ValueError(f"--init {args.init} is a {model.config.task} MiniVLM checkpoint, not a pre-trained "
                             "one (pipelines.train_student's output) or a captioning one to go on with")
        if model.tee is None:
            raise ValueError(f"--init {args.init} has no TEE: captioning from images needs one")
        tag_min = args.tag_min_score if args.tag_min_score is not None else model.tee.config.score_thresh
        if not 0 <= tag_min <= 1:
            raise ValueError(f"--tag-min-score must be in [0, 1], not {tag_min}")
        model.config = replace(model.config, task="captioning", tag_min_score=tag_min)
        seen = check_extractors(train_files, model.config.extractor_id,
                                allow_mismatch=args.allow_extractor_mismatch, tee=f"--init {args.init}")
    except Exception as e:  # noqa: BLE001 (one line for anything wrong with flags, data or models)
        return usage_error(PROG, e if isinstance(e, ValueError) else f"{type(e).__name__}: {e}")
    print_notes(PROG, notes)
    if args.check_only:
        return EXIT_OK
    model.train()
    model.tee.requires_grad_(False)  # frozen: the data holds its features already
    model.contrastive.requires_grad_(False)  # unused by captioning; DDP must not wait for its gradients
    dist = init_distributed(cfg.device if cfg.device != "auto" else "cpu")
    c = model.config

    def stream(files, refs, seed, batch_size, shuffle_buffer, rank=0, world=1):
        return CaptionStream(files, references=refs, feature_dim=c.region_feature_dim, max_regions=c.max_regions,
                             tag_min_score=c.tag_min_score, shuffle_buffer=shuffle_buffer, seed=seed,
                             batch_size=batch_size, rank=rank, world=world)

    collate = CaptionCollate(tokenizer, c, masking)

    def loss_fn(net, batch):
        return net(batch)

    def evaluate(m):
        """Mean masked-caption loss and accuracy over at most --val-batches batches, the same each time."""
        val = stream(val_files, val_refs, cfg.seed, cfg.batch_size, 1)
        return validate(m, val, collate, max_batches=args.val_batches, seed=cfg.seed)

    def save(m, directory):
        m.save_pretrained(directory, tokenizer)

    signature = {"model": {k: v for k, v in c.to_dict().items() if k != "init"}, "masking": asdict(masking),
                 "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "seed": cfg.seed}
    trainer = Trainer(model, cfg, stream(train_files, train_refs, cfg.seed, cfg.batch_size, args.shuffle_buffer,
                                         dist.rank, dist.world),
                      collate, loss_fn, save_model=save, evaluate=evaluate if val_files else None,
                      signature=signature,
                      run_info={"job": "finetune_caption", "init": args.init, "train": args.train,
                                "features": args.features, "val": args.val, "model": c.to_dict(),
                                "masking": asdict(masking), "train_shards": len(train_files),
                                "val_shards": len(val_files), "extractors": dict(seen)})
    return fit_and_report(trainer, "finetune_caption")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run())


if __name__ == "__main__":
    main()
