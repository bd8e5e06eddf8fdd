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
(models.minivlm.seq2seq_attention), until [SEP] or max_length words.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.minivlm import MiniVLM, load_tokenizer, seq2seq_attention


@dataclass(frozen=True)
class Caption:
    text: str
    score: float  # mean log-probability per generated token ([SEP] included when generated)
    tags: tuple[str, ...]  # the TEE's class names the student was shown


class NotACaptioningCheckpoint(ValueError):
    pass


# ---- inputs ------------------------------------------------------------------------------

def tags_from_regions(names: Sequence[str], scores: Sequence[float], min_score: float) -> list[str]:
    """The TEE's tags for an image: distinct names of regions scoring >= min_score, best first.

    Fine-tuning (from stored features) and inference (from a live TEE) both call this, so
    the student sees the same kind of tags in both.
    """
    best: dict[str, float] = {}
    for name, score in zip(names, scores):
        if name and score >= min_score and score > best.get(name, -math.inf):
            best[name] = float(score)
    return sorted(best, key=lambda n: -best[n])


def tag_token_ids(tokenizer, tags: list[list[str]], limit: int) -> list[list[int]]:
    texts = [" ".join(t) for t in tags]
    return tokenizer(texts, add_special_tokens=False, truncation=True, max_length=limit)["input_ids"]


def text_inputs(config, captions: list[list[int]], tags: list[list[int]]) -> dict[str, torch.Tensor]:
    """Per sample a framed caption ([CLS] ... with [SEP] or [MASK] as the caller wants, at most
    caption_slot tokens) and raw tag ids -> input_ids, token_type_ids, text_mask (B, T)."""
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
    return {"input_ids": torch.from_numpy(input_ids), "token_type_ids": torch.from_numpy(types),
            "text_mask": torch.from_numpy(mask)}


def region_inputs(features: list[np.ndarray], boxes: list[np.ndarray], feature_dim: int
                  ) -> dict[str, torch.Tensor]:
    """Per sample (n, D) features and (n, 4) boxes -> padded (B, R, D), (B, R, 4), mask (B, R)."""
    b, r = len(features), max(1, max(len(f) for f in features))
    feats = np.zeros((b, r, feature_dim), dtype=np.float32)
    box = np.zeros((b, r, 4), dtype=np.float32)
    mask = np.zeros((b, r), dtype=np.int64)
    for i, (f, bx) in enumerate(zip(features, boxes)):
        feats[i, :len(f)], box[i, :len(f)], mask[i, :len(f)] = f, bx, 1
    return {"region_features": torch.from_numpy(feats), "region_boxes": torch.from_numpy(box),
            "region_mask": torch.from_numpy(mask)}


# ---- decoding ----------------------------------------------------------------------------

class _Step:
    """Next-token log-probabilities for a batch of caption prefixes over fixed contexts."""

    def __init__(self, model: MiniVLM, tag_ids: list[list[int]], regions: dict[str, torch.Tensor], banned: list[int]):
        c = model.config
        device = next(model.parameters()).device
        self.model, self.config = model, c
        self.base = {k: v.to(device) for k, v in text_inputs(c, [[]] * len(tag_ids), tag_ids).items()}
        self.regions = {k: v.to(device) for k, v in regions.items()}
        length = c.text_length + self.regions["region_features"].shape[1]
        self.pattern = seq2seq_attention(c.caption_slot, length - c.caption_slot, device=device)
        self.banned = torch.tensor(banned, dtype=torch.long, device=device)

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
        logits = self.model.mlm(hidden[:, t + 1]).float()  # (N, V)
        logits[:, self.banned] = -math.inf
        if t == 0:
            logits[:, c.sep_token_id] = -math.inf  # at least one word
        return F.log_softmax(logits, dim=-1)


def greedy_search(step: _Step, batch: int, max_length: int) -> list[tuple[list[int], float]]:
    """The most likely next token each step -> per context (word ids, mean log-prob)."""
    device, sep = step.base["input_ids"].device, step.config.sep_token_id
    prefix = torch.zeros(batch, 0, dtype=torch.long, device=device)
    total = torch.zeros(batch, dtype=torch.float64)
    steps = torch.zeros(batch, dtype=torch.long)
    done = torch.zeros(batch, dtype=torch.bool)
    for _ in range(max_length):
        active = (~done).nonzero().squeeze(1)
        logp = step(prefix[active.to(device)], active.to(device))
        best, token = logp.max(dim=-1)
        nxt = torch.full((batch,), step.config.pad_token_id, dtype=torch.long)
        nxt[active] = token.cpu()
        total[active] += best.double().cpu()
        steps[active] += 1
        done[active] |= token.cpu() == sep
        prefix = torch.cat([prefix, nxt.to(device)[:, None]], dim=1)
        if done.all():
            break
    out = []
    for i in range(batch):
        words = [int(w) for w in prefix[i, :int(steps[i])] if int(w) != sep]
        out.append((words, float(total[i] / steps[i])))
    return out


