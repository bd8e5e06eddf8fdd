"""Caption images with a fine-tuned student: no teacher, just the TEE and the fusion model.

    python -m pipelines.caption --checkpoint CKPT2 photos/*.jpg gs://bucket/img/**.png
    python -m pipelines.caption --checkpoint CKPT2 --json --greedy data/sample/images

One line per image on stdout, in input order: `path<TAB>caption` (with --json, one JSON
object per line: path, caption, score, tags). An image that cannot be read or decoded
gets one line on stderr (`caption: PATH: ErrorType: message`); the others are still
captioned and the exit code is 1. A checkpoint that cannot caption: one line, exit 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from pipelines.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from pipelines.infer.captions import caption_paths, expand


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m pipelines.caption", description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="+", help="image files, globs (quote them) or folders; local, gs://, s3://")
    ap.add_argument("--checkpoint", required=True, help="a pipelines.finetune_caption output (CKPT2 or CKPT2/model)")
    ap.add_argument("--beam-size", type=int, default=5)
    ap.add_argument("--max-length", type=int, default=20, help="at most this many word pieces per caption")
    ap.add_argument("--greedy", action="store_true", help="greedy decoding instead of beam search")
    ap.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    ap.add_argument("--json", action="store_true", help="JSON lines: path, caption, score, tags")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--io-threads", type=int, default=8, help="images read and decoded in parallel")
    args = ap.parse_args(argv)
    for name in ("beam_size", "max_length", "batch_size", "io_threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, not {getattr(args, name)}")
    return args


def run(argv: list[str] | None = None, out=None, err=None) -> int:
    from models.captioning import load_student_captioner
    from models.minivlm import TINY_STUDENT, tiny_name

    out, err = out or sys.stdout, err or sys.stderr
    args = parse_args(argv)
    try:
        captioner = load_student_captioner(args.checkpoint, device=args.device)
        if captioner.model.tee is None:
            raise ValueError(f"{args.checkpoint} has no TEE: it cannot caption images")
        if args.max_length > captioner.config.max_caption_tokens:
            raise ValueError(f"--max-length {args.max_length} exceeds the checkpoint's max_caption_tokens "
                             f"({captioner.config.max_caption_tokens})")
    except Exception as e:  # one line for a checkpoint that cannot caption, whatever the cause
        msg = str(e) if isinstance(e, (ValueError, FileNotFoundError)) else f"{type(e).__name__}: {e}"
        print(f"caption: error: {msg}", file=err)
        return EXIT_USAGE
    if tiny_name(captioner.config.init) == TINY_STUDENT:
        print(f"caption: note: {args.checkpoint} grew from a tiny-random fusion (a test model): its captions "
              "show the plumbing works, not what a student can do", file=err)
    failed = 0
    for path, c, problem in caption_paths(captioner, expand(args.images), beam_size=args.beam_size,
                                          max_length=args.max_length, greedy=args.greedy,
                                          batch_size=args.batch_size, io_threads=args.io_threads):
        if problem is not None:
            failed += 1
            print(f"caption: {path}: {problem}", file=err, flush=True)
            continue
        line = (json.dumps({"path": path, "caption": c.text, "score": round(c.score, 5), "tags": list(c.tags)})
                if args.json else f"{path}\t{c.text}")
        print(line, file=out, flush=True)
    return EXIT_FAILED if failed else EXIT_OK


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run())


if __name__ == "__main__":
    main()
