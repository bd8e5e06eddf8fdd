"""Pre-train the MiniVLM student (TEE + MiniLM fusion) on a distilled corpus, OSCAR style.

    python -m pipelines.train_student --corpus CORPUS --tee RUN/model --init microsoft/MiniLM-L12-H384-uncased \
        --output CKPT --max-steps 100000 [--resume]
    scripts/train_student.sh 8 --corpus gs://B/corpus ...     (torchrun, one process per GPU)

CKPT/model is the student: config.json + model.safetensors (fusion and TEE) + tokenizer
files, loadable with MiniVLM.from_pretrained. CKPT/metrics.jsonl has step, loss,
mlm_loss, contrastive_loss, mlm_accuracy, contrastive_accuracy, lr, samples_per_s, and
validation rows ("split": "val") on the corpus' held-out split.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import asdict

from pipelines.cli import EXIT_OK, CommandParser, UsageError, usage_error
from pipelines.data import storage
from pipelines.train.flags import add_train_flags, check_kind, preflight, print_notes

PROG = "train_student"
DEFAULT_INIT = "microsoft/MiniLM-L12-H384-uncased"


def parse_args(argv):
    """The flags (UsageError for unknown or missing ones). Module-level imports stay light:
    --help imports no torch."""
    ap = CommandParser(prog="python -m pipelines.train_student", description=__doc__.splitlines()[0])
    d = ap.add_argument_group("data")
    d.add_argument("--corpus", required=True, help="a build_corpus output (local or gs://): shards/ and val/")
    d.add_argument("--shuffle-buffer", type=int, default=1000, help="rows in the streaming shuffle buffer")
    d.add_argument("--val-batches", type=int, default=20, help="batches of the held-out split per validation")
    d.add_argument("--allow-extractor-mismatch", action="store_true",
                   help="train even if corpus features came from another TEE than --tee (they will not match "
                        "what the student sees at inference)")
    m = ap.add_argument_group("model")
    m.add_argument("--tee", required=True, help="the TEE that made the corpus features: a saved TEE dir or 'tiny'")
    m.add_argument("--init", default=DEFAULT_INIT,
                   help="fusion start: hub id, local BERT-architecture dir, or random weights of a registered "
                        "shape: 'tiny' (tests), 'tiny:<name>' (e.g. tiny:minivlm-l12-h384; 'random' is that one)")
    m.add_argument("--fusion", default=None, metavar="LAYERSxHIDDEN[xHEADS]",
                   help="with a random --init: the fusion's shape, e.g. 4x256 (heads default to hidden/64; FFN 4x)")
    m.add_argument("--embedding-rank", type=int, default=None, metavar="R",
                   help="factorise the fusion's word embedding: a (vocab, R) table and an R -> hidden projection, "
                        "the masked-token decoder tied to both; from a checkpoint, its embedding's truncated SVD "
                        "(default: the full vocab x hidden embedding)")
    m.add_argument("--max-caption-tokens", type=int, default=35)
    m.add_argument("--max-tag-tokens", type=int, default=15)
    m.add_argument("--max-regions", type=int, default=50)
    o = ap.add_argument_group("objectives")
    o.add_argument("--mask-prob", type=float, default=0.15)
    o.add_argument("--polluted-caption", type=float, default=0.25)
    o.add_argument("--polluted-tags", type=float, default=0.25)
    add_train_flags(ap, lr=1e-4, batch_size=32, warmup_steps=1000, weight_decay=0.01)
    return ap.parse_args(argv)


def fusion_shape(spec: str | None, init: str) -> dict:
    """--fusion 4x256[x4] -> MiniVLMConfig overrides (random init only: a checkpoint brings its own shape)."""
    if spec is None:
        return {}
    from models.minivlm import tiny_name

    if tiny_name(init) is None:
        raise ValueError(f"--fusion sets the shape of a random fusion; --init {init} brings its own")
    try:
        parts = [int(p) for p in spec.lower().split("x")]
        layers, hidden = parts[:2]
        heads = parts[2] if len(parts) == 3 else max(1, hidden // 64)
        if len(parts) not in (2, 3) or min(layers, hidden, heads) < 1:
            raise ValueError
    except ValueError:
        raise ValueError(f"--fusion wants LAYERSxHIDDEN or LAYERSxHIDDENxHEADS, e.g. 4x256, not {spec!r}") from None
    return {"num_layers": layers, "hidden_size": hidden, "num_heads": heads, "intermediate_size": 4 * hidden}


def check_embedding_rank(rank: int | None, hidden: int | None = None) -> None:
    """--embedding-rank R: 1 <= R < the fusion's hidden size (UsageError otherwise; `hidden` once known)."""
    if rank is None:
        return
    if rank < 1:
        raise UsageError(f"--embedding-rank must be at least 1, not {rank}")
    if hidden is not None and rank >= hidden:
        raise UsageError(f"--embedding-rank {rank} must be below the fusion's hidden size {hidden} "
                         "(a factorised embedding of that rank is no smaller than the full one)")


def fusion_hidden_size(init: str, shape: dict) -> int | None:
    """The hidden size of a random fusion (known before building it); None for a checkpoint."""
    from models.minivlm import MiniVLMConfig, registered_shape, tiny_name

    name = tiny_name(init)
    if name is None:
        return None
    return shape.get("hidden_size", registered_shape(name).get("hidden_size", MiniVLMConfig.hidden_size))


