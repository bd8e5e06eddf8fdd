"""VQA fine-tuning data: (regions, TEE tags, question, soft answer scores) streamed into batches.

The regions come from a features table (pipelines.extract_features) or a corpus, the
questions and answers from VQA v2 files (pipelines.data.vqa). The questions of all images
are held in memory (VQA v2 train: 443k questions, a few hundred MB at most); the features
stream, and each row yields one sample per question about its image. Tags are the TEE's
own (models.captioning.tags_from_regions), as in caption fine-tuning and at inference.

Input per sample (OSCAR): [CLS] question [SEP] tags [SEP] regions; target: each answer of
the vocabulary scored with its VQA accuracy against the human answers (soft scores).
"""
from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from models.vqa import vqa_inputs
from pipelines.data.vqa import Question, soft_scores
from pipelines.train.pretrain_data import iter_rows, region_problem, row_regions
from pipelines.train.streams import ResumableStream, shuffled

log = logging.getLogger(__name__)
COLUMNS = ["image_id", "num_regions", "boxes", "features", "feature_dim", "names", "scores", "attributes",
           "region_names", "region_scores", "region_attributes"]  # a features table's or a corpus's


@dataclass
class VQASample:
    question_id: str
    question: str
    tags: list[str]
    features: np.ndarray  # (R, D) float32
    boxes: np.ndarray  # (R, 4) float32
    scores: np.ndarray | None  # (A,) float32 soft scores; None when only answering


def by_image(questions: list[Question]) -> dict[str, list[Question]]:
    out: dict[str, list[Question]] = {}
    for q in questions:
        out.setdefault(q.image_id, []).append(q)
    return out


def target_scores(question: Question, index: dict[str, int]) -> tuple[np.ndarray, int]:
    """(A,) soft scores of the vocabulary's answers, and how many human answers lie outside it."""
    scores = np.zeros(len(index), np.float32)
    outside = 0
    for answer, score in soft_scores(question.answers).items():
        if answer in index:
            scores[index[answer]] = score
        else:
            outside += 1
    return scores, outside


class VQAStream(ResumableStream):
    """Feature rows x the questions about their image -> VQASamples.

    With `answers` (training, validation) every sample carries its soft scores and questions
    whose human answers all lie outside the vocabulary are counted and skipped (they would
    teach "no answer"); `shuffle=False` keeps file and question order (evaluation).
    """

    def __init__(self, files: list[str], *, questions: dict[str, list[Question]], answers: list[str] | None,
                 feature_dim: int, max_regions: int, tag_min_score: float, shuffle_buffer: int = 1000,
                 shuffle: bool = True, seed: int, batch_size: int, rank: int = 0, world: int = 1):
        super().__init__(seed=seed, batch_size=batch_size, rank=rank, world=world)
        if not files:
            raise ValueError("no feature shards to read")
        self.files, self.questions = sorted(files), questions
        self.index = {a: i for i, a in enumerate(answers)} if answers is not None else None
        self.feature_dim, self.max_regions, self.tag_min_score = feature_dim, max_regions, tag_min_score
        self.shuffle_buffer, self.shuffle = shuffle_buffer, shuffle
        self.skipped: Counter = Counter()

    def items(self, epoch: int, readers: int, slot: int):
        order = list(self.files)
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        rows = iter_rows(order, readers, slot, columns=COLUMNS)
        pairs = ((row, q) for row in rows for q in self.questions.get(str(row["image_id"]), ()))
        if not self.shuffle:
            return pairs
        return shuffled(pairs, self.shuffle_buffer, random.Random((self.seed + 1) * 1_000_003 + epoch))

    def _skip(self, row: dict, reason: str) -> None:
        self.skipped[reason] += 1
        if self.skipped[reason] <= 10 or self.skipped[reason] % 1000 == 0:
            log.warning("skipping a question about %s: %s (skipped so far in this reader: %s)", row.get("image_id"),
                        reason, dict(self.skipped))

    def load(self, item, rng: np.random.Generator) -> VQASample | None:
        row, q = item
        problem = region_problem(row, self.feature_dim)
        if problem:
            self._skip(row, problem)
            return None
        scores = None
        if self.index is not None:
            scores, outside = target_scores(q, self.index)
            if outside:
                self.skipped["answers outside the vocabulary (scored 0)"] += outside
            if not scores.any():
                self._skip(row, "no human answer in the vocabulary")
                return None
        tags, features, boxes = row_regions(row, self.max_regions, self.tag_min_score)
        return VQASample(question_id=q.question_id, question=q.question, tags=tags, features=features, boxes=boxes,
                         scores=scores)


class VQACollate:
    """VQASamples -> a batch for MiniVLM.vqa_outputs / answer_logits (answer_scores when known)."""

    def __init__(self, tokenizer, config):
        self.tok, self.config = tokenizer, config

    def __call__(self, samples: list[VQASample]) -> dict:
        batch = vqa_inputs(self.tok, self.config, [s.question for s in samples], [s.tags for s in samples],
                           [s.features for s in samples], [s.boxes for s in samples])
        if all(s.scores is not None for s in samples):
            batch["answer_scores"] = torch.from_numpy(np.stack([s.scores for s in samples]))
        return batch


# ---- what the VQA commands share ----------------------------------------------------------

def read_questions(questions: str, annotations: str | None, flag: str, *, need_answers: bool):
    from pipelines.data.vqa import read_vqa

    found, stats = read_vqa(questions, annotations)
    if not found:
        raise ValueError(f"{flag} {questions} holds no usable question ({stats.malformed} malformed)")
    if need_answers and not any(q.answers for q in found):
        raise ValueError(f"{flag} {questions} has no answers: give its annotations with {flag}-annotations")
    return found, stats
