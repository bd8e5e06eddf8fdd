"""Caption search in NumPy: greedy and beam search over any step, PyTorch's or ONNX Runtime's.

No torch here: the same search runs the eager student (models.captioning) and its ONNX
export (models.runtime) on a machine without PyTorch, so the two can only differ in the
numbers their steps return, never in how those numbers are searched.

A search asks a step for next-token log-probabilities: step.log_probs(prefix, rows) with
prefix (N, t) int64 the words of N hypotheses so far and rows (N,) int64 the context
(image) of each -> (N, V) float32. Between calls it says how the hypotheses moved with
step.reorder(index): the next call's hypothesis i continues the previous call's
hypothesis index[i]. A step also names its [SEP] and padding ids (sep_token_id, pad_token_id).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Caption:
    text: str
    score: float  # mean log-probability per generated token ([SEP] included when generated)
    tags: tuple[str, ...]  # the TEE's class names the student was shown


def tags_from_regions(names: Sequence[str], scores: Sequence[float], min_score: float,
                      attributes: Sequence[Sequence[str]] | None = None) -> list[str]:
    """The TEE's tags for an image: distinct names of regions scoring >= min_score, best first.

    With region attributes (a TEE with an attribute head) a region's tag carries them:
    "blue small circle" rather than "circle". Fine-tuning (from stored features) and
    inference (from a live TEE, eager or exported) all call this, so the student sees the
    same kind of tags everywhere.
    """
    best: dict[str, float] = {}
    for i, (name, score) in enumerate(zip(names, scores)):
        if name and attributes is not None and i < len(attributes) and attributes[i]:
            name = " ".join([*attributes[i], name])
        if name and score >= min_score and score > best.get(name, -math.inf):
            best[name] = float(score)
    return sorted(best, key=lambda n: -best[n])


# ---- inputs: the fixed-slot layout models.captioning describes, in NumPy ---------------------

def text_arrays(config, captions: list[list[int]], tags: list[list[int]]) -> dict[str, np.ndarray]:
    """Per sample a framed caption ([CLS] ... with [SEP] or [MASK] as the caller wants, at most
    caption_slot tokens) and raw tag ids -> input_ids, token_type_ids, text_mask (B, T) int64."""
    c, b = config, len(captions)
    slot, t = c.caption_slot, c.text_length
    input_ids = np.full((b, t), c.pad_token_id, dtype=np.int64)
    types = np.zeros((b, t), dtype=np.int64)
    mask = np.zeros((b, t), dtype=np.int64)
    types[:, slot:] = 1
    for i, (cap, tag) in enumerate(zip(captions, tags)):
        assert len(cap) <= slot and len(tag) <= c.max_tag_tokens, (len(cap), len(tag))
        input_ids[i, :len(cap)], mask[i, :len(cap)] = cap, 1
        tail = [*tag, c.sep_token_id]
        input_ids[i, slot:slot + len(tail)], mask[i, slot:slot + len(tail)] = tail, 1
    return {"input_ids": input_ids, "token_type_ids": types, "text_mask": mask}


def region_arrays(features: list[np.ndarray], boxes: list[np.ndarray], feature_dim: int) -> dict[str, np.ndarray]:
    """Per sample (n, D) features and (n, 4) boxes -> padded (B, R, D), (B, R, 4) float32, mask (B, R) int64."""
    b, r = len(features), max(1, max(len(f) for f in features))
    feats = np.zeros((b, r, feature_dim), dtype=np.float32)
    box = np.zeros((b, r, 4), dtype=np.float32)
    mask = np.zeros((b, r), dtype=np.int64)
    for i, (f, bx) in enumerate(zip(features, boxes)):
        feats[i, :len(f)], box[i, :len(f)], mask[i, :len(f)] = f, bx, 1
    return {"region_features": feats, "region_boxes": box, "region_mask": mask}


def banned_ids(special_ids, sep_token_id: int) -> list[int]:
    """Tokens a caption never contains: every special token but [SEP], which ends it."""
    return sorted(set(special_ids) - {sep_token_id})


def check_decoding(beam_size: int, max_length: int, limit: int) -> None:
    """ValueError unless 1 <= max_length <= limit (the model's max_caption_tokens) and beam_size >= 1."""
    if not 1 <= max_length <= limit:
        raise ValueError(f"max_length must be in [1, {limit}] (the model's max_caption_tokens), not {max_length}")
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, not {beam_size}")


def search_captions(step, tags: list[list[str]], detokenize, *, beam_size: int, max_length: int, greedy: bool
                    ) -> list[Caption]:
    """One context per tag list -> its Caption: the search (greedy or beam), then detokenize(word ids) -> text."""
    found = (greedy_search(step, len(tags), max_length) if greedy
             else beam_search(step, len(tags), beam_size, max_length))
    return [Caption(text=detokenize(words).strip(), score=score, tags=tuple(t))
            for (words, score), t in zip(found, tags)]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(N, V) float32 -> log-probabilities along the last axis; rows of -inf stay -inf."""
    top = logits.max(axis=-1, keepdims=True)
    shifted = logits - np.where(np.isfinite(top), top, 0)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def greedy_search(step, batch: int, max_length: int) -> list[tuple[list[int], float]]:
    """The most likely next token each step -> per context (word ids, mean log-prob)."""
    sep, pad = step.sep_token_id, step.pad_token_id
    prefix = np.zeros((batch, 0), dtype=np.int64)
    total = np.zeros(batch, dtype=np.float64)
    steps = np.zeros(batch, dtype=np.int64)
    done = np.zeros(batch, dtype=bool)
    for _ in range(max_length):
        active = np.flatnonzero(~done)
        logp = step.log_probs(prefix[active], active)  # (A, V)
        token = logp.argmax(axis=-1)
        best = logp[np.arange(len(active)), token]
        nxt = np.full(batch, pad, dtype=np.int64)
        nxt[active] = token
        total[active] += best.astype(np.float64)
        steps[active] += 1
        done[active] |= token == sep
        prefix = np.concatenate([prefix, nxt[:, None]], axis=1)
        if done.all():
            break
        going = np.flatnonzero(~done[active])  # (A',) among this step's active
        if len(going) < len(active):
            step.reorder(going)
    return [([int(w) for w in prefix[i, :steps[i]] if w != sep], float(total[i] / steps[i])) for i in range(batch)]


def top_candidates(cand: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, M) scores -> the n best per row, best first (ties: lower index first): values and indices (B, n)."""
    n = min(n, cand.shape[1])
    index = np.argpartition(cand, cand.shape[1] - n, axis=1)[:, -n:]
    values = np.take_along_axis(cand, index, axis=1)
    order = np.lexsort((index, -values), axis=-1)
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(index, order, axis=1)


def beam_search(step, batch: int, beam_size: int, max_length: int, length_penalty: float = 1.0
                ) -> list[tuple[list[int], float]]:
    """Beam search -> per context the best hypothesis (word ids, mean log-prob).

    Hypotheses are ranked by sum log-prob / length ** length_penalty (length counts the
    [SEP] that ends them). A context is done once it holds beam_size ended hypotheses
    (early stopping), so beam_size 1 is exactly greedy.
    """
    k, sep, pad = beam_size, step.sep_token_id, step.pad_token_id
    scores = np.full((batch, k), -np.inf)
    scores[:, 0] = 0.0  # one live beam at first, or the first step would fill the beam with copies
    prefix = np.zeros((batch * k, 0), dtype=np.int64)
    rows = np.repeat(np.arange(batch), k)  # (B*K,)
    ended: list[list[tuple[float, list[int], float]]] = [[] for _ in range(batch)]
    done = [False] * batch
    for t in range(max_length):
        logp = step.log_probs(prefix, rows).astype(np.float64).reshape(batch, k, -1)  # (B, K, V)
        vocab = logp.shape[-1]
        # (B, 2K): enough to refill K beams after [SEP]s
        top, index = top_candidates((scores[:, :, None] + logp).reshape(batch, -1), 2 * k)
        keep_beam = np.zeros((batch, k), dtype=np.int64)
        keep_token = np.full((batch, k), pad, dtype=np.int64)
        new_scores = np.full((batch, k), -np.inf)
        old = prefix.reshape(batch, k, -1)
        for b in range(batch):
            if done[b]:
                continue
            filled = 0
            for rank, (s, i) in enumerate(zip(top[b].tolist(), index[b].tolist())):
                if s == -math.inf:
                    break
                beam, token = divmod(i, vocab)
                if token == sep:
                    if rank < k:  # an ended hypothesis must rank among the K best
                        ended[b].append((s / (t + 1) ** length_penalty, old[b, beam].tolist(), s / (t + 1)))
                    continue
                keep_beam[b, filled], keep_token[b, filled], new_scores[b, filled] = beam, token, s
                filled += 1
                if filled == k:
                    break
            if len(ended[b]) >= k:
                done[b] = True
        if all(done):
            break
        gather = (np.arange(batch)[:, None] * k + keep_beam).reshape(-1)  # (B*K,)
        step.reorder(gather)
        prefix = np.concatenate([old.reshape(batch * k, -1)[gather], keep_token.reshape(-1, 1)], axis=1)
        scores = new_scores
    out = []
    for b in range(batch):
        pool = list(ended[b])
        if not done[b]:  # ran out of length: the live beams count as they are
            n = prefix.shape[1]
            pool += [(float(scores[b, j]) / n ** length_penalty, prefix[b * k + j].tolist(), float(scores[b, j]) / n)
                     for j in range(k) if scores[b, j] > -math.inf]
        _, words, mean = max(pool, key=lambda h: h[0])
        out.append((words, mean))
    return out
