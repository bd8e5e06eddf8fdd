"""When two texts are the same to a reader: case, spacing and a final full stop do not count.

One rule for every place that compares captions or statements: the data card's repeated
captions, pre-training's choice of a donor that says something else, retrieval's pairs
that are right too, the distinct-caption evaluation pool and NLVR2's sentences.
"""
from __future__ import annotations


def caption_key(text: str) -> str:
    """"A dog  runs." and "a dog runs" -> "a dog runs"."""
    return " ".join(text.split()).lower().rstrip(".").rstrip()
