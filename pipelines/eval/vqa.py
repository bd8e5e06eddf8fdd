"""Answering and scoring VQA: a VQA student over stored features, and the standard accuracy.

`answer` runs the student over a VQAStream (file and question order, no targets) in
batches and yields (question_id, answer). `score` gives the VQA accuracy (pipelines.data.vqa:
the official leave-one-out min(matches / 3, 1)) overall, per answer type and per question
type, beside the majority baseline (always the vocabulary's most frequent answer).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator

import torch

from pipelines.data.vqa import Question, answer_accuracy
from pipelines.train.streams import loaded_batches


@torch.inference_mode()
def answer(model, stream, collate, *, batch_size: int) -> Iterator[tuple[str, str]]:
    """(question_id, answer) for every question the stream reaches, in its order."""
    device = next(model.parameters()).device
    answers = model.config.answers
    for samples in loaded_batches(stream, batch_size):
        batch = {k: v.to(device) for k, v in collate(samples).items()}
        best = model.answer_logits(batch).argmax(-1).tolist()
        yield from ((s.question_id, answers[i]) for s, i in zip(samples, best))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def score(predictions: dict[str, str], questions: list[Question], majority: str | None = None) -> dict:
    """VQA accuracy of `predictions` (question_id -> answer) over the annotated questions it answers.

    Questions without a prediction (no features for their image) are counted, not scored."""
    overall, majority_scores = [], []
    by_answer_type, by_question_type = defaultdict(list), defaultdict(list)
    unanswered = unannotated = 0
    for q in questions:
        if not q.answers:
            unannotated += 1
            continue
        if q.question_id not in predictions:
            unanswered += 1
            continue
        acc = answer_accuracy(predictions[q.question_id], q.answers)
        overall.append(acc)
        by_answer_type[q.answer_type or "(none)"].append(acc)
        if q.question_type:
            by_question_type[q.question_type].append(acc)
        if majority is not None:
            majority_scores.append(answer_accuracy(majority, q.answers))
    return {"accuracy": _mean(overall), "questions_scored": len(overall), "questions_without_prediction": unanswered,
            "questions_without_answers": unannotated,
            "majority_answer": majority, "majority_baseline": _mean(majority_scores),
            "per_answer_type": {k: {"accuracy": _mean(v), "questions": len(v)} for k, v in sorted(by_answer_type.items())},
            "per_question_type": {k: {"accuracy": _mean(v), "questions": len(v)}
                                  for k, v in sorted(by_question_type.items())}}
