"""Fine-tune a pre-trained MiniVLM student for NLVR2: is a statement about two images true?

    python -m pipelines.finetune_nlvr2 --init CKPT --train train.json --features FEATS \\
        [--val dev.json] --output CKPT2 --max-steps 20000

--train is NLVR2's JSON Lines (`identifier`, `sentence`, `label`; the two images are the
files `<identifier without its last -N>-img0/-img1`, or `img0`/`img1` where the rows name
them, as in LXMERT's preprocessed files); --features the extract_features output for those
image files (made by the student's TEE). OSCAR's head: each image is encoded with the
statement ([CLS] statement [SEP] tags [SEP] regions), the two [CLS] states concatenated
into a 2-way classifier. Rows naming an image without features are counted and skipped.
CKPT2/model is the checkpoint for pipelines.evaluate_nlvr2; CKPT2/metrics.jsonl has
nlvr2_loss and nlvr2_accuracy.
"""
from __future__ import annotations

import logging
import sys

from pipelines.cli import CommandParser, UsageError, usage_error
from pipelines.train.flags import preflight
from pipelines.train.pair_finetune import PairTask, add_task_flags, finetune_pairs, read_statements

PROG = "finetune_nlvr2"


def parse_args(argv):
    ap = CommandParser(prog="python -m pipelines.finetune_nlvr2", description=__doc__.splitlines()[0])
    d = ap.add_argument_group("data")
    d.add_argument("--train", required=True, help="NLVR2 JSON Lines (train.json)")
    d.add_argument("--val", help="validation statements, like --train (dev.json)")
    add_task_flags(ap, d, lr=5e-5, batch_size=32, warmup_steps=500, weight_decay=0.01)
    return ap.parse_args(argv)


def run(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        cfg, notes = preflight(args, PROG)
        train, stats = read_statements(args.train, "--train", need_labels=True)
        val = read_statements(args.val, "--val", need_labels=True)[0] if args.val else []
    except (UsageError, ValueError) as e:
        return usage_error(PROG, e)
    from pipelines.train.pair_data import StatementCollate, StatementStream  # torch: after the checks

    spec = PairTask(PROG, "nlvr2", images_of=lambda s: (s.left, s.right), stream=StatementStream,
                    collate=StatementCollate)
    return finetune_pairs(args, cfg, notes, spec, train, val, stats)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run())


if __name__ == "__main__":
    main()
