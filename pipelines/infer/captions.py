"""Caption image files with the student: files, globs and folders in, captions out, in order.

Images are read and decoded in threads ahead of the model, so the model never waits on
storage; an image that cannot be read costs only its own entry.
"""
from __future__ import annotations

import glob
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator

from pipelines.data import storage
from pipelines.data.images import decode_image
from pipelines.data.kinds import what_is

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
STUDENT = "a MiniVLM student"  # how pipelines.data.kinds names a student's model directory


def checkpoint_problem(flag: str, path: str) -> str | None:
    """Why `path` cannot be the student `flag` asks for, named by what it holds (a TEE, a labeling
    run...), or None. A student, or a path that is none of the project's kinds, passes: the
    loader then says what is wrong with it (a pre-training checkpoint, a missing folder)."""
    kind = what_is(path)
    if kind is None or STUDENT in kind:
        return None
    return f"{flag} {path} is {kind}, not a MiniVLM student: pass a pipelines.finetune_caption output"


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
    return decode_image(storage.read_bytes(path), target_size=size).pixels


def read_or_problem(path: str, size: int):
    try:
        return path, read_image(path, size), None
    except Exception as e:  # every way an image can fail is this image's problem, not the run's
        reason = getattr(e, "reason", type(e).__name__)
        return path, None, f"{reason}: {e}"


def batches(items: Iterator, n: int) -> Iterator[list]:
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
    size = captioner.image_size
    with ThreadPoolExecutor(io_threads) as pool:
        for batch in batches(pool.map(lambda p: read_or_problem(p, size), paths), batch_size):
            good = [img for _, img, problem in batch if problem is None]
            captions = iter(captioner(good, beam_size=beam_size, max_length=max_length, greedy=greedy)
                            if good else [])
            for path, _, problem in batch:
                yield path, (next(captions) if problem is None else None), problem
