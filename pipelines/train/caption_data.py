"""Caption fine-tuning data: (regions, TEE tags, target caption) streamed into masked-token batches.

Two sources, one stream:
- a distilled corpus (pipelines.build_corpus): the teacher's pseudo captions are the targets;
- a COCO-format captions JSON (`images` + `annotations` with image_id, caption) plus a
  features table (pipelines.extract_features) of those images: human captions are the
  targets. A COCO image matches a features row by its file name's stem (what the
  extraction job uses as image_id for files) or, failing that, by its id.

Either way the tags are the TEE's own class names stored with the regions
(models.captioning.tags_from_regions), never the teacher tagger's: at inference there is
only the TEE. Each epoch draws one of an image's captions anew.

Per batch (OSCAR captioning): [CLS] caption [SEP] in the fixed caption slot; of its word
tokens and the closing [SEP], mask_prob are chosen (at least one per caption, at most
max_masked); of those 80% become [MASK], 10% a random token, 10% stay.
"""
from __future__ import annotations

import logging
import os
import random
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from models.captioning import region_inputs, tag_token_ids, tags_from_regions, text_inputs
from pipelines.train.pretrain_data import iter_rows, region_problem
from pipelines.train.streams import ResumableStream, shuffled

log = logging.getLogger(__name__)
CORPUS_COLUMNS = ["image_id", "captions", "num_regions", "boxes", "features", "feature_dim", "region_names",
                  "region_scores", "region_attributes"]
FEATURES_COLUMNS = ["image_id", "num_regions", "boxes", "features", "feature_dim", "names", "scores", "attributes"]


@dataclass(frozen=True)
class MaskingConfig:
    mask_prob: float = 0.15
    max_masked: int = 3  # per caption, as in OSCAR
    mask_token: float = 0.8
    random_token: float = 0.1

    def __post_init__(self):
        if not 0 < self.mask_prob <= 1:
            raise ValueError(f"--mask-prob must be in (0, 1], not {self.mask_prob}")
        if self.max_masked < 1:
            raise ValueError(f"--max-masked must be >= 1, not {self.max_masked}")
        if not (0 <= self.mask_token and 0 <= self.random_token and self.mask_token + self.random_token <= 1):
            raise ValueError("mask_token and random_token must be >= 0 with a sum <= 1")


@dataclass
class CaptionSample:
    image_id: str
    caption: str
    tags: list[str]
    features: np.ndarray  # (R, D) float32
    boxes: np.ndarray  # (R, 4) float32
    seed: int


def read_coco_captions(path: str) -> dict[str, list[str]]:
    """COCO captions JSON -> captions keyed by every name a features row may carry for the image
    (its id and its file stem). Held in memory: COCO train is ~600k captions, ~60 MB."""
    from pipelines.data.coco import read_coco_references

    files, refs = read_coco_references(path)
    out: dict[str, list[str]] = {}
    for image_id, captions in refs.items():
        out[image_id] = captions
        stem = os.path.splitext(os.path.basename(files[image_id]))[0]
        if stem:
            out.setdefault(stem, captions)
    if not out:
        raise ValueError(f"{path} holds no captions")
    return out


class CaptionStream(ResumableStream):
    """Corpus shards (references=None) or features shards + COCO references -> CaptionSamples."""

    def __init__(self, files: list[str], *, references: dict[str, list[str]] | None, feature_dim: int,
                 max_regions: int, tag_min_score: float, shuffle_buffer: int = 1000, seed: int, batch_size: int,
                 rank: int = 0, world: int = 1):
        super().__init__(seed=seed, batch_size=batch_size, rank=rank, world=world)
        if not files:
            raise ValueError("no shards to fine-tune on")
        self.files, self.references = sorted(files), references
        self.feature_dim, self.max_regions, self.tag_min_score = feature_dim, max_regions, tag_min_score
        self.shuffle_buffer = shuffle_buffer
        self.columns = CORPUS_COLUMNS if references is None else FEATURES_COLUMNS
        self.skipped: Counter = Counter()

    def items(self, epoch: int, readers: int, slot: int):
        order = list(self.files)
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        rows = iter_rows(order, readers, slot, columns=self.columns)
        return shuffled(rows, self.shuffle_buffer, random.Random((self.seed + 1) * 1_000_003 + epoch))

    def captions_of(self, row: dict) -> list[str]:
        if self.references is None:
            return [c["text"] for c in row.get("captions") or [] if (c.get("text") or "").strip()]
        return self.references.get(str(row["image_id"]), [])

    def load(self, row: dict, rng: np.random.Generator) -> CaptionSample | None:
        captions = self.captions_of(row)
        reason = "no caption" if not captions else region_problem(row, self.feature_dim)
        if reason:
            self.skipped[reason] += 1
            if self.skipped[reason] <= 10 or self.skipped[reason] % 1000 == 0:
                log.warning("skipping %s: %s (skipped so far in this reader: %s)", row.get("image_id"), reason,
                            dict(self.skipped))
            return None
        n, d = int(row["num_regions"]), int(row["feature_dim"])
        keep = min(n, self.max_regions)
        names = row.get("region_names", row.get("names")) or []
        scores = row.get("region_scores", row.get("scores")) or []
        attributes = row.get("region_attributes", row.get("attributes"))
        return CaptionSample(image_id=row["image_id"], caption=captions[int(rng.integers(len(captions)))],
                             tags=tags_from_regions(names, scores, self.tag_min_score, attributes),
                             features=row["features"].reshape(n, d)[:keep].astype(np.float32),
                             boxes=row["boxes"].reshape(n, 4)[:keep].astype(np.float32),
                             seed=int(rng.integers(2**63 - 1)))


class CaptionCollate:
    """CaptionSamples -> a batch for MiniVLM.caption_outputs (caption_labels marks the objective)."""

    def __init__(self, tokenizer, config, masking: MaskingConfig):
        self.tok, self.config, self.masking = tokenizer, config, masking

    def __call__(self, samples: list[CaptionSample]) -> dict:
        c = self.config
        words = self.tok([s.caption for s in samples], add_special_tokens=False, truncation=True,
                         max_length=c.max_caption_tokens)["input_ids"]
        captions, labels = [], np.full((len(samples), c.text_length), -100, dtype=np.int64)
        for i, (ids, s) in enumerate(zip(words, samples)):
            seq = [c.cls_token_id, *ids, c.sep_token_id]
            self._mask(seq, labels[i], np.random.default_rng(s.seed))
            captions.append(seq)
        batch = text_inputs(c, captions, tag_token_ids(self.tok, [s.tags for s in samples], c.max_tag_tokens))
        batch.update(region_inputs([s.features for s in samples], [s.boxes for s in samples], c.region_feature_dim))
        batch["caption_labels"] = torch.from_numpy(labels)
        return batch

    def _mask(self, seq: list[int], labels: np.ndarray, rng: np.random.Generator) -> None:
        """In place: choose positions among the words and the closing [SEP] (never [CLS])."""
        m = self.masking
        candidates = np.arange(1, len(seq))
        count = min(max(1, int(round(m.mask_prob * len(candidates)))), m.max_masked, len(candidates))
        for j in rng.choice(candidates, size=count, replace=False):
            labels[j] = seq[j]
            u = rng.random()
            if u < m.mask_token:
                seq[j] = self.config.mask_token_id
            elif u < m.mask_token + m.random_token:
                seq[j] = int(rng.integers(self.config.vocab_size))
