"""VQA with the student: its inputs ([CLS] question [SEP] tags [SEP] regions) and answering.

The fine-tuning collate (pipelines.train.vqa_data), evaluation over stored features and
answering from raw images (pipelines.answer) all build their batches here, so the student
sees one input layout everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from models.captioning import region_inputs, tag_token_ids, tags_from_regions, text_inputs


def vqa_inputs(tokenizer, config, questions: Sequence[str], tags: Sequence[Sequence[str]],
               features: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
    """Questions, TEE tags and regions ((R, D) features, (R, 4) boxes per sample) -> a batch for
    MiniVLM.answer_logits: the question in the caption slot, at most max_caption_tokens tokens."""
    c = config
    words = tokenizer(list(questions), add_special_tokens=False, truncation=True,
                      max_length=c.max_caption_tokens)["input_ids"]
    framed = [[c.cls_token_id, *ids, c.sep_token_id] for ids in words]
    batch = text_inputs(c, framed, tag_token_ids(tokenizer, [list(t) for t in tags], c.max_tag_tokens))
    batch.update(region_inputs(list(features), list(boxes), c.region_feature_dim))
    return batch


@dataclass
class Answer:
    text: str
    score: float  # the answer's sigmoid score (the head's estimate of its VQA accuracy)
    tags: tuple[str, ...]


class StudentAnswerer:
    """A VQA student with its TEE: (images, questions) -> Answers, one batch at a time."""

    def __init__(self, model, tokenizer, source: str = ""):
        if model.config.task != "vqa" or model.vqa is None:
            raise ValueError(f"{source} is a {model.config.task} MiniVLM checkpoint, not a VQA one "
                             "(pipelines.finetune_vqa's output)")
        if model.tee is None:
            raise ValueError(f"{source} has no TEE: it can answer over stored features only")
        self.model, self.tok, self.source = model.eval(), tokenizer, source
        self.config = model.config

    @torch.inference_mode()
    def __call__(self, images: Sequence, questions: Sequence[str]) -> list[Answer]:
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        if not images:
            return []
        c = self.config
        found = self.model.tee.extract(list(images))
        tags = [tags_from_regions(f.names, f.scores, c.tag_min_score, f.attributes) for f in found]
        batch = vqa_inputs(self.tok, c, questions, tags, [f.features[:c.max_regions] for f in found],
                           [f.boxes[:c.max_regions] for f in found])
        device = next(self.model.parameters()).device
        probs = torch.sigmoid(self.model.answer_logits({k: v.to(device) for k, v in batch.items()}))  # (B, A)
        best = probs.max(-1)
        return [Answer(c.answers[i], float(p), tuple(t)) for i, p, t in
                zip(best.indices.tolist(), best.values.tolist(), tags)]
