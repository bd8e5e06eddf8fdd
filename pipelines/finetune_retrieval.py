"""Fine-tune a pre-trained MiniVLM student for image-text retrieval (OSCAR style, with a cheap first stage).

    python -m pipelines.finetune_retrieval --init CKPT --train dataset_coco.json [--train-split train,restval] \\
        --features FEATS [--val dataset_coco.json --val-split val] --output CKPT2 --max-steps 20000

--train is a Karpathy-split JSON (dataset_coco.json, dataset_flickr30k.json) or JSON Lines
of its image records; an image's id is its file name's stem, as extract_features names
images read from files, so --features is the extract_features output for those files
(made by the student's TEE). Each caption of the chosen splits is one sample; a batch of B
(image, caption) pairs trains both heads (models/heads.py): a 2-way matching head on [CLS]
(image and caption seen together; started from pre-training's contrastive head) on the B
positives and, per image and per caption, the batch's hardest negative by embedding
similarity; and the first-stage embeddings (image alone, caption alone) with a symmetric
InfoNCE over the batch. CKPT2/model is the checkpoint for pipelines.evaluate_retrieval;
CKPT2/metrics.jsonl has matching_loss/accuracy and embedding_loss/accuracy (in-batch R@1).
"""
from __future__ import annotations

import logging
import sys

from pipelines.cli import CommandParser, UsageError, usage_error
from pipelines.train.flags import preflight
from pipelines.train.pair_finetune import PairTask, add_task_flags, finetune_pairs, read_caption_pairs

PROG = "finetune_retrieval"


def parse_args(argv):
    ap = CommandParser(prog="python -m pipelines.finetune_retrieval", description=__doc__.splitlines()[0])
    d = ap.add_argument_group("data")
    d.add_argument("--train", required=True, help="Karpathy-split JSON (or JSON Lines of its image records)")
    d.add_argument("--train-split", default="train,restval", help="the splits of --train to train on")
    d.add_argument("--val", help="validation images and captions, like --train")
    d.add_argument("--val-split", default="val", help="the splits of --val to validate on")
    add_task_flags(ap, d, lr=5e-5, batch_size=32, warmup_steps=500, weight_decay=0.01)
    return ap.parse_args(argv)


def run(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        cfg, notes = preflight(args, PROG)
        train, stats = read_caption_pairs(args.train, args.train_split, "--train")
        val = read_caption_pairs(args.val, args.val_split, "--val")[0] if args.val else []
    except (UsageError, ValueError) as e:
        return usage_error(PROG, e)
    from pipelines.train.pair_data import RetrievalCollate, RetrievalStream  # torch: after the checks

    spec = PairTask(PROG, "retrieval", images_of=lambda item: (item[0],), stream=RetrievalStream,
                    collate=RetrievalCollate)
    return finetune_pairs(args, cfg, notes, spec, train, val, {**stats, "pairs": len(train)})


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run())


if __name__ == "__main__":
    main()
