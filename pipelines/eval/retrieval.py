"""Image-text retrieval metrics: recall@K and median rank, image-to-text and text-to-image.

Pure NumPy over a score matrix (higher is better), so any model's similarities can be scored
and the metric can be tested by hand.

The tie rule is pessimistic: a query's rank is the number of WRONG candidates whose score is
>= the best score of its right ones (0-based; the median rank reported is 1-based). A wrong
candidate tied with the best right one counts as ranked ahead of it, so a constant scorer
gets R@1 = 0 (unless every candidate is right) instead of a score that depends on the order
in which candidates happen to be stored. Right candidates never push each other down: with
several right captions for an image, the query is answered as soon as the first one comes.
"""
from __future__ import annotations

import numpy as np

CHUNK = 1024  # queries scored at once: bounds the (chunk, candidates) temporaries


def _relevance_mask(relevant, shape: tuple[int, int]) -> np.ndarray:
    """(Q, C) bool from a list of index sets, a (Q,) array of one right index each, or a (Q, C) bool array."""
    q, c = shape
    if isinstance(relevant, np.ndarray) and relevant.ndim == 2:
        if relevant.shape != shape:
            raise ValueError(f"relevant is {relevant.shape}, scores are {shape}: they must match")
        return relevant.astype(bool)
    rows = [{int(relevant[i])} for i in range(len(relevant))] if isinstance(relevant, np.ndarray) else relevant
    if len(rows) != q:
        raise ValueError(f"relevant has {len(rows)} entries for {q} queries")
    mask = np.zeros(shape, bool)
    for i, right in enumerate(rows):
        idx = np.fromiter(right, dtype=np.int64, count=len(right))
        if idx.size and (idx.min() < 0 or idx.max() >= c):
            raise ValueError(f"query {i}: relevant candidate index out of range [0, {c})")
        mask[i, idx] = True
    return mask


def ranks(scores: np.ndarray, relevant) -> np.ndarray:
    """Each query's 0-based rank under the pessimistic tie rule (see the module docstring)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty (queries, candidates) matrix, not of shape {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN: no order is defined")
    mask = _relevance_mask(relevant, scores.shape)
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise ValueError(f"query {int(empty[0])} has no relevant candidate ({empty.size} queries in all)")
    out = np.empty(scores.shape[0], np.int64)
    for start in range(0, scores.shape[0], CHUNK):
        s, m = scores[start:start + CHUNK], mask[start:start + CHUNK]
        best = np.where(m, s, -np.inf).max(axis=1, keepdims=True)
        out[start:start + CHUNK] = ((s >= best) & ~m).sum(axis=1)
    return out


def recall_at_k(scores: np.ndarray, relevant, ks=(1, 5, 10)) -> dict[str, float]:
    """R@K (the fraction of queries whose rank is < K), the 1-based median rank and the query count.

    scores: (Q, C), higher is better; relevant[q]: the set of candidate indices right for query q
    (or a (Q,) array of one index each, or a (Q, C) bool array). A query with none: ValueError.
    """
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"every K must be >= 1, not {list(ks)}")
    r = ranks(scores, relevant)
    out: dict[str, float] = {f"R@{int(k)}": float((r < int(k)).mean()) for k in ks}
    out["median_rank"] = float(np.median(r + 1))
    out["queries"] = int(r.size)
    return out


def image_text_recalls(scores: np.ndarray, caption_image: list[int], ks=(1, 5, 10)) -> dict[str, dict]:
    """Both directions from one (images, captions) score matrix: image-to-text (any of the
    image's captions is right) and text-to-image (the caption's own image is right).
    caption_image[t] is the index of the image caption t belongs to."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be an (images, captions) matrix, not of shape {scores.shape}")
    n_images, n_captions = scores.shape
    owner = np.asarray(caption_image, dtype=np.int64)
    if owner.shape != (n_captions,):
        raise ValueError(f"caption_image has {owner.size} entries for {n_captions} captions")
    if owner.size and (owner.min() < 0 or owner.max() >= n_images):
        raise ValueError(f"caption_image names an image outside [0, {n_images})")
    per_image: list[set[int]] = [set() for _ in range(n_images)]
    for t, i in enumerate(owner.tolist()):
        per_image[i].add(t)
    return {"i2t": recall_at_k(scores, per_image, ks), "t2i": recall_at_k(scores.T, owner, ks)}