def check_inputs(args) -> None:
    """Folders of another kind than each flag takes, named as what they are (a labeling run as
    --corpus, a TEE as --init), before anything reads them as what they are not."""
    check_kind("--corpus", args.corpus, "a corpus (pipelines.build_corpus's output)", ("a corpus",))
    check_kind("--init", args.init, "a BERT-architecture checkpoint", ("a Hugging Face model", "a model directory"))


def load_tee_flag(ref: str):
    """--tee -> (TEE, provenance); a student or a run folder given as --tee is one line."""
    from models.tee import NotATEE, load_tee

    try:
        return load_tee(ref)
    except NotATEE as e:
        raise UsageError(f"--tee {e}") from e


def run(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        check_embedding_rank(args.embedding_rank)
        cfg, notes = preflight(args, PROG)
    except UsageError as e:
        return usage_error(PROG, e)
    # Heavy imports only once the flags are good: --help and flag errors come back at once.
    from models.minivlm import build_student
    from pipelines.train.loop import Trainer, fit_and_report, init_distributed, validate
    from pipelines.train.pretrain_data import (
        CorpusStream,
        ObjectiveConfig,
        PretrainCollate,
        check_corpus_finished,
        check_extractors,
        check_shards,
        shard_files,
    )

    try:
        objective = ObjectiveConfig(mask_prob=args.mask_prob, polluted_caption=args.polluted_caption,
                                    polluted_tags=args.polluted_tags)
        check_inputs(args)
        check_corpus_finished(args.corpus)
        train_files = shard_files(storage.join(args.corpus, "shards"))
        if not train_files:
            raise ValueError(f"{args.corpus}/shards holds no Parquet shards: build it with pipelines.build_corpus")
        val_dir = storage.join(args.corpus, "val")
        val_files = shard_files(val_dir) if storage.exists(val_dir) else []
        check_shards(train_files + val_files)
        tee, tee_source = load_tee_flag(args.tee)
        tee.requires_grad_(False)  # frozen: the corpus holds its features already
        shape = fusion_shape(args.fusion, args.init)
        check_embedding_rank(args.embedding_rank, fusion_hidden_size(args.init, shape))
        rank = {} if args.embedding_rank is None else {"embedding_rank": args.embedding_rank}
        try:
            model, tokenizer = build_student(args.init, tee, seed=args.seed, max_caption_tokens=args.max_caption_tokens,
                                             max_tag_tokens=args.max_tag_tokens, max_regions=args.max_regions,
                                             **shape, **rank)
        except ValueError as e:
            if rank and "embedding_rank" in str(e):  # a checkpoint's hidden size below the rank
                raise UsageError(f"--embedding-rank {args.embedding_rank}: {e}") from None
            raise
        check_embedding_rank(args.embedding_rank, model.config.hidden_size)  # a checkpoint's, now known
        seen = check_extractors(train_files, model.config.extractor_id,
                                allow_mismatch=args.allow_extractor_mismatch, tee=f"--tee {args.tee}")
    except Exception as e:  # noqa: BLE001 (one line for anything wrong with flags, corpus or models)
        return usage_error(PROG, e if isinstance(e, ValueError) else f"{type(e).__name__}: {e}")
    if model.embedding_init is not None:
        e = model.embedding_init
        notes = [*notes, f"word embedding factorised at rank {e['embedding_rank']}: {e['init']}"
                 + (f", relative reconstruction error {e['relative_error']:.4f}" if "relative_error" in e else "")]
    print_notes(PROG, notes)
    if args.check_only:
        return EXIT_OK
    dist = init_distributed(cfg.device if cfg.device != "auto" else "cpu")
    c = model.config
    stream = CorpusStream(train_files, feature_dim=c.region_feature_dim, max_regions=c.max_regions,
                          shuffle_buffer=args.shuffle_buffer, seed=cfg.seed, batch_size=cfg.batch_size,
                          rank=dist.rank, world=dist.world)
    collate = PretrainCollate(tokenizer, c, objective)

    def loss_fn(net, batch):
        return net(batch)

    def evaluate(m):
        """Mean losses over at most --val-batches batches of the held-out split, the same each time."""
        val = CorpusStream(val_files, feature_dim=c.region_feature_dim, max_regions=c.max_regions,
                           shuffle_buffer=1, seed=cfg.seed, batch_size=cfg.batch_size)
        metrics = validate(m, val, collate, max_batches=args.val_batches, seed=cfg.seed)
        if metrics:
            metrics["val_loss"] = metrics["val_mlm_loss"] + metrics["val_contrastive_loss"]
        return metrics

    def save(m, directory):
        m.save_pretrained(directory, tokenizer)

    signature = {"model": {k: v for k, v in c.to_dict().items() if k != "init"}, "objective": asdict(objective),
                 "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "seed": cfg.seed}
    trainer = Trainer(model, cfg, stream, collate, loss_fn, save_model=save,
                      evaluate=evaluate if val_files else None, signature=signature,
                      run_info={"job": "train_student", "corpus": args.corpus, "tee": tee_source,
                                "init": args.init, "model": c.to_dict(), "embedding_init": model.embedding_init,
                                "objective": asdict(objective),
                                "train_shards": len(train_files), "val_shards": len(val_files),
                                "corpus_extractors": dict(seen)})
    return fit_and_report(trainer, "train_student")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run())


if __name__ == "__main__":
    main()
