"""Inputs for the pair tasks: retrieval (captions and images apart) and NLVR2 (a statement, two images).

Fine-tuning collates (pipelines.train.pair_data) and evaluation build their batches here,
so the student sees one input layout everywhere.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from models.captioning import region_inputs, tag_token_ids, text_inputs
from models.vqa import vqa_inputs


def caption_inputs(tokenizer, config, captions: Sequence[str]) -> dict[str, torch.Tensor]:
    """Captions -> caption_ids / caption_mask (N, caption_slot): [CLS] caption [SEP], padded."""
    c = config
    words = tokenizer(list(captions), add_special_tokens=False, truncation=True,
                      max_length=c.max_caption_tokens)["input_ids"]
    ids = np.full((len(words), c.caption_slot), c.pad_token_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, w in enumerate(words):
        seq = [c.cls_token_id, *w, c.sep_token_id]
        ids[i, :len(seq)], mask[i, :len(seq)] = seq, 1
    return {"caption_ids": torch.from_numpy(ids), "caption_mask": torch.from_numpy(mask)}


def image_inputs(tokenizer, config, tags: Sequence[Sequence[str]], features: Sequence[np.ndarray],
                 boxes: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
    """TEE tags and regions per image -> tag_ids / tag_mask (N, T - caption_slot): tags [SEP], and
    region_features / region_boxes / region_mask (N, R, ...)."""
    c = config
    framed = text_inputs(c, [[]] * len(tags), tag_token_ids(tokenizer, [list(t) for t in tags], c.max_tag_tokens))
    out = {"tag_ids": framed["input_ids"][:, c.caption_slot:], "tag_mask": framed["text_mask"][:, c.caption_slot:]}
    out.update(region_inputs(list(features), list(boxes), c.region_feature_dim))
    return out


def retrieval_inputs(tokenizer, config, captions: Sequence[str], tags, features, boxes) -> dict[str, torch.Tensor]:
    """B captions and B images (caption b describes image b) -> a batch for MiniVLM.retrieval_outputs
    (without same_text, which the caller knows)."""
    return {**caption_inputs(tokenizer, config, captions), **image_inputs(tokenizer, config, tags, features, boxes)}


def nlvr2_inputs(tokenizer, config, statements: Sequence[str], left: Sequence[tuple], right: Sequence[tuple]
                 ) -> dict[str, torch.Tensor]:
    """Statements and their two images ((tags, (R, D) features, (R, 4) boxes) each) -> 2B sequences
    [CLS] statement [SEP] tags [SEP] regions, left and right interleaved, for MiniVLM.statement_logits."""
    sides = [side for pair in zip(left, right) for side in pair]  # l0, r0, l1, r1, ...
    texts = [s for s in statements for _ in range(2)]
    return vqa_inputs(tokenizer, config, texts, [t for t, _, _ in sides], [f for _, f, _ in sides],
                      [b for _, _, b in sides])
