"""The tagging teacher: zero-shot image-text scoring (SigLIP, SigLIP 2 or CLIP) over a vocabulary.

Texts go in as each family was trained: SigLIP and SigLIP 2 on lowercase text padded
to the text tower's full length (64 tokens for SigLIP 2, which pools the last position),
with no attention mask; CLIP on texts padded to the batch's longest, with its mask.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass

import numpy as np

from schemas.vocab import DEFAULT_VOCAB, load_vocab
from teachers.common import check_teacher_dtype, dtype_name, pick_device, pick_dtype, use_sdpa
from teachers.loading import TeacherRef, load_pretrained, model_config

DEFAULT_TAGGER = "google/siglip-so400m-patch14-384"

# How a caption is scored against its image when captions are reranked, and the range
# of that score. SigLIP's sigmoid(scale * cos + bias) is a calibrated match probability;
# CLIP's scale * cos is unbounded (only comparable within one softmax), so CLIP
# reranking uses the plain cosine similarity.
MEASURES = {"siglip-sigmoid": (0.0, 1.0), "clip-cosine": (-1.0, 1.0)}


@dataclass(frozen=True)
class TagParams:
    threshold: float = 0.1
    max_tags: int = 10
    prompt: str = "a photo of a {}."
    vocab: str = DEFAULT_VOCAB

    def __post_init__(self):
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"--tag-threshold must be within [0, 1], not {self.threshold}")
        if self.max_tags < 1:
            raise ValueError(f"--max-tags must be >= 1, not {self.max_tags}")
        if "{}" not in self.prompt:
            raise ValueError(f"--tag-prompt must contain '{{}}' where the tag name goes: {self.prompt!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        # The bundled file's absolute path differs per machine; its name does not.
        d["vocab"] = "bundled:default_tags.csv" if self.vocab == DEFAULT_VOCAB else self.vocab
        return d


@dataclass(frozen=True)
class RerankParams:
    """Score each caption against its image with the tagger's image-text model; keep the
    best first and, with `min_similarity`, drop the captions below it."""
    measure: str  # a key of MEASURES: what the tagger's model family computes
    min_similarity: float | None = None

    def __post_init__(self):
        if self.measure not in MEASURES:
            raise ValueError(f"unknown similarity measure {self.measure!r}; expected one of {', '.join(MEASURES)}")
        low, high = MEASURES[self.measure]
        if self.min_similarity is not None and not low <= self.min_similarity <= high:
            raise ValueError(f"--min-caption-similarity must be within [{low:g}, {high:g}] for the tagger's "
                             f"{self.measure} similarity, not {self.min_similarity}")

    def to_dict(self) -> dict:
        return {"enabled": True, "min_similarity": self.min_similarity, "measure": self.measure}


def measure_of(model_type: str) -> str:
    """The rerank measure of a tagger model family (its config.json `model_type`)."""
    return "siglip-sigmoid" if model_type.startswith("siglip") else "clip-cosine"


def rerank_captions(captions: list[dict], similarities: list[float],
                    min_similarity: float | None = None) -> list[dict]:
    """Captions with their `similarity`, best first, without those below `min_similarity`."""
    if len(similarities) != len(captions):
        raise ValueError(f"{len(similarities)} similarities for {len(captions)} captions")
    scored = [{**c, "similarity": float(s)} for c, s in zip(captions, similarities)]
    scored.sort(key=lambda c: -c["similarity"])
    if min_similarity is None:
        return scored
    return [c for c in scored if c["similarity"] >= min_similarity]


class Tagger:
    def __init__(self, model, processor, vocab: list[tuple[str, str]], params: TagParams, device: str,
                 text_batch_size: int = 256, attention: str | dict | None = None, dtype=None):
        self.model, self.processor, self.vocab, self.params, self.device = model, processor, vocab, params, device
        self.dtype = dtype if dtype is not None else model.dtype  # as loaded (see Captioner)
        # SigLIP was trained with a sigmoid per pair (calibrated, independent tags);
        # CLIP with a softmax over texts, so its scores compete and sum to 1.
        self.sigmoid = hasattr(model, "logit_bias")
        self.attention = attention if attention is not None else model.config._attn_implementation
        self.text_batch_size = text_batch_size
        self.text_embeds = self._embed_texts([params.prompt.format(name) for _, name in vocab], text_batch_size)

    def text_inputs(self, texts: list[str]) -> dict:
        """The text tower's inputs for `texts`, prepared as the family was trained."""
        tok = self.processor.tokenizer
        limit = self.model.config.text_config.max_position_embeddings
        if not self.sigmoid:  # CLIP: padded to the longest, with its attention mask
            enc = tok(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
            return {k: enc[k] for k in ("input_ids", "attention_mask")}
        # SigLIP (2) was trained on lowercase text: SigLIP's own tokenizer lowercases, the
        # Gemma tokenizer of SigLIP 2's fixed-resolution checkpoints does not. Its text
        # tower reads the last position, so every text is padded to the full length (64
        # for SigLIP 2, after its <eos>) and no attention mask is passed.
        enc = tok([t.lower() for t in texts], padding="max_length", max_length=limit, truncation=True,
                  return_tensors="pt")
        return {"input_ids": enc["input_ids"]}

    def _embed_texts(self, texts: list[str], batch_size: int):
        import torch

        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                enc = self.text_inputs(texts[start:start + batch_size])
                feats = self.model.get_text_features(**{k: v.to(self.device) for k, v in enc.items()}).pooler_output
                chunks.append(torch.nn.functional.normalize(feats.float(), dim=-1))
        return torch.cat(chunks)  # (V, D)

    @property
    def measure(self) -> str:
        """How `similarities` scores an image-text pair (a key of MEASURES)."""
        return "siglip-sigmoid" if self.sigmoid else "clip-cosine"

    def runtime(self) -> dict:
        """What this tagger runs on (a method, so a --large-model proxy forwards it)."""
        return {"device": self.device, "dtype": dtype_name(self.dtype), "attn_implementation": self.attention}

    def _embed_images(self, images: list[np.ndarray]):
        import torch

        # pixel_values, and for SigLIP 2 NaFlex its patches' mask and grid shapes.
        batch = self.processor.image_processor(images=list(images), return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in batch.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            feats = self.model.get_image_features(**inputs).pooler_output
            return torch.nn.functional.normalize(feats.float(), dim=-1)  # (B, D)

    def _tags(self, img) -> list[list[dict]]:
        import torch

        p = self.params
        with torch.inference_mode():
            logits = img @ self.text_embeds.T * self.model.logit_scale.float().exp()  # (B, V)
            if self.sigmoid:
                probs = torch.sigmoid(logits + self.model.logit_bias.float())
            else:
                probs = logits.softmax(dim=-1)
            k = min(p.max_tags, probs.shape[1])
            top_scores, top_idx = probs.topk(k, dim=-1)  # (B, k), best first
        results = []
        for scores, idx in zip(top_scores.tolist(), top_idx.tolist()):
            results.append([
                {"label": self.vocab[i][0], "name": self.vocab[i][1], "score": s}
                for s, i in zip(scores, idx) if s >= p.threshold
            ])
        return results

    def _similarities(self, img, texts: list[list[str]]) -> list[list[float]]:
        import torch

        if len(texts) != img.shape[0]:
            raise ValueError(f"{len(texts)} lists of texts for {img.shape[0]} images")
        flat = [t for per_image in texts for t in per_image]
        if not flat:
            return [[] for _ in texts]
        # Caption texts go in as they are: the tag prompt is for bare class names.
        embeds = self._embed_texts(flat, self.text_batch_size)  # (T, D)
        out, start = [], 0
        with torch.inference_mode():
            for i, per_image in enumerate(texts):
                sim = embeds[start:start + len(per_image)] @ img[i]  # (n,) cosine
                start += len(per_image)
                if self.sigmoid:
                    sim = torch.sigmoid(sim * self.model.logit_scale.float().exp() + self.model.logit_bias.float())
                out.append(sim.tolist())
        return out

    def similarities(self, images: list[np.ndarray], texts: list[list[str]]) -> list[list[float]]:
        """Per image, the `measure` similarity of each of its texts (texts[i] belong to images[i])."""
        return self._similarities(self._embed_images(images), texts)

    def __call__(self, images: list[np.ndarray], texts: list[list[str]] | None = None) -> list:
        """images: list of (H, W, 3) uint8 -> per image, tags best first: {label, name, score}.

        With `texts` (one list per image, e.g. its candidate captions): per image a pair
        (tags, similarities of its texts), from one pass of the image encoder. One call
        either way, so a --large-model proxy (which forwards only calls) can run both.
        """
        img = self._embed_images(images)
        tags = self._tags(img)
        if texts is None:
            return tags
        return list(zip(tags, self._similarities(img, texts)))


def similarity_measure(spec: str, cache_dir: str | None = None) -> str:
    """The rerank measure of a tagger reference, from its config.json alone (no weights)."""
    config = model_config(TeacherRef("tagger", spec), cache_dir=cache_dir)
    return measure_of(str(config.get("model_type", "")))


class _UnusedTokenIds(logging.Filter):
    """transformers checks that a config's special token ids lie inside its text vocabulary. SigLIP's
    text config keeps CLIP's bos/eos defaults (49406, 49407) beside a 32,000-word vocabulary, the
    hub's model and its replica alike, so every load warned twice. A tagger embeds texts and never
    generates: bos and eos ids are unused, the tokenizer brings its own. Other ids still warn."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Model config: bos_token_id must be")
                    or message.startswith("Model config: eos_token_id must be"))


@contextlib.contextmanager
def unused_text_token_ids_unreported():
    """Drop transformers' out-of-vocabulary bos/eos warnings while a tagger loads (_UnusedTokenIds)."""
    logger = logging.getLogger("transformers.configuration_utils")
    quiet = _UnusedTokenIds()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def load_tagger(spec: str, params: TagParams, *, vocab=None, device: str = "auto", cache_dir: str | None = None,
                trust_remote_code: bool = False, dtype: str = "auto") -> Tagger:
    """vocab: (label, name) pairs already parsed; read from `params.vocab` when None.
    dtype: auto | float32 | bfloat16 | float16 (teachers.common.pick_dtype)."""
    from transformers import AutoModel

    ref = TeacherRef("tagger", spec)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dev, dtype)
    check_teacher_dtype(ref, dev, dtype, cache_dir)
    vocab = [tuple(v) for v in vocab] if vocab is not None else load_vocab(params.vocab)
    with unused_text_token_ids_unreported():
        model, processor = load_pretrained(ref, AutoModel, cache_dir=cache_dir, trust_remote_code=trust_remote_code,
                                           device=dev, dtype=torch_dtype)
    return Tagger(model, processor, vocab, params, dev, attention=use_sdpa(model), dtype=torch_dtype)
