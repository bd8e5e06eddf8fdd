"""Caption images with a fine-tuned student: no teacher, just the TEE and the fusion model.

    python -m pipelines.caption --checkpoint CKPT2 photos/*.jpg gs://bucket/img/**.png
    python -m pipelines.caption --checkpoint CKPT2 --json --greedy data/sample/images
    python -m pipelines.caption --checkpoint EXPORT photos/*.jpg      # a pipelines.export output: no PyTorch

One line per image on stdout, in input order: `path<TAB>caption` (with --json, one JSON
object per line: path, caption, score, tags). An image that cannot be read or decoded
gets one line on stderr (`caption: PATH: ErrorType: message`); the others are still
captioned and the exit code is 1. Bad flags, a device this machine lacks, or a checkpoint
that cannot caption: one line, exit 2, before any image is read.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

# Only light imports up here: --help and flag errors must not wait for torch
# (models.* and the image readers are imported in run(), after the flags are checked).
from pipelines.cli import (
    EXIT_FAILED,
    EXIT_OK,
    CommandParser,
    UsageError,
    add_decoding_flags,
    check_device,
    one_line,
    usage_error,
)

PROG = "caption"


def parser() -> CommandParser:
    ap = CommandParser(prog="python -m pipelines.caption", description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="+", help="image files, globs (quote them) or folders; local, gs://, s3://")
    ap.add_argument("--checkpoint", required=True,
                    help="a pipelines.finetune_caption output (CKPT2 or CKPT2/model), or a pipelines.export output "
                         "(run by ONNX Runtime, without PyTorch)")
    add_decoding_flags(ap)
    ap.add_argument("--json", action="store_true", help="JSON lines on stdout: path, caption, score, tags")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: CUDA if present)")
    ap.add_argument("--io-threads", type=int, default=8, help="images read and decoded in parallel")
    ap.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    return ap


def parse_args(argv) -> argparse.Namespace:
    """The flags, checked: UsageError for anything wrong, the device included."""
    args = parser().parse_args(argv)
    for flag, value in (("--num-beams", args.num_beams), ("--max-new-tokens", args.max_new_tokens),
                        ("--batch-size", args.batch_size), ("--io-threads", args.io_threads),
                        ("--threads", 1 if args.threads is None else args.threads)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, not {value}")
    from models.runtime import is_export  # NumPy only

    args.export = is_export(args.checkpoint)  # one look, before check_device, which imports torch for CUDA
    if args.export and args.device.startswith("cuda"):
        raise UsageError(f"--device {args.device}: an ONNX export runs on ONNX Runtime's CPU provider; "
                         "use --device cpu (or auto)")
    check_device(args.device)
    return args


def load_captioner(args):
    """The student that will caption (eager, or an ONNX export on ONNX Runtime), or UsageError saying
    why this checkpoint cannot."""
    if args.export:
        return load_export(args)
    from pipelines.infer.captions import checkpoint_problem

    problem = checkpoint_problem("--checkpoint", args.checkpoint)  # a TEE, a run folder: named, not guessed at
    if problem:
        raise UsageError(problem)
    from models.captioning import load_student_captioner  # torch: only once the flags and kind are right
    from models.threads import use_threads

    if args.threads:
        use_threads(args.threads)
    try:
        captioner = load_student_captioner(args.checkpoint, device=args.device)
    except Exception as e:  # one line for a checkpoint that cannot caption, whatever the cause
        raise UsageError(one_line(e)) from e
    if captioner.model.tee is None:
        raise UsageError(f"{args.checkpoint} has no TEE: it cannot caption images")
    return check_length(args, captioner)


def load_export(args):
    """An export (pipelines.export), run by ONNX Runtime on the CPU: neither torch nor transformers is imported."""
    from models.runtime import load_onnx_captioner

    try:
        captioner = load_onnx_captioner(args.checkpoint, threads=args.threads)
    except Exception as e:  # ExportProblem, a missing onnxruntime, an unreadable file: one line each
        raise UsageError(one_line(e)) from e
    return check_length(args, captioner)


def check_length(args, captioner):
    if args.max_new_tokens > captioner.max_caption_tokens:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens} exceeds the checkpoint's max_caption_tokens "
                         f"({captioner.max_caption_tokens})")
    return captioner


def run(argv: list[str] | None = None, out=None, err=None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        args = parse_args(argv)
        captioner = load_captioner(args)
    except UsageError as e:
        return usage_error(PROG, e, file=err)
    from pipelines.infer.captions import caption_paths, expand

    if captioner.tiny_random:
        print(f"caption: note: {args.checkpoint} grew from a tiny-random fusion (a test model): its captions "
              "show the plumbing works, not what a student can do", file=err)
    from pipelines.cli.progress import Progress

    failed = 0
    paths = list(expand(args.images))  # each pattern is listed (sorted) anyway: the total is known
    progress = Progress(PROG, total=len(paths), quiet=args.quiet, stream=err)
    for path, c, problem in caption_paths(captioner, paths, beam_size=args.num_beams,
                                          max_length=args.max_new_tokens, greedy=args.greedy,
                                          batch_size=args.batch_size, io_threads=args.io_threads):
        progress.add()
        if problem is not None:
            failed += 1
            print(f"caption: {path}: {problem}", file=err, flush=True)
            continue
        line = (json.dumps({"path": path, "caption": c.text, "score": round(c.score, 5), "tags": list(c.tags)})
                if args.json else f"{path}\t{c.text}")
        print(line, file=out, flush=True)
    progress.close()
    return EXIT_FAILED if failed else EXIT_OK


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run())


if __name__ == "__main__":
    main()
