"""Captioning with the student: the input layout, greedy and beam search, and the one-call API.

    from models.captioning import load_student_captioner
    captioner = load_student_captioner("CKPT2")                 # a pipelines.finetune_caption output
    captions = captioner(images)                         # HWC uint8 arrays -> [Caption(text, score, tags)]

No teacher is involved: image -> TEE (regions; the names of its confident regions are
the tags) -> fusion -> decoding.

Layout (fixed slots, OSCAR style, so tags and regions sit at the same positions however
long the caption is; `MiniVLMConfig.caption_slot` = max_caption_tokens + 2):

    [CLS] w1 ... wn [SEP] pad ...   t1 ... tm [SEP] pad ...   r1 ... rR
    |<---- caption slot (seg 0) -->|<---- tag slot (seg 1) -->|<- regions ->|

Generation writes [MASK] after the words so far and reads the prediction there: the
same question the masked-token fine-tuning asks under the seq2seq attention pattern
(models.minivlm.seq2seq_attention), until [SEP] or max_length words. That pattern lets
decoding cache (CachedStep, the default): tags and regions are encoded once per image and
each step runs only its two new positions; cache=False re-encodes everything each step
(UncachedStep, the reference), with the same captions.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.decoding import (
    Caption,
    banned_ids,
    beam_search,
    check_decoding,
    greedy_search,
    region_arrays,
    search_captions,
    tags_from_regions,
    text_arrays,
)
from models.minivlm import TINY_STUDENT, MiniVLM, box_positions, load_tokenizer, seq2seq_attention, tiny_name

__all__ = ["Caption", "CachedStep", "NotACaptioningCheckpoint", "StudentCaptioner", "UncachedStep", "beam_search",
           "greedy_search", "load_for_inference", "load_student_captioner", "region_inputs", "resolve_checkpoint",
           "resolve_device", "tag_token_ids", "tags_from_regions", "text_inputs"]


class NotACaptioningCheckpoint(ValueError):
    pass


# ---- inputs ------------------------------------------------------------------------------

def tag_token_ids(tokenizer, tags: list[list[str]], limit: int) -> list[list[int]]:
    texts = [" ".join(t) for t in tags]
    return tokenizer(texts, add_special_tokens=False, truncation=True, max_length=limit)["input_ids"]


def text_inputs(config, captions: list[list[int]], tags: list[list[int]]) -> dict[str, torch.Tensor]:
    """models.decoding.text_arrays as tensors: input_ids, token_type_ids, text_mask (B, T)."""
    return {k: torch.from_numpy(v) for k, v in text_arrays(config, captions, tags).items()}


def region_inputs(features: list[np.ndarray], boxes: list[np.ndarray], feature_dim: int
                  ) -> dict[str, torch.Tensor]:
    """models.decoding.region_arrays as tensors: padded (B, R, D), (B, R, 4), mask (B, R)."""
    return {k: torch.from_numpy(v) for k, v in region_arrays(features, boxes, feature_dim).items()}


# ---- decoding steps ----------------------------------------------------------------------
#
# The searches (greedy, beam) are models.decoding's, in NumPy, shared with the ONNX export's
# runtime. A step here answers in torch when called (step(prefix, rows) -> (N, V) log-probs
# on the model's device) and in NumPy through log_probs, which is what a search calls.
# UncachedStep re-encodes everything each call (the reference); CachedStep carries keys/values along.


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, L, H) -> (N, heads, L, d)"""
    n, length, hidden = x.shape
    return x.view(n, length, heads, hidden // heads).transpose(1, 2)


def attend(layer, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """One BERT layer for new positions x (N, n, H) against keys/values (N, h, P, d) that already
    hold theirs; allowed (N, 1, n, P) bool -> (N, n, H). CachedStep and the ONNX export's fusion
    graph (models.export) both run it."""
    attention = layer.attention.self
    query = split_heads(attention.query(x), keys.shape[1])
    mixed = F.scaled_dot_product_attention(query, keys, values, attn_mask=allowed,
                                           scale=attention.scaling)  # (N, h, n, d)
    mixed = layer.attention.output(mixed.transpose(1, 2).reshape(x.shape), x)  # (N, n, H)
    return layer.output(layer.intermediate(mixed), mixed)


class DecodingStep:
    """What both steps share: the model, its special tokens, and logits -> log-probs."""

    def __init__(self, model: MiniVLM, banned: list[int]):
        self.model, self.config = model, model.config
        self.sep_token_id, self.pad_token_id = self.config.sep_token_id, self.config.pad_token_id
        self.device = next(model.parameters()).device
        self.banned = torch.tensor(banned, dtype=torch.long, device=self.device)

    def reorder(self, index) -> None:
        """index (N',) on the CPU (torch or NumPy): hypothesis i of the next call continues index[i] of the last one."""

    def log_probs(self, prefix: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """What a search calls: NumPy in, NumPy out, (N, t) and (N,) int64 -> (N, V) float32."""
        logp = self(torch.from_numpy(np.ascontiguousarray(prefix)).to(self.device),
                    torch.from_numpy(np.ascontiguousarray(rows)).to(self.device))
        return logp.float().cpu().numpy()

    def _log_probs(self, hidden: torch.Tensor, t: int) -> torch.Tensor:
        """hidden (N, H) at the [MASK] after t words -> (N, V) log-probs."""
        logits = self.model.mlm(hidden).float()  # (N, V)
        logits[:, self.banned] = -math.inf
        if t == 0:
            logits[:, self.config.sep_token_id] = -math.inf  # at least one word
        return F.log_softmax(logits, dim=-1)


class UncachedStep(DecodingStep):
    """Each call encodes the whole sequence, [CLS] prefix [MASK] | tags | regions, afresh."""

    def __init__(self, model: MiniVLM, tag_ids: list[list[int]], regions: dict[str, torch.Tensor], banned: list[int]):
        super().__init__(model, banned)
        c = self.config
        self.base = {k: v.to(self.device) for k, v in text_inputs(c, [[]] * len(tag_ids), tag_ids).items()}
        self.regions = {k: v.to(self.device) for k, v in regions.items()}
        length = c.text_length + self.regions["region_features"].shape[1]
        self.pattern = seq2seq_attention(c.caption_slot, length - c.caption_slot, device=self.device)

    def __call__(self, prefix: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """prefix (N, t) word ids, rows (N,) which context each belongs to -> (N, V) log-probs."""
        c, (n, t) = self.config, prefix.shape
        ids = self.base["input_ids"][rows].clone()  # (N, T)
        mask = self.base["text_mask"][rows].clone()
        ids[:, 0] = c.cls_token_id
        ids[:, 1:t + 1] = prefix
        ids[:, t + 1] = c.mask_token_id
        mask[:, :t + 2] = 1
        hidden = self.model.encode(ids, self.base["token_type_ids"][rows], mask,
                                   self.regions["region_features"][rows], self.regions["region_boxes"][rows],
                                   self.regions["region_mask"][rows], attention=self.pattern.expand(n, -1, -1))
        return self._log_probs(hidden[:, t + 1], t)


class CachedStep(DecodingStep):
    """UncachedStep's log-probabilities, computed incrementally.

    Under the seq2seq pattern the context (tags, regions) never sees the caption, so its
    keys/values in every layer are computed once per image. Caption position j sees only
    positions <= j and the context, so its keys/values hold once its real token is known.
    A call therefore runs two positions through the layers: the newest real token at t
    ([CLS] when t = 0), whose keys/values join the cache, and the [MASK] at t + 1, whose
    prediction is read; the [MASK]'s keys/values sit in the slot the next real token
    overwrites.

    Per layer, hypothesis n's keys (and values) live in one buffer, (N, heads, C + S, d):
    its image's C context positions, then S = caption_slot caption positions. A beam
    reorder keeps each hypothesis on its image, so only the caption part moves.
    """

    def __init__(self, model: MiniVLM, tag_ids: list[list[int]], regions: dict[str, torch.Tensor], banned: list[int]):
        super().__init__(model, banned)
        c, bert, dev = self.config, model.bert, self.device
        slot = c.caption_slot
        text = {k: v[:, slot:].to(dev) for k, v in text_inputs(c, [[]] * len(tag_ids), tag_ids).items()}  # tag slot
        regions = {k: v.to(dev) for k, v in regions.items()}
        positions = torch.arange(slot, c.text_length, device=dev)[None]  # where encode puts the tag slot
        tags = bert.embeddings(input_ids=text["input_ids"], token_type_ids=text["token_type_ids"],
                               position_ids=positions)  # (B, T - slot, H)
        boxes = box_positions(regions["region_boxes"].to(tags.dtype))
        hidden = torch.cat([tags, model.regions(regions["region_features"].to(tags.dtype), boxes)], dim=1)  # (B, C, H)
        self.context_mask = torch.cat([text["text_mask"], regions["region_mask"]], dim=1).bool()  # (B, C)
        self.context = self._encode_context(hidden, self.context_mask)  # per layer (keys, values), (B, h, C, d)
        self.rows = torch.zeros(0, dtype=torch.long)  # (N,) on the CPU: each cached hypothesis's image
        self.length = 0  # caption positions cached

    def _encode_context(self, hidden: torch.Tensor, mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The context alone through the layers, masked as encode masks it -> per layer its keys and values."""
        n = mask.shape[1]
        # as in encode: real positions are keys; a padded one still sees itself (its output is never a key)
        allowed = mask[:, None, :] | torch.eye(n, dtype=torch.bool, device=mask.device)  # (B, C, C)
        additive = torch.zeros(allowed.shape, dtype=hidden.dtype, device=hidden.device)
        additive = additive.masked_fill(~allowed, torch.finfo(hidden.dtype).min)[:, None]  # (B, 1, C, C)
        layers = self.model.bert.encoder.layer
        out = []
        for i, layer in enumerate(layers):
            attention = layer.attention.self
            out.append((split_heads(attention.key(hidden), self.config.num_heads),
                        split_heads(attention.value(hidden), self.config.num_heads)))
            if i + 1 < len(layers):  # the last layer's context output is nobody's key
                hidden = layer(hidden, additive)
        return out

    def _start(self, rows: torch.Tensor) -> None:
        """Fresh buffers for hypotheses over images `rows` (N,): their context in, no caption yet."""
        c, n = self.config, len(rows)
        self.rows, self.length = rows.cpu(), 0
        self.keys, self.values = [], []
        for keys, values in self.context:
            _, h, context, d = keys.shape
            for store, part in ((self.keys, keys), (self.values, values)):
                buffer = part.new_zeros(n, h, context + c.caption_slot, d)  # (N, h, C + S, d)
                buffer[:, :, :context] = part[rows]
                store.append(buffer)
        # queries see every real context position and every caption position but a later one
        self.allowed = torch.cat([self.context_mask[rows][:, None, None, :].expand(-1, 1, 2, -1),
                                  torch.ones(n, 1, 2, c.caption_slot, dtype=torch.bool, device=self.device)],
                                 dim=-1)  # (N, 1, 2, C + S)

    def reorder(self, index) -> None:
        index = torch.as_tensor(index)
        rows = self.rows[index]
        moved = index.to(self.device)
        if torch.equal(rows, self.rows):  # each slot keeps its image (beam search): move the caption part only
            context, end = self.context_mask.shape[1], self.context_mask.shape[1] + self.length
            for buffer in (*self.keys, *self.values):
                buffer[:, :, context:end] = buffer[moved, :, context:end]
        else:  # hypotheses leave (greedy search) or change image
            self.keys = [k[moved] for k in self.keys]
            self.values = [v[moved] for v in self.values]
            self.allowed = self.allowed[moved]
        self.rows = rows

    def __call__(self, prefix: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """prefix (N, t) word ids, rows (N,) which context each belongs to -> (N, V) log-probs."""
        c, (n, t) = self.config, prefix.shape
        if t == 0:
            self._start(rows)
        elif t != self.length or n != len(self.rows):
            raise ValueError(f"the cache holds {len(self.rows)} hypotheses of {self.length} positions, not {n} of {t}")
        newest = prefix[:, -1] if t else torch.full((n,), c.cls_token_id, dtype=torch.long, device=self.device)
        ids = torch.stack([newest, torch.full_like(newest, c.mask_token_id)], dim=1)  # (N, 2)
        positions = torch.arange(t, t + 2, device=self.device)[None]  # (1, 2)
        x = self.model.bert.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids),
                                       position_ids=positions)  # (N, 2, H)
        end = self.context_mask.shape[1] + t + 2  # context, t + 1 cached or newest, the [MASK]
        allowed = self.allowed[..., :end].clone()  # (N, 1, 2, end)
        allowed[:, :, 0, -1] = False  # the newest token does not see the [MASK] after it
        heads = self.config.num_heads
        for layer, keys, values in zip(self.model.bert.encoder.layer, self.keys, self.values):
            attention = layer.attention.self
            keys[:, :, end - 2:end] = split_heads(attention.key(x), heads)  # (N, h, 2, d)
            values[:, :, end - 2:end] = split_heads(attention.value(x), heads)
            x = attend(layer, x, keys[:, :, :end], values[:, :, :end], allowed)  # (N, 2, H)
        self.length = t + 1
        return self._log_probs(x[:, 1], t)


# ---- the API -----------------------------------------------------------------------------

class StudentCaptioner:
    """A captioning checkpoint, ready: images (or stored regions) -> captions."""

    def __init__(self, model: MiniVLM, tokenizer, source: str):
        if model.config.task != "captioning":
            raise NotACaptioningCheckpoint(
                f"{source} is a {model.config.task} MiniVLM checkpoint, not a captioning one: fine-tune it first "
                "with python -m pipelines.finetune_caption")
        self.model, self.tokenizer, self.source = model.eval(), tokenizer, source
        self.config = model.config
        self.banned = banned_ids(tokenizer.all_special_ids, self.config.sep_token_id)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_size(self) -> int:
        """The TEE's input side: images are read at about this size."""
        return self.model.tee.config.image_size

    @property
    def max_caption_tokens(self) -> int:
        return self.config.max_caption_tokens

    @property
    def tiny_random(self) -> bool:
        """Grown from a tiny random fusion (a test model)."""
        try:
            return tiny_name(self.config.init) == TINY_STUDENT
        except ValueError:
            return False

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray], *, beam_size: int = 5, max_length: int = 20,
                 greedy: bool = False, cache: bool = True) -> list[Caption]:
        """HWC uint8 RGB arrays -> one Caption each (the TEE runs first; no teacher anywhere).

        cache: decode incrementally (CachedStep); False re-encodes every step (UncachedStep), same captions.
        """
        if self.model.tee is None:
            raise NotACaptioningCheckpoint(f"{self.source} has no TEE: it can caption stored features only")
        if len(images) == 0:
            return []
        found = self.model.tee.extract(list(images))
        r = self.config.max_regions
        return self.caption_regions([f.features[:r] for f in found], [f.boxes[:r] for f in found],
                                    [tags_from_regions(f.names, f.scores, self.config.tag_min_score, f.attributes)
                                     for f in found],
                                    beam_size=beam_size, max_length=max_length, greedy=greedy, cache=cache)

    @torch.inference_mode()
    def caption_regions(self, features: list[np.ndarray], boxes: list[np.ndarray], tags: list[list[str]], *,
                        beam_size: int = 5, max_length: int = 20, greedy: bool = False, cache: bool = True
                        ) -> list[Caption]:
        """Stored regions ((n, D) features, (n, 4) normalised boxes, tag names) -> captions."""
        c = self.config
        check_decoding(beam_size, max_length, c.max_caption_tokens)
        if not len(features):
            return []
        make = CachedStep if cache else UncachedStep
        step = make(self.model, tag_token_ids(self.tokenizer, tags, c.max_tag_tokens),
                    region_inputs(features, boxes, c.region_feature_dim), self.banned)
        return search_captions(step, tags, lambda words: self.tokenizer.decode(words, skip_special_tokens=True),
                               beam_size=beam_size, max_length=max_length, greedy=greedy)


def resolve_checkpoint(path: str) -> str:
    """A fine-tuning output (CKPT, holding model/) or the model directory itself -> the model directory."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    root = root.rstrip("/")
    if not fs.exists(f"{root}/config.json") and fs.exists(f"{root}/model/config.json"):
        return f"{path.rstrip('/')}/model"
    return path


def resolve_device(device: str) -> str:
    """--device auto -> CUDA if present, else CPU; anything else as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_for_inference(checkpoint: str, *, device: str = "auto") -> tuple[MiniVLM, object]:
    """A student checkpoint (CKPT or CKPT/model; local, gs://, s3://) -> (model on `device`, tokenizer),
    its TEE's batch norms folded: loaded to run, never to train."""
    directory = resolve_checkpoint(checkpoint)
    model = MiniVLM.from_pretrained(directory, map_location=resolve_device(device))
    if model.tee is not None:
        model.tee.fold_batchnorms()
    return model, load_tokenizer(directory)


def load_student_captioner(checkpoint: str, *, device: str = "auto") -> StudentCaptioner:
    """A captioning checkpoint (local, gs://, s3://) -> StudentCaptioner on `device` (auto: CUDA if present)."""
    return StudentCaptioner(*load_for_inference(checkpoint, device=device), checkpoint)
