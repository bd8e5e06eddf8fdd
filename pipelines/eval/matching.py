"""Retrieval over a pool with a retrieval student: full pairwise scoring and first-stage re-ranking.

Full: the matching head scores every (image, caption) pair of the pool, I x T fusion passes;
exact, and the reference. Re-ranked: the first stage embeds each image and each caption
once (I + T passes, the index), ranks by dot product, and the matching head re-scores only
each query's top k (k fusion passes per query); the rest keep their first-stage order
below them. Both give R@1/5/10 both ways (pipelines.eval.retrieval); the first stage alone
is reported too.

Timings: a full query costs its row (image -> text: T pairs) or column (text -> image: I
pairs) of the matrix; a re-ranked one its own embedding, one product with the index and
k pairs. Building the index (embedding every candidate) is counted apart: it is done once
per pool, as a search service would.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from pipelines.eval.retrieval import image_text_recalls

ABOVE = 1e6  # a re-scored candidate's offset: ahead of every candidate the matching head did not see


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@torch.inference_mode()
def embeddings(model, batch: dict, side: str, batch_size: int) -> torch.Tensor:
    """(N, H) unit vectors of every image (side "image") or caption ("text") in `batch`."""
    keys = ("tag_ids", "tag_mask", "region_features", "region_boxes", "region_mask") if side == "image" else (
        "caption_ids", "caption_mask")
    n = batch[keys[0]].shape[0]
    embed = model.image_embeddings if side == "image" else model.text_embeddings
    return torch.cat([embed({k: batch[k][s] for k in keys}) for s in _chunks(n, batch_size)])


@torch.inference_mode()
def pair_scores(model, batch: dict, images: np.ndarray, captions: np.ndarray, batch_size: int) -> np.ndarray:
    """(P,) matching-head log-odds of the pairs (images[p], captions[p])."""
    out = np.empty(len(images), np.float64)
    for s in _chunks(len(images), batch_size):
        out[s] = model.match_scores(batch, torch.as_tensor(images[s]), torch.as_tensor(captions[s])).double().cpu().numpy()
    return out


def _top_k(similarity: np.ndarray, k: int) -> np.ndarray:
    """(Q, C) -> (Q, k) the k best candidates of each row (unordered)."""
    k = min(k, similarity.shape[1])
    return np.argpartition(-similarity, k - 1, axis=1)[:, :k]


def _reranked(similarity: np.ndarray, top: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Each row's top candidates re-scored (above everything), the rest in first-stage order below."""
    ranked = similarity - ABOVE
    rows = np.arange(len(top))[:, None]
    ranked[rows, top] = ABOVE + scores.reshape(top.shape)
    return ranked


def evaluate_pool(model, batch: dict, caption_image: list[int], *, rerank_k: int, full: bool,
                  batch_size: int) -> dict:
    """R@K both ways over a pool: `batch` holds its I images and T captions
    (models.retrieval.caption_inputs + image_inputs), caption t describes image caption_image[t]."""
    model.eval()
    n_images, n_captions = batch["tag_ids"].shape[0], batch["caption_ids"].shape[0]
    t0 = time.perf_counter()
    image_vectors = embeddings(model, batch, "image", batch_size)
    t_images = time.perf_counter() - t0
    text_vectors = embeddings(model, batch, "text", batch_size)
    t_texts = time.perf_counter() - t0 - t_images
    similarity = (image_vectors @ text_vectors.T).double().cpu().numpy()  # (I, T)
    out = {"images": n_images, "captions": n_captions, "rerank_k": rerank_k,
           "first_stage": image_text_recalls(similarity, caption_image),
           "index_seconds": {"images": round(t_images, 3), "captions": round(t_texts, 3)}}

    # image -> text: each image's top k captions; text -> image: each caption's top k images
    t0 = time.perf_counter()
    top_c = _top_k(similarity, rerank_k)  # (I, k)
    i2t = pair_scores(model, batch, np.repeat(np.arange(n_images), top_c.shape[1]), top_c.ravel(), batch_size)
    t_i2t = time.perf_counter() - t0
    t0 = time.perf_counter()
    top_i = _top_k(similarity.T, rerank_k)  # (T, k)
    t2i = pair_scores(model, batch, top_i.ravel(), np.repeat(np.arange(n_captions), top_i.shape[1]), batch_size)
    t_t2i = time.perf_counter() - t0
    by_images = image_text_recalls(_reranked(similarity, top_c, i2t), caption_image)
    by_captions = image_text_recalls(_reranked(similarity.T, top_i, t2i).T, caption_image)
    out["reranked"] = {"i2t": by_images["i2t"], "t2i": by_captions["t2i"]}
    # a query's own embedding is part of its cost; the candidates' are the index
    out["ms_per_query"] = {"reranked_i2t": round(1000 * (t_images / n_images + t_i2t / n_images), 3),
                           "reranked_t2i": round(1000 * (t_texts / n_captions + t_t2i / n_captions), 3)}
    if full:
        t0 = time.perf_counter()
        rows, cols = np.divmod(np.arange(n_images * n_captions), n_captions)
        matrix = pair_scores(model, batch, rows, cols, batch_size).reshape(n_images, n_captions)
        t_full = time.perf_counter() - t0
        out["full"] = image_text_recalls(matrix, caption_image)
        # One matrix serves both directions: its time is said once, per pair scored. A query of
        # one direction alone would score a row (T pairs) or a column (I pairs) of it.
        out["full_ranking"] = {"seconds": round(t_full, 3), "pairs": n_images * n_captions,
                               "ms_per_pair": round(1000 * t_full / (n_images * n_captions), 4)}
    return out
