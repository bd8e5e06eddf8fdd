"""Judge NLVR2 statements with a fine-tuned student and score them (accuracy, consistency).

    python -m pipelines.evaluate_nlvr2 --checkpoint CKPT --data dev.json --features FEATS --output EVAL

--checkpoint is a pipelines.finetune_nlvr2 output (CKPT or CKPT/model); --data NLVR2 JSON
Lines; --features the extract_features output for its images, by the checkpoint's TEE.
EVAL/predictions.csv is `identifier,prediction` (True/False), the form NLVR2's own
evaluation script reads; with labels, EVAL/nlvr2_eval.json has the accuracy, the
consistency and the majority baseline. Statements naming an image without features are
counted, not judged; malformed lines are counted and skipped.
"""
from __future__ import annotations

import json
import logging
import sys

from pipelines.cli import EXIT_OK, CommandParser, UsageError, check_device, usage_error
from pipelines.cli.progress import Progress
from pipelines.data import storage

PROG = "evaluate_nlvr2"


def parser() -> CommandParser:
    ap = CommandParser(prog="python -m pipelines.evaluate_nlvr2", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="an NLVR2 student: pipelines.finetune_nlvr2's output")
    ap.add_argument("--data", required=True, help="NLVR2 JSON Lines (dev.json, test1.json)")
    ap.add_argument("--features", required=True, help="extract_features output (or a corpus) for the images")
    ap.add_argument("--output", required=True, help="folder for predictions.csv and nlvr2_eval.json")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--allow-extractor-mismatch", action="store_true",
                    help="judge even if the features came from another TEE than the student's")
    ap.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    return ap


def run(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        if args.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, not {args.batch_size}")
        check_device(args.device)
    except (UsageError, ValueError) as e:
        return usage_error(PROG, e)
    from pipelines.eval.tasks import load_task_checkpoint
    from pipelines.train.pair_finetune import read_statements

    try:
        statements, stats = read_statements(args.data, "--data", need_labels=False)
        model, tokenizer, files = load_task_checkpoint(args, "nlvr2", "an NLVR2 one (pipelines.finetune_nlvr2's output)")
    except Exception as e:  # noqa: BLE001 (one line for anything wrong with flags, data or models)
        return usage_error(PROG, e if isinstance(e, ValueError) else f"{type(e).__name__}: {e}")
    from pipelines.eval.nlvr2 import predict, score
    from pipelines.eval.tasks import region_source
    from pipelines.train.pair_data import StatementCollate, StatementStream

    c = model.config
    source = region_source(model, files, {i for s in statements for i in (s.left, s.right)})
    stream = StatementStream(statements, source, shuffle=False, seed=0, batch_size=args.batch_size)
    progress = Progress(PROG, total=len(statements), unit="statements", quiet=args.quiet)
    predictions = {}
    for identifier, truth in predict(model, stream, StatementCollate(tokenizer, c), batch_size=args.batch_size):
        predictions[identifier] = truth
        progress.add(1)
    progress.close()
    storage.write_text(storage.join(args.output, "predictions.csv"),
                       "".join(f"{i},{t}\n" for i, t in predictions.items()))
    out = {"checkpoint": args.checkpoint, "statements": len(statements), "judged": len(predictions), **stats,
           "skipped": dict(source.skipped)}
    if any(s.label is not None for s in statements):
        out.update(score(predictions, statements))
        storage.write_text(storage.join(args.output, "nlvr2_eval.json"), json.dumps(out, indent=2))
        if out["accuracy"] is not None:
            print(f"| NLVR2 accuracy | {out['accuracy']:.4f} |\n| consistency | {out['consistency']:.4f} |\n"
                  f"| majority baseline | {out['majority_baseline']:.4f} |\n"
                  f"| statements scored | {out['statements_scored']} |")
    print(f"{PROG}: {len(predictions)} of {len(statements)} statements judged "
          f"({len(statements) - len(predictions)} without features) -> {args.output}", file=sys.stderr)
    return EXIT_OK


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run())


if __name__ == "__main__":
    main()
