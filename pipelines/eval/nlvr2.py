"""Judging NLVR2 statements with a student over stored features, and NLVR2's two figures.

`predict` runs the student over a StatementStream (file order) in batches and yields
(identifier, true or false). `score` gives NLVR2's accuracy (over the labelled statements it
judged) and its consistency: the share of sentences whose every judged image pair is right
(a sentence is written once and paired with several image pairs in NLVR2). Sentences are
grouped as the official script (lil-lab/nlvr, nlvr2/eval/metrics.py) groups them: by the
identifier ("split-set-pair-sentence") with its pair field blanked, so the same words written
for two different sets are two sentences. An identifier not of that form is its own group.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator

import torch

from pipelines.train.streams import loaded_batches


@torch.inference_mode()
def predict(model, stream, collate, *, batch_size: int) -> Iterator[tuple[str, bool]]:
    device = next(model.parameters()).device
    for samples in loaded_batches(stream, batch_size):
        batch = {k: v.to(device) for k, v in collate(samples).items() if k != "statement_labels"}
        truth = model.statement_logits(batch).argmax(-1).tolist()
        yield from ((s.identifier, bool(t)) for s, t in zip(samples, truth))


def sentence_key(identifier: str) -> str:
    """The official consistency group of a statement: its identifier with the pair field blanked
    ("dev-850-2-0" -> "dev-850--0")."""
    parts = identifier.split("-")
    if len(parts) < 4:
        return identifier
    parts[2] = ""
    return "-".join(parts)


def score(predictions: dict[str, bool], statements) -> dict:
    """Accuracy and consistency of `predictions` (identifier -> judged true) over the labelled
    statements; statements it has no prediction for (an image without features) are counted."""
    right = judged = unjudged = true = 0
    by_sentence: dict[str, list[bool]] = defaultdict(list)
    for s in statements:
        if s.label is None:
            continue
        true += s.label
        if s.identifier not in predictions:
            unjudged += 1
            continue
        ok = predictions[s.identifier] == s.label
        judged += 1
        right += ok
        by_sentence[sentence_key(s.identifier)].append(ok)
    return {"accuracy": right / judged if judged else None, "statements_scored": judged,
            "statements_without_features": unjudged,
            "consistency": (sum(all(v) for v in by_sentence.values()) / len(by_sentence)) if by_sentence else None,
            "majority_baseline": max(true, judged + unjudged - true) / (judged + unjudged) if judged else None}
