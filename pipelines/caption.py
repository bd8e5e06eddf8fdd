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
import glob
import json
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


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


def expand(patterns: list[str]) -> Iterator[str]:
    """Files, globs and folders -> image paths (folders: their image files, sorted). Unmatched
    patterns are yielded as they are, so the reader reports them per path."""
    import fsspec

    for pattern in patterns:
        if "://" in pattern:
            fs, root = fsspec.core.url_to_fs(pattern)
            proto = pattern.split("://", 1)[0]
            if any(ch in root for ch in "*?["):
                found = sorted(fs.glob(root))
            elif fs.isdir(root):
                found = sorted(p for p in fs.find(root) if p.lower().endswith(IMAGE_EXTENSIONS))
            else:
                found = [root]
            yield from (f"{proto}://{p}" for p in found) if found else [pattern]
        elif any(ch in pattern for ch in "*?["):
            yield from sorted(glob.glob(pattern, recursive=True)) or [pattern]
        elif os.path.isdir(pattern):
            yield from sorted(os.path.join(d, f) for d, _, files in os.walk(pattern) for f in files
                              if f.lower().endswith(IMAGE_EXTENSIONS))
        else:
            yield pattern


def read_image(path: str, size: int = 512):
    """path (local, gs://, s3://) -> (H, W, 3) uint8 oriented RGB with the shorter side near `size`
    (the TEE letterboxes it to its own input size); raises on bad input."""
    from pipelines import storage
    from pipelines.images import decode_image

    return decode_image(storage.read_bytes(path), target_size=size).pixels


def _read(path: str, size: int):
    try:
        return path, read_image(path, size), None
    except Exception as e:  # every way an image can fail is this image's problem, not the run's
        reason = getattr(e, "reason", type(e).__name__)
        return path, None, f"{reason}: {e}"


def _batches(items: Iterator, n: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def caption_paths(captioner, paths: Iterable[str], *, beam_size: int = 5, max_length: int = 20,
                  greedy: bool = False, batch_size: int = 8, io_threads: int = 8) -> Iterator[tuple]:
    """Image paths -> (path, Caption or None, problem or None), in input order. Images are
    read and decoded ahead of the model in threads; a bad one costs only its own entry."""
    size = captioner.model.tee.config.image_size
    with ThreadPoolExecutor(io_threads) as pool:
        for batch in _batches(pool.map(lambda p: _read(p, size), paths), batch_size):
            good = [img for _, img, problem in batch if problem is None]
            captions = iter(captioner(good, beam_size=beam_size, max_length=max_length, greedy=greedy)
                            if good else [])
            for path, _, problem in batch:
                yield path, (next(captions) if problem is None else None), problem


def run(argv: list[str] | None = None, out=None, err=None) -> int:
    from models.captioning import load_captioner

    out, err = out or sys.stdout, err or sys.stderr
    args = parse_args(argv)
    try:
        captioner = load_captioner(args.checkpoint, device=args.device)
        if captioner.model.tee is None:
            raise ValueError(f"{args.checkpoint} has no TEE: it cannot caption images")
        if args.max_length > captioner.config.max_caption_tokens:
            raise ValueError(f"--max-length {args.max_length} exceeds the checkpoint's max_caption_tokens "
                             f"({captioner.config.max_caption_tokens})")
    except Exception as e:  # one line for a checkpoint that cannot caption, whatever the cause
        msg = str(e) if isinstance(e, (ValueError, FileNotFoundError)) else f"{type(e).__name__}: {e}"
        print(f"caption: error: {msg}", file=err)
        return EXIT_USAGE
    if captioner.config.init == "tiny":
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
    return EXIT_SOME_FAILED if failed else EXIT_OK


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run())


if __name__ == "__main__":
    main()
