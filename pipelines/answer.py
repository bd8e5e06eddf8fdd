"""Answer questions about images with a VQA student: no teacher, just the TEE and the fusion model.

    python -m pipelines.answer --checkpoint CKPT2 --question "what color is the square?" photos/*.jpg
    python -m pipelines.answer --checkpoint CKPT2 --questions questions.jsonl [--json]

Either one --question asked of every image given (files, globs, folders; local, gs://,
s3://), or --questions, JSON Lines of {"image": PATH, "question": TEXT}. One line per
question on stdout, in input order: `path<TAB>question<TAB>answer` (with --json: path,
question, answer, score, tags). An image that cannot be read, or a line of --questions that
is not such a record, gets one line on stderr; the rest are answered and the exit code is 1.
Bad flags, a device this machine lacks, or a checkpoint that is not a VQA student: one line,
exit 2, before any image is read.
"""
from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from pipelines.cli import EXIT_FAILED, EXIT_OK, CommandParser, UsageError, check_device, usage_error

PROG = "answer"


def parser() -> CommandParser:
    ap = CommandParser(prog="python -m pipelines.answer", description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="*", help="with --question: image files, globs (quote them) or folders")
    ap.add_argument("--checkpoint", required=True, help="a pipelines.finetune_vqa output (CKPT2 or CKPT2/model)")
    ask = ap.add_mutually_exclusive_group(required=True)
    ask.add_argument("--question", help="one question asked of every image")
    ask.add_argument("--questions", help='JSON Lines: {"image": PATH, "question": TEXT} per line')
    ap.add_argument("--json", action="store_true", help="JSON lines on stdout: path, question, answer, score, tags")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: CUDA if present)")
    ap.add_argument("--io-threads", type=int, default=8, help="images read and decoded in parallel")
    return ap


def parse_args(argv):
    args = parser().parse_args(argv)
    if args.question is not None and not args.images:
        raise UsageError("--question needs images to ask it of")
    if args.questions is not None and args.images:
        raise UsageError("--questions names its images; give no image arguments with it")
    if args.question is not None and not args.question.strip():
        raise UsageError("--question is empty")
    for flag, value in (("--batch-size", args.batch_size), ("--io-threads", args.io_threads)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, not {value}")
    if args.questions is not None:
        from pipelines.data import storage

        if not storage.exists(args.questions):
            raise UsageError(f"--questions {args.questions} does not exist")
    check_device(args.device)
    return args


def load_answerer(args):
    from pipelines.infer.captions import checkpoint_problem

    problem = checkpoint_problem("--checkpoint", args.checkpoint)
    if problem:
        raise UsageError(problem.replace("pipelines.finetune_caption", "pipelines.finetune_vqa"))
    from models.captioning import load_for_inference
    from models.vqa import StudentAnswerer

    try:
        return StudentAnswerer(*load_for_inference(args.checkpoint, device=args.device), args.checkpoint)
    except Exception as e:  # one line for a checkpoint that cannot answer, whatever the cause
        raise UsageError(" ".join(str(e).split()) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}") from e


def requests(args, err, counts: Counter):
    """(path, question) pairs in input order; bad --questions lines are reported, counted and skipped."""
    if args.question is not None:
        from pipelines.infer.captions import expand

        yield from ((p, args.question.strip()) for p in expand(args.images))
        return
    from pipelines.data import storage

    for n, line in enumerate(storage.read_text(args.questions).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if not (isinstance(rec, dict) and isinstance(rec.get("image"), str) and isinstance(rec.get("question"), str)
                and rec["question"].strip()):
            counts["malformed"] += 1
            print(f"{PROG}: {args.questions}: line {n}: not a {{\"image\", \"question\"}} record; skipped", file=err)
            continue
        yield rec["image"], rec["question"].strip()


def run(argv: list[str] | None = None, out=None, err=None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        args = parse_args(argv)
        answerer = load_answerer(args)
    except UsageError as e:
        return usage_error(PROG, e, file=err)
    from pipelines.infer.captions import batches, read_or_problem

    size = answerer.model.tee.config.image_size
    counts: Counter = Counter()
    with ThreadPoolExecutor(args.io_threads) as pool:
        reads = pool.map(lambda pq: (*read_or_problem(pq[0], size), pq[1]), requests(args, err, counts))
        for batch in batches(reads, args.batch_size):
            good = [(img, q) for _, img, problem, q in batch if problem is None]
            answers = iter(answerer([g[0] for g in good], [g[1] for g in good]) if good else [])
            for path, _, problem, question in batch:
                if problem is not None:
                    counts["failed"] += 1
                    print(f"{PROG}: {path}: {problem}", file=err, flush=True)
                    continue
                a = next(answers)
                line = (json.dumps({"path": path, "question": question, "answer": a.text,
                                    "score": round(a.score, 5), "tags": list(a.tags)})
                        if args.json else f"{path}\t{question}\t{a.text}")
                print(line, file=out, flush=True)
    return EXIT_FAILED if counts["failed"] or counts["malformed"] else EXIT_OK


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run())


if __name__ == "__main__":
    main()
