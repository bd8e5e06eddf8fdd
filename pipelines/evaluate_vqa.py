"""Answer VQA questions with a fine-tuned student and score them with the standard VQA accuracy.

    python -m pipelines.evaluate_vqa --checkpoint CKPT --questions v2_..._val2014_questions.json \\
        --annotations v2_..._val2014_annotations.json --features FEATS --output EVAL [--batch-size 64]

--checkpoint is a pipelines.finetune_vqa output (CKPT or CKPT/model); --features the
extract_features output (or a corpus) for the questions' images, by the checkpoint's TEE.
EVAL/vqa_results.json holds the answers in the official results format
([{"question_id", "answer"}]); with --annotations (or JSON Lines questions with answers)
EVAL/vqa_eval.json has the accuracy overall, per answer type and per question type, beside
the majority baseline (the vocabulary's most frequent answer for every question).
Questions about images without features are counted, not answered.
"""
from __future__ import annotations

import json
import logging
import sys

from pipelines.cli import EXIT_OK, CommandParser, UsageError, check_device, usage_error
from pipelines.cli.progress import Progress
from pipelines.data import storage

PROG = "evaluate_vqa"


def parser() -> CommandParser:
    ap = CommandParser(prog="python -m pipelines.evaluate_vqa", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="a VQA student: pipelines.finetune_vqa's output")
    ap.add_argument("--questions", required=True, help="VQA v2 questions JSON or JSON Lines")
    ap.add_argument("--annotations", help="VQA v2 annotations JSON of --questions (scores the answers)")
    ap.add_argument("--features", required=True, help="extract_features output (or a corpus) for the images")
    ap.add_argument("--output", required=True, help="folder for vqa_results.json and vqa_eval.json")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--allow-extractor-mismatch", action="store_true",
                    help="answer even if the features came from another TEE than the student's")
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
    from pipelines.eval.vqa import answer, score
    from pipelines.train.vqa_data import VQACollate, VQAStream, by_image, read_questions

    try:
        questions, stats = read_questions(args.questions, args.annotations, "--questions", need_answers=False)
        model, tokenizer, files = load_task_checkpoint(args, "vqa", "a VQA one (pipelines.finetune_vqa's output)")
    except Exception as e:  # noqa: BLE001 (one line for anything wrong with flags, data or models)
        return usage_error(PROG, e if isinstance(e, ValueError) else f"{type(e).__name__}: {e}")
    c = model.config
    stream = VQAStream(files, questions=by_image(questions), answers=None, feature_dim=c.region_feature_dim,
                       max_regions=c.max_regions, tag_min_score=c.tag_min_score, shuffle=False, seed=0,
                       batch_size=args.batch_size)
    progress = Progress(PROG, total=len(questions), unit="questions", quiet=args.quiet)
    predictions = {}
    for qid, ans in answer(model, stream, VQACollate(tokenizer, c), batch_size=args.batch_size):
        predictions[qid] = ans
        progress.add(1)
    progress.close()
    results = [{"question_id": int(q) if q.isdigit() else q, "answer": a} for q, a in predictions.items()]
    storage.write_text(storage.join(args.output, "vqa_results.json"), json.dumps(results))
    out = {"checkpoint": args.checkpoint, "questions": len(questions), "answered": len(predictions),
           "malformed_records": stats.malformed, "skipped": dict(stream.skipped)}
    if any(q.answers for q in questions):
        out.update(score(predictions, questions, majority=c.answers[0]))
        storage.write_text(storage.join(args.output, "vqa_eval.json"), json.dumps(out, indent=2))
        print(f"| VQA accuracy | {out['accuracy']:.4f} |\n| majority baseline ({out['majority_answer']!r}) | "
              f"{out['majority_baseline']:.4f} |\n| questions scored | {out['questions_scored']} |")
        for kind, v in out["per_answer_type"].items():
            print(f"| {kind} | {v['accuracy']:.4f} ({v['questions']}) |")
    print(f"{PROG}: {len(predictions)} of {len(questions)} questions answered "
          f"({len(questions) - len(predictions)} without features) -> {args.output}", file=sys.stderr)
    return EXIT_OK


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run())


if __name__ == "__main__":
    main()