def beam_search(step: _Step, batch: int, beam_size: int, max_length: int, length_penalty: float = 1.0
                ) -> list[tuple[list[int], float]]:
    """Beam search -> per context the best hypothesis (word ids, mean log-prob).

    Hypotheses are ranked by sum log-prob / length ** length_penalty (length counts the
    [SEP] that ends them). A context is done once it holds beam_size ended hypotheses
    (early stopping), so beam_size 1 is exactly greedy.
    """
    k, sep = beam_size, step.config.sep_token_id
    device = step.base["input_ids"].device
    scores = torch.full((batch, k), -math.inf, dtype=torch.float64)
    scores[:, 0] = 0.0  # one live beam at first, or the first step would fill the beam with copies
    prefix = torch.zeros(batch * k, 0, dtype=torch.long, device=device)
    rows = torch.arange(batch, device=device).repeat_interleave(k)  # (B*K,)
    ended: list[list[tuple[float, list[int], float]]] = [[] for _ in range(batch)]
    done = [False] * batch
    for t in range(max_length):
        logp = step(prefix, rows).double().view(batch, k, -1)  # (B, K, V), on the model's device
        vocab = logp.shape[-1]
        cand = (scores.to(device)[:, :, None] + logp).view(batch, -1)  # (B, K*V)
        # (B, 2K): enough to refill K beams after [SEP]s; only these leave the device
        top, index = (x.cpu() for x in cand.topk(2 * k, dim=-1))
        keep_beam = torch.zeros(batch, k, dtype=torch.long)
        keep_token = torch.full((batch, k), step.config.pad_token_id, dtype=torch.long)
        new_scores = torch.full((batch, k), -math.inf, dtype=torch.float64)
        old = prefix.cpu().view(batch, k, -1)
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
        gather = (torch.arange(batch)[:, None] * k + keep_beam).view(-1)  # (B*K,)
        prefix = torch.cat([old.view(batch * k, -1)[gather], keep_token.view(-1, 1)], dim=1).to(device)
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
        self.banned = sorted(set(tokenizer.all_special_ids) - {self.config.sep_token_id})

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray], *, beam_size: int = 5, max_length: int = 20,
                 greedy: bool = False) -> list[Caption]:
        """HWC uint8 RGB arrays -> one Caption each (the TEE runs first; no teacher anywhere)."""
        if self.model.tee is None:
            raise NotACaptioningCheckpoint(f"{self.source} has no TEE: it can caption stored features only")
        if len(images) == 0:
            return []
        found = self.model.tee.extract(list(images))
        r = self.config.max_regions
        return self.caption_regions([f.features[:r] for f in found], [f.boxes[:r] for f in found],
                                    [tags_from_regions(f.names, f.scores, self.config.tag_min_score) for f in found],
                                    beam_size=beam_size, max_length=max_length, greedy=greedy)

    @torch.inference_mode()
    def caption_regions(self, features: list[np.ndarray], boxes: list[np.ndarray], tags: list[list[str]], *,
                        beam_size: int = 5, max_length: int = 20, greedy: bool = False) -> list[Caption]:
        """Stored regions ((n, D) features, (n, 4) normalised boxes, tag names) -> captions."""
        c = self.config
        if not 1 <= max_length <= c.max_caption_tokens:
            raise ValueError(f"max_length must be in [1, {c.max_caption_tokens}] (the checkpoint's "
                             f"max_caption_tokens), not {max_length}")
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, not {beam_size}")
        if not len(features):
            return []
        step = _Step(self.model, tag_token_ids(self.tokenizer, tags, c.max_tag_tokens),
                     region_inputs(features, boxes, c.region_feature_dim), self.banned)
        found = (greedy_search(step, len(features), max_length) if greedy
                 else beam_search(step, len(features), beam_size, max_length))
        return [Caption(text=self.tokenizer.decode(words, skip_special_tokens=True).strip(), score=score,
                        tags=tuple(t)) for (words, score), t in zip(found, tags)]


def resolve_checkpoint(path: str) -> str:
    """A fine-tuning output (CKPT, holding model/) or the model directory itself -> the model directory."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    root = root.rstrip("/")
    if not fs.exists(f"{root}/config.json") and fs.exists(f"{root}/model/config.json"):
        return f"{path.rstrip('/')}/model"
    return path


def load_student_captioner(checkpoint: str, *, device: str = "auto") -> StudentCaptioner:
    """A captioning checkpoint (local, gs://, s3://) -> StudentCaptioner on `device` (auto: CUDA if present)."""
    directory = resolve_checkpoint(checkpoint)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = MiniVLM.from_pretrained(directory, map_location=device)
    return StudentCaptioner(model, load_tokenizer(directory), checkpoint)
