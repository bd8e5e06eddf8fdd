"""Localized Narratives (JSON Lines) as caption references, streamed.

The public files (google.github.io/localized-narratives), e.g.
`open_images_train_v6_localized_narratives-00000-of-00010.jsonl` or
`open_images_validation_localized_narratives.jsonl`, hold one narrative per line: a JSON
object with `dataset_id`, `image_id` (a string), `annotator_id`, `caption`,
`timed_caption`, `traces` and `voice_recording`. Only `image_id` and `caption` are read.
An image may have several narratives (several annotators): all are its references.

The files are large (the mouse traces dominate), so they are read a line at a time and
only the narratives of the asked-for images are kept: memory grows with the images
scored, not with the file. A line that is not a JSON object, lacks `image_id` or
`caption`, or has a blank caption is counted and skipped, never fatal.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import fsspec

log = logging.getLogger(__name__)

FORMATS = ("coco", "narratives")
# The first line of a file is read to tell the formats apart. A narrative line with its
# traces is tens of KB; COCO files are often one single line of many MB, which need not
# be read whole just to see that it is not a narrative.
_SNIFF_CHARS = 4 << 20
_EXAMPLES = 3  # malformed lines quoted in the warning


@dataclass
class Narratives:
    """What a read found: the kept captions and the counts behind them."""

    captions: dict[str, list[str]]  # image id -> its narratives, in file order
    lines: int = 0  # non-blank lines read
    malformed: int = 0  # lines skipped as unusable
    examples: list[str] = field(default_factory=list)  # "FILE:LINE: why" for the first few malformed

    @property
    def kept(self) -> int:
        return sum(len(c) for c in self.captions.values())


def _files(path: str) -> list[fsspec.core.OpenFile]:
    """The file, or the files a glob matches (the train set comes in 10 shards); sorted.

    FileNotFoundError at once when there is none, so that a caller can check its inputs
    before any work (a plain path is listed whether or not it exists).
    """
    files = fsspec.open_files(path, "rt", encoding="utf-8", compression="infer")
    if not files:
        raise FileNotFoundError(f"no file matches {path}")
    if len(files) == 1 and not files[0].fs.exists(files[0].path):
        raise FileNotFoundError(f"no such file: {path}")
    return sorted(files, key=lambda f: f.path)


def narrative_files(path: str) -> list[str]:
    """The files `path` (a file or a glob) names; FileNotFoundError if none exists."""
    return [f.path for f in _files(path)]


def parse_line(line: str) -> tuple[str, str]:
    """One narrative line -> (image id, caption); ValueError saying why it is unusable."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg})") from None
    if not isinstance(record, dict):
        raise ValueError(f"not a JSON object but {type(record).__name__}")
    image_id, caption = record.get("image_id"), record.get("caption")
    # Ids are strings in the published files; an integer id (COCO-style) is taken as its text.
    if isinstance(image_id, int) and not isinstance(image_id, bool):
        image_id = str(image_id)
    if not isinstance(image_id, str) or not image_id.strip():
        raise ValueError("no 'image_id' string")
    if not isinstance(caption, str):
        raise ValueError("no 'caption' string")
    if not caption.strip():
        raise ValueError("blank caption")
    return image_id, caption


def _lines(path: str) -> Iterator[tuple[str, int, str]]:
    """(file, line number, text) of every non-blank line, one line in memory at a time."""
    for of in _files(path):
        with of as f:
            for number, text in enumerate(f, 1):
                # A blank line (between concatenated shards, at the end) holds no narrative.
                if text.strip():
                    yield of.path, number, text.rstrip("\r\n")


def read_narratives(path: str, image_ids: set[str] | None = None) -> Narratives:
    """Localized Narratives -> the captions of the given images (all images if `image_ids` is None).

    `path` is a JSON Lines file, a glob of shards, local or any fsspec URL; `.gz` is read
    transparently. Memory holds only the kept captions. Malformed lines are counted over
    the whole file, whichever image they are for (a line that does not parse names no
    image), and a warning gives their count and the first few.
    """
    wanted = None if image_ids is None else set(image_ids)
    if wanted is not None:
        bad = [i for i in wanted if not isinstance(i, str)]
        if bad:
            raise TypeError(f"image ids must be strings; got {type(bad[0]).__name__} ids such as {bad[0]!r}")
    found = Narratives(captions={})
    for file, number, text in _lines(path):
        found.lines += 1
        try:
            image_id, caption = parse_line(text)
        except ValueError as e:
            found.malformed += 1
            if len(found.examples) < _EXAMPLES:
                found.examples.append(f"{os.path.basename(file)}:{number}: {e}")
            continue
        if wanted is None or image_id in wanted:
            found.captions.setdefault(image_id, []).append(caption)
    if found.malformed:
        log.warning("%s: skipped %d malformed of %d lines (%s)", path, found.malformed, found.lines,
                    "; ".join(found.examples))
    return found


def detect_format(path: str) -> str:
    """"narratives" or "coco" for a references file: by its extension, else by its first line.

    `.jsonl`/`.ndjson` (also gzipped) is narratives and `.json` COCO. Otherwise a first line
    that is on its own a JSON object with a `caption` is a narrative (a COCO file's first
    line is its opening brace, or the whole file without a top-level `caption`).
    """
    name = path.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".ndjson")):
        return "narratives"
    if name.endswith(".json"):
        return "coco"
    with _files(path)[0] as f:
        first = f.readline(_SNIFF_CHARS)
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        return "coco"
    return "narratives" if isinstance(record, dict) and "caption" in record else "coco"
