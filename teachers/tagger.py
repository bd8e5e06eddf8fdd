"""The tagging teacher: zero-shot image-text scoring (SigLIP or CLIP) over a vocabulary."""
from __future__ import annotations

import csv
import io
import os
from dataclasses import asdict, dataclass

import numpy as np

from teachers.common import pick_device, pick_dtype
from teachers.loading import TeacherRef, load_pretrained

DEFAULT_TAGGER = "google/siglip-so400m-patch14-384"
DEFAULT_VOCAB = os.path.join(os.path.dirname(__file__), "vocab", "default_tags.csv")


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


def read_vocab(text: str, where: str = "vocabulary") -> list[tuple[str, str]]:
    """Parse `LabelName,DisplayName` rows (header optional) into (label, name) pairs."""
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["labelname", "displayname"]:
        rows = rows[1:]
    vocab, seen = [], set()
    for n, row in enumerate(rows, start=1):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise ValueError(f"{where}: row {n} is not 'LabelName,DisplayName': {row!r}")
        label = row[0].strip()
        if label not in seen:
            seen.add(label)
            vocab.append((label, row[1].strip()))
    if not vocab:
        raise ValueError(f"{where} has no tags")
    return vocab


def load_vocab(path: str) -> list[tuple[str, str]]:
    import fsspec

    with fsspec.open(path, "r", encoding="utf-8-sig") as f:
        return read_vocab(f.read(), where=path)


class Tagger:
    def __init__(self, model, processor, vocab: list[tuple[str, str]], params: TagParams, device: str,
                 text_batch_size: int = 256):
        self.model, self.processor, self.vocab, self.params, self.device = model, processor, vocab, params, device
        # SigLIP was trained with a sigmoid per pair (calibrated, independent tags);
        # CLIP with a softmax over texts, so its scores compete and sum to 1.
        self.sigmoid = hasattr(model, "logit_bias")
        self.text_embeds = self._embed_texts([params.prompt.format(name) for _, name in vocab], text_batch_size)

    def _embed_texts(self, texts: list[str], batch_size: int):
        import torch

        tok = self.processor.tokenizer
        text_cfg = self.model.config.text_config
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = texts[start:start + batch_size]
                if self.sigmoid:  # SigLIP: fixed-length padding, no attention mask, as trained
                    enc = tok(batch, padding="max_length", max_length=text_cfg.max_position_embeddings,
                              truncation=True, return_tensors="pt")
                    enc = {"input_ids": enc["input_ids"]}
                else:
                    enc = tok(batch, padding=True, truncation=True,
                              max_length=text_cfg.max_position_embeddings, return_tensors="pt")
                    enc = {k: enc[k] for k in ("input_ids", "attention_mask")}
                feats = self.model.get_text_features(**{k: v.to(self.device) for k, v in enc.items()}).pooler_output
                chunks.append(torch.nn.functional.normalize(feats.float(), dim=-1))
        return torch.cat(chunks)  # (V, D)

    def __call__(self, images: list[np.ndarray]) -> list[list[dict]]:
        """images: list of (H, W, 3) uint8 -> per image, tags best first: {label, name, score}."""
        import torch

        p = self.params
        pixel_values = self.processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            feats = self.model.get_image_features(
                pixel_values=pixel_values.to(self.device, self.model.dtype)).pooler_output
            img = torch.nn.functional.normalize(feats.float(), dim=-1)  # (B, D)
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


def load_tagger(spec: str, params: TagParams, *, vocab=None, device: str = "auto", cache_dir: str | None = None,
                trust_remote_code: bool = False) -> Tagger:
    """vocab: (label, name) pairs already parsed; read from `params.vocab` when None."""
    from transformers import AutoModel

    dev = pick_device(device)
    vocab = [tuple(v) for v in vocab] if vocab is not None else load_vocab(params.vocab)
    model, processor = load_pretrained(TeacherRef("tagger", spec), AutoModel, cache_dir=cache_dir,
                                       trust_remote_code=trust_remote_code, device=dev, dtype=pick_dtype(dev))
    return Tagger(model, processor, vocab, params, dev)
