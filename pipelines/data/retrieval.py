"""Image-text retrieval data: the Karpathy splits of COCO and Flickr30k.

Two layouts are read:
- the Karpathy JSON (`dataset_coco.json`, `dataset_flickr30k.json`): `{"images": [{"filename",
  "filepath", "split", "sentences": [{"raw", "tokens"}], "cocoid", "imgid", "sentids"}],
  "dataset": ...}`;
- JSON Lines (a path ending in `.jsonl`), one such image record per line.

An image's id is the stem of its file name ("COCO_val2014_000000391895.jpg" ->
"COCO_val2014_000000391895"), the id extract_features gives an image read from a folder of
files, so the captions meet the stored features without a mapping. A record missing a field,
or a line that is not JSON, is counted in `RetrievalStats` and skipped, never fatal.

Karpathy's splits are "train", "restval" (more training images, cut from COCO's val2014),
"val" and "test"; the usual training set is train + restval and the usual 5k / 1k test is
"test". `distinct_caption_pool` builds an evaluation pool in which every caption belongs to
exactly one image, so a text-to-image query has exactly one right answer.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from pipelines.data import storage
from pipelines.data.text import caption_key


@dataclass
class RetrievalImage:
    image_id: str  # the stem of the record's file name
    captions: list[str]  # stripped, none blank
    split: str | None  # Karpathy's "train", "restval", "val", "test"; None when the record has none


@dataclass
class RetrievalStats:
    images: int = 0  # kept
    captions: int = 0  # kept, over the kept images
    malformed: int = 0  # records (or JSONL lines) missing a field, of a wrong type, or not JSON
    blank_captions: int = 0  # sentences with no text: dropped
    other_splits: int = 0  # records whose split the filter does not ask for: skipped
    duplicate_images: int = 0  # a later record with an image_id already read: skipped
    without_captions: int = 0  # records left with no caption: skipped

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def parse_splits(text: str) -> set[str]:
    """A flag's split list, "train,restval" -> {"train", "restval"}."""
    splits = {s.strip() for s in text.split(",") if s.strip()}
    if not splits:
        raise ValueError(f"no split named in {text!r}; expected e.g. 'train,restval' or 'test'")
    return splits


def _stem(filename: str) -> str:
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base else base


def _caption(sentence) -> str | None:
    """The sentence's text ("" when blank), or None when it has neither a raw text nor tokens."""
    if not isinstance(sentence, dict):
        return None
    raw = sentence.get("raw")
    if isinstance(raw, str):
        return raw.strip()
    tokens = sentence.get("tokens")
    if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
        return " ".join(tokens).strip()
    return None


class _Reader:
    """Turns records into images one at a time, keeping the counts and the ids seen."""

    def __init__(self, splits: set[str] | None):
        self.splits = splits
        self.stats = RetrievalStats()
        self.seen: set[str] = set()
        self.images: list[RetrievalImage] = []

    def add(self, rec) -> None:
        stats = self.stats
        if not isinstance(rec, dict) or not isinstance(rec.get("filename"), str) \
                or not isinstance(rec.get("sentences"), list):
            stats.malformed += 1
            return
        image_id, split = _stem(rec["filename"]), rec.get("split")
        captions = [_caption(s) for s in rec["sentences"]]
        # A sentence that is not a sentence means the record is not what we think it is.
        if not image_id or (split is not None and not isinstance(split, str)) or None in captions:
            stats.malformed += 1
            return
        if self.splits is not None and split not in self.splits:
            stats.other_splits += 1
            return
        if image_id in self.seen:
            stats.duplicate_images += 1
            return
        self.seen.add(image_id)
        kept = [c for c in captions if c]
        stats.blank_captions += len(captions) - len(kept)
        if not kept:
            stats.without_captions += 1
            return
        self.images.append(RetrievalImage(image_id, kept, split))
        stats.images += 1
        stats.captions += len(kept)


def read_karpathy(path: str, splits: set[str] | None = None) -> tuple[list[RetrievalImage], RetrievalStats]:
    """The images (in file order) whose split is in `splits` (None: every split), with their captions."""
    reader = _Reader(splits)
    text = storage.read_text(path)
    if path.endswith(".jsonl"):
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                reader.stats.malformed += 1
                continue
            reader.add(rec)
        return reader.images, reader.stats
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path} is not a Karpathy split file: no top-level object with an 'images' list")
    for rec in data["images"]:
        reader.add(rec)
    return reader.images, reader.stats


def distinct_caption_pool(images: list[RetrievalImage], size: int) -> list[RetrievalImage]:
    """Up to `size` images, in order, each reduced to its first caption, no two sharing one.

    An image whose first caption repeats (lower-cased, whitespace collapsed, trailing '.'
    dropped) one already chosen is passed over: with it, a caption would have two right images.
    Fewer than `size` come back when the images run out.
    """
    if size < 1:
        raise ValueError(f"pool size must be positive, not {size}")
    chosen: set[str] = set()
    pool = []
    for image in images:
        if len(pool) == size:
            break
        if not image.captions:
            continue
        key = caption_key(image.captions[0])  # "A dog runs." and "a dog  runs" are one caption
        if key in chosen:
            continue
        chosen.add(key)
        pool.append(RetrievalImage(image.image_id, [image.captions[0]], image.split))
    return pool
