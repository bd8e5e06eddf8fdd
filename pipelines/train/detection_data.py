"""Detection data for the TEE: Open Images boxes joined with an image manifest, streamed.

Training and evaluation read the same way: the manifest (any source the labeling job
takes, sorted by image id) is merge-joined with the box CSV (sorted by ImageID, as the
official files are), images without boxes become negative samples, and bad annotation
rows are counted by reason in BoxStats and skipped. Images are read through fsspec and
decoded by the one decoder the jobs use (orientation included), one at a time.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from models.tee import letterbox, to_chw
from pipelines.data import images, sources, storage
from pipelines.data.annotations import (
    AttributeStats,
    BoxStats,
    attach_attributes,
    class_index,
    iter_attribute_groups,
    iter_box_groups,
    join_sorted,
)
from pipelines.train.streams import ResumableStream, by_index, shuffled

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectionData:
    source: sources.SourceSpec  # the image manifest
    annotations: str  # Open Images box CSV
    classes: tuple[tuple[str, str], ...]  # (LabelName, DisplayName); class index = position + 1
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    read_retries: int = 3
    # Open Images visual relationships ("is" rows are attributes) and the attribute list; the
    # TEE's attribute head trains on them. None: no attributes (every box's are unknown).
    attributes: str | None = None
    attribute_classes: tuple[tuple[str, str], ...] = ()


def iter_samples(data: DetectionData, stats: BoxStats) -> Iterator[tuple[sources.ImageRef, np.ndarray, np.ndarray]]:
    """(ref, boxes (n, 4) normalised xyxy, class indices (n,)) per manifest image, in manifest order."""
    groups = iter_box_groups(data.annotations, class_index(data.classes), stats)
    return join_sorted(sources.iter_refs(data.source), groups, stats)


def iter_attributed(data: DetectionData, stats: BoxStats, astats: AttributeStats):
    """iter_samples with each box's attributes: (ref, boxes, labels, attributes (n, A) 0/1, known (n,))."""
    samples = iter_samples(data, stats)
    if data.attributes is None:
        a = len(data.attribute_classes)
        return ((ref, b, lab, np.zeros((len(b), a), np.float32), np.zeros(len(b), bool)) for ref, b, lab in samples)
    groups = iter_attribute_groups(data.attributes, class_index(data.classes), class_index(data.attribute_classes),
                                   astats)
    return attach_attributes(samples, groups, len(data.attribute_classes), astats)


def scan(data: DetectionData) -> dict:
    """One streamed pass over manifest, boxes and attributes (no image reads): what training will see."""
    stats, astats = BoxStats(), AttributeStats()
    usable = negatives = attributed = 0
    for ref, boxes, _, _, known in iter_attributed(data, stats, astats):
        if ref.error:
            continue
        usable += 1
        negatives += len(boxes) == 0
        attributed += int(known.sum())
    out = {"images": usable, "negative_images": negatives, **stats.to_dict(), "skipped_rows": stats.skipped()}
    if data.attributes is not None:
        out["attributes"] = {**astats.to_dict(), "boxes_with_attributes": attributed}
    return out


def read_image(ref: sources.ImageRef, data: DetectionData, decode_size: int) -> np.ndarray:
    """(H, W, 3) uint8, oriented; raises on unreadable or undecodable files."""
    raw = storage.read_bytes(ref.uri, retries=data.read_retries)
    return images.decode_image(raw, rotation=ref.rotation, max_pixels=data.max_pixels,
                               target_size=decode_size).pixels


def augment(pixels: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, *, size: int, hflip: bool,
            scale_jitter: float) -> tuple[torch.Tensor, tuple[int, int], np.ndarray]:
    """Flip + scale jitter + letterbox. Returns (pixels (3, S, S), content (h, w), boxes in letterboxed pixels).

    Scale jitter shrinks the image inside the square by a factor in [scale_jitter, 1],
    so the detector sees objects at more sizes than the data has.
    """
    chw = to_chw(pixels)
    boxes = boxes.copy()
    if hflip and rng.random() < 0.5:
        chw = chw.flip(-1)
        boxes[:, [0, 2]] = 1.0 - boxes[:, [2, 0]]
    h, w = chw.shape[1:]
    factor = rng.uniform(scale_jitter, 1.0) if scale_jitter < 1.0 else 1.0
    x, _, (nh, nw) = letterbox(chw, size, scale=size / max(h, w) * factor)
    px = boxes * np.array([nw, nh, nw, nh], dtype=np.float32)
    return x, (nh, nw), px


class DetectionStream(ResumableStream):
    """Endless shuffled training samples: letterboxed, augmented images with their targets."""

    def __init__(self, data: DetectionData, *, image_size: int, hflip: bool = True, scale_jitter: float = 0.6,
                 shuffle_buffer: int = 10_000, seed: int, batch_size: int, rank: int = 0, world: int = 1):
        super().__init__(seed=seed, batch_size=batch_size, rank=rank, world=world)
        if not 0 < scale_jitter <= 1:
            raise ValueError(f"--scale-jitter must be in (0, 1], not {scale_jitter}")
        if shuffle_buffer < 1:
            raise ValueError(f"--shuffle-buffer must be >= 1, not {shuffle_buffer}")
        self.data, self.image_size, self.hflip, self.scale_jitter = data, image_size, hflip, scale_jitter
        self.shuffle_buffer = shuffle_buffer

    def items(self, epoch: int, readers: int, slot: int):
        usable = (s for s in iter_attributed(self.data, BoxStats(), AttributeStats()) if not s[0].error)
        mixed = shuffled(usable, self.shuffle_buffer, random.Random(self.seed * 1_000_003 + epoch))
        return by_index(mixed, readers, slot)  # one manifest stream: split by position

    def load(self, item, rng: np.random.Generator):
        ref, boxes, labels, attributes, known = item
        try:
            pixels = read_image(ref, self.data, self.image_size)
        except Exception as e:  # one unreadable image must not stop training
            log.warning("skipping %s (%s): %s: %s", ref.image_id, ref.uri, type(e).__name__, e)
            return None
        x, content, px = augment(pixels, boxes, rng, size=self.image_size, hflip=self.hflip,
                                 scale_jitter=self.scale_jitter)
        big = ((px[:, 2] - px[:, 0]) >= 1) & ((px[:, 3] - px[:, 1]) >= 1)  # sub-pixel boxes teach nothing
        target = {"boxes": torch.from_numpy(px[big]).float().reshape(-1, 4),
                  "labels": torch.from_numpy(labels[big]).long()}
        if self.data.attribute_classes:
            target["attributes"] = torch.from_numpy(attributes[big]).float().reshape(-1, attributes.shape[1])
            target["attributes_known"] = torch.from_numpy(known[big])
        return x, content, target


def collate(samples: list) -> dict:
    pixels, sizes, targets = zip(*samples)
    return {"pixels": torch.stack(pixels), "sizes": list(sizes), "targets": list(targets)}


def detection_loss(net, batch: dict) -> dict:
    return net(batch["pixels"], batch["sizes"], batch["targets"])
