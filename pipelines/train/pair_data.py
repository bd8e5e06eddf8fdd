"""Retrieval and NLVR2 fine-tuning data: samples that pair text with images anywhere in the features.

The captions (Karpathy split, pipelines.data.retrieval) and statements (NLVR2,
pipelines.data.nlvr2) are held in memory (COCO train: ~600k captions; NLVR2 train: ~86k
statements); each epoch shuffles them from the seed and splits them over readers by
position. The regions come from a FeatureStore (random access by image id, on disk).
Tags are the TEE's own, as in every other fine-tuning and at inference. A caption or
statement whose image has no usable features is counted and skipped, never fatal.
"""
from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from models.retrieval import nlvr2_inputs, retrieval_inputs
from pipelines.data.text import caption_key
from pipelines.train.featurestore import FeatureStore
from pipelines.train.pretrain_data import region_problem, row_regions
from pipelines.train.streams import ResumableStream, by_index

log = logging.getLogger(__name__)


@dataclass
class Regions:
    image_id: str
    tags: list[str]
    features: np.ndarray  # (R, D) float32
    boxes: np.ndarray  # (R, 4) float32


@dataclass
class CaptionPair:
    caption: str
    image: Regions


@dataclass
class StatementPair:
    identifier: str
    sentence: str
    left: Regions
    right: Regions
    label: bool | None


class RegionSource:
    """Image id -> Regions from a FeatureStore, or a reason it has none (counted)."""

    def __init__(self, store: FeatureStore, *, feature_dim: int, max_regions: int, tag_min_score: float):
        self.store, self.feature_dim = store, feature_dim
        self.max_regions, self.tag_min_score = max_regions, tag_min_score
        self.skipped: Counter = Counter()

    def regions(self, image_id: str) -> Regions | None:
        row = self.store.get(image_id)
        reason = "no features for the image" if row is None else region_problem(row, self.feature_dim)
        if reason:
            self.skipped[reason] += 1
            if self.skipped[reason] <= 10 or self.skipped[reason] % 1000 == 0:
                log.warning("skipping a sample about %s: %s (skipped so far in this reader: %s)", image_id, reason,
                            dict(self.skipped))
            return None
        return Regions(str(image_id), *row_regions(row, self.max_regions, self.tag_min_score))


class PairStream(ResumableStream):
    """Items held in memory, reshuffled each epoch (unless shuffle=False), split by position."""

    def __init__(self, items: list, source: RegionSource, *, shuffle: bool = True, seed: int, batch_size: int,
                 rank: int = 0, world: int = 1):
        super().__init__(seed=seed, batch_size=batch_size, rank=rank, world=world)
        if not items:
            raise ValueError("nothing to train on")
        self.all_items, self.source, self.shuffle = items, source, shuffle

    @property
    def skipped(self) -> Counter:
        return self.source.skipped

    def items(self, epoch: int, readers: int, slot: int):
        order = list(range(len(self.all_items)))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return (self.all_items[i] for i in by_index(iter(order), readers, slot))


class RetrievalStream(PairStream):
    """(image_id, caption) items -> CaptionPairs."""

    def load(self, item, rng: np.random.Generator) -> CaptionPair | None:
        image_id, caption = item
        image = self.source.regions(image_id)
        return None if image is None else CaptionPair(caption, image)


class StatementStream(PairStream):
    """pipelines.data.nlvr2.Statement items -> StatementPairs (both images needed)."""

    def load(self, item, rng: np.random.Generator) -> StatementPair | None:
        left = self.source.regions(item.left)
        right = self.source.regions(item.right) if left is not None else None
        if right is None:
            return None
        return StatementPair(item.identifier, item.sentence, left, right, item.label)


class RetrievalCollate:
    """CaptionPairs -> a batch for MiniVLM.retrieval_outputs: caption b describes image b;
    same_text (B, B) marks the pairings that are right too (the same image, or the same words)."""

    def __init__(self, tokenizer, config):
        self.tok, self.config = tokenizer, config

    def __call__(self, samples: list[CaptionPair]) -> dict:
        images = [s.image for s in samples]
        batch = retrieval_inputs(self.tok, self.config, [s.caption for s in samples], [i.tags for i in images],
                                 [i.features for i in images], [i.boxes for i in images])
        ids = np.array([i.image_id for i in images], dtype=object)
        texts = np.array([caption_key(s.caption) for s in samples], dtype=object)
        batch["same_text"] = torch.from_numpy((ids[:, None] == ids[None, :]) | (texts[:, None] == texts[None, :]))
        return batch


class StatementCollate:
    """StatementPairs -> a batch for MiniVLM.nlvr2_outputs (statement_labels when every sample has one)."""

    def __init__(self, tokenizer, config):
        self.tok, self.config = tokenizer, config

    def __call__(self, samples: list[StatementPair]) -> dict:
        batch = nlvr2_inputs(self.tok, self.config, [s.sentence for s in samples],
                             [(s.left.tags, s.left.features, s.left.boxes) for s in samples],
                             [(s.right.tags, s.right.features, s.right.boxes) for s in samples])
        if all(s.label is not None for s in samples):
            batch["statement_labels"] = torch.tensor([int(s.label) for s in samples], dtype=torch.long)
        return batch
