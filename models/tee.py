"""TEE: MiniVLM's two-stage efficient region feature extractor.

    image -> letterbox (S x S) -> EfficientNet (timm, strides 8/16/32) -> BiFPN (P3..P7)
          -> RPN (torchvision) -> RoIAlign 4x4 from the right level per box
          -> slim box head -> class logits, box deltas, one feature vector per region
          -> class-aware NMS -> the top `num_regions` regions (never fewer than `min_regions`)

It replaces the baseline's ResNet-101 Faster R-CNN: the same two-stage recipe on a
backbone and neck sized for speed. Detection pieces (anchors, RPN, proposal sampling,
RoIAlign, box coder, Fast R-CNN loss, NMS) are torchvision's.

A saved TEE is a directory with `config.json` + `model.safetensors`; its extractor id
(a hash of both) is stamped on every feature row so a trainer can check the features
it reads came from the TEE it holds.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign, batched_nms

from models import registry
from models.bifpn import BiFPN
from models.persistence import WEIGHTS_NAME, read_model, write_model
from schemas.vocab import DEFAULT_VOCAB, load_vocab

LEVELS = ("p3", "p4", "p5", "p6", "p7")
STRIDES = (8, 16, 32, 64, 128)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TEEConfig:
    name: str = "tee-d0"
    backbone: str = "efficientnet_b0"  # any timm model with features_only at strides 8/16/32
    pretrained_backbone: bool = False  # ImageNet weights from the hub when building from scratch
    image_size: int = 512  # square input side; a multiple of 128 (P7 has stride 128)
    fpn_channels: int = 64
    fpn_repeats: int = 3
    anchor_scale: float = 4.0  # anchor side = anchor_scale * stride * octave
    anchor_octaves: tuple[float, ...] = (1.0, 1.26, 1.59)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms: tuple[int, int] = (1000, 500)  # (train, test) per level
    rpn_post_nms: tuple[int, int] = (1000, 300)  # (train, test) per image
    rpn_nms_thresh: float = 0.7
    rpn_batch_per_image: int = 256
    roi_output_size: int = 4
    roi_batch_per_image: int = 256
    head_channels: int = 128
    feature_dim: int = 512
    classes: tuple[tuple[str, str], ...] = ()  # (label id, display name); index + 1 is the class index
    num_regions: int = 50
    min_regions: int = 10
    score_thresh: float = 0.2  # regions above this are kept (up to num_regions)
    nms_thresh: float = 0.3
    candidate_thresh: float = 0.01  # (region, class) pairs below this never enter NMS
    # One box refinement per region for every class (4 outputs) instead of one per class
    # ((K+1) x 4): at 1,600 classes 3.28 M fewer weights and ~11 ms less per image on 2 cores
    # (docs/benchmarks.md). Written to config.json only when set, so the ids of TEEs saved
    # before it existed stay what they were.
    class_agnostic_boxes: bool = False
    # (label id, name) of region attributes ("blue", "small"); with any, a multi-label head on
    # the region feature predicts them (trained where the annotations carry attributes), and
    # each region reports those scoring >= attribute_thresh. Like class_agnostic_boxes, left
    # out of config.json at the default.
    attributes: tuple[tuple[str, str], ...] = ()
    attribute_thresh: float = 0.5

    def __post_init__(self):
        if self.image_size <= 0 or self.image_size % STRIDES[-1]:
            raise ValueError(f"image_size must be a positive multiple of {STRIDES[-1]}, not {self.image_size}")
        labels = [c[0] for c in self.classes]
        if len(set(labels)) != len(labels):
            raise ValueError("TEE class label ids must be unique")
        if not 1 <= self.min_regions <= self.num_regions:
            raise ValueError(f"need 1 <= min_regions <= num_regions, got {self.min_regions}, {self.num_regions}")
        if self.feature_dim < 1 or self.head_channels < 1 or self.fpn_channels < 1:
            raise ValueError("feature_dim, head_channels and fpn_channels must be >= 1")
        attributes = [a[0] for a in self.attributes]
        if len(set(attributes)) != len(attributes):
            raise ValueError("TEE attribute label ids must be unique")
        if not 0.0 < self.attribute_thresh < 1.0:
            raise ValueError(f"attribute_thresh must be in (0, 1), not {self.attribute_thresh}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        data = asdict(self)
        for key, default in LATER_FIELDS.items():  # absent = the default: older configs and ids unchanged
            if data[key] == default:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TEEConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TEE config keys: {', '.join(unknown)}")
        tuples = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v)
                  for k, v in data.items() if isinstance(v, list)}
        return cls(**{**data, **tuples})


LATER_FIELDS = {"class_agnostic_boxes": False, "attributes": (), "attribute_thresh": 0.5}  # TEEConfig fields added after TEEs were saved: omitted at default


class SlimBoxHead(nn.Module):
    """RoI features (R, C, 4, 4) -> region feature (R, feature_dim).

    A depthwise + pointwise conv widens channels cheaply before the one dense layer;
    the dense layer's output is the region feature the student reads.
    """

    def __init__(self, in_channels: int, head_channels: int, roi_size: int, feature_dim: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, head_channels, 1, bias=False),
            nn.GroupNorm(min(32, head_channels), head_channels),
            nn.SiLU(),
        )
        self.fc = nn.Linear(head_channels * roi_size * roi_size, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.conv(x).flatten(1)))


class BoxPredictor(nn.Module):
    """Region feature -> class logits (R, K+1) and box deltas: class-specific (R, (K+1)*4), or one
    for all classes (R, 4) with `class_agnostic`."""

    def __init__(self, feature_dim: int, num_classes: int, class_agnostic: bool = False):
        super().__init__()
        self.num_classes, self.class_agnostic = num_classes, class_agnostic
        self.cls_score = nn.Linear(feature_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(feature_dim, 4 if class_agnostic else (num_classes + 1) * 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        deltas = self.bbox_pred(x)
        if self.class_agnostic and self.training:
            # torchvision's fastrcnn_loss picks each region's deltas at its class: give every class the same
            deltas = deltas.repeat(1, self.num_classes + 1)  # (R, 4) -> (R, (K+1)*4)
        return self.cls_score(x), deltas


@dataclass
class Regions:
    """One image's regions; boxes normalised xyxy in the original image."""
    boxes: np.ndarray  # (n, 4) float32
    scores: np.ndarray  # (n,) float32
    classes: np.ndarray  # (n,) int64, 1..K
    labels: list[str]  # label ids
    names: list[str]  # display names
    features: np.ndarray  # (n, feature_dim) float32
    # With an attribute head: per region the attribute names scoring >= attribute_thresh, best
    # first, and their scores; None without one.
    attributes: list[list[str]] | None = None
    attribute_scores: list[list[float]] | None = None


@dataclass
class Batch:
    """Images letterboxed into one (B, 3, S, S) tensor, with what maps boxes back."""
    pixels: torch.Tensor  # (B, 3, S, S) normalised
    sizes: list[tuple[int, int]]  # (h, w) of the image content inside the square
    scales: list[float]  # letterboxed / original
    originals: list[tuple[int, int]] = field(default_factory=list)  # (h, w) before letterboxing


def letterbox(image: torch.Tensor, size: int, scale: float | None = None
              ) -> tuple[torch.Tensor, float, tuple[int, int]]:
    """uint8 (3, H, W) -> float (3, size, size) normalised, content at top-left.

    Returns (pixels, scale, (h, w) of the content inside the square).
    `scale` defaults to the largest that fits; training passes a smaller one for scale jitter.
    """
    _, h, w = image.shape
    if scale is None:
        scale = size / max(h, w)
    nh, nw = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
    x = image.float().unsqueeze(0) / 255.0
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = torch.zeros(3, size, size)  # zero after normalisation = the mean colour
    out[:, :nh, :nw] = (x - mean) / std
    return out, scale, (nh, nw)


def to_chw(image) -> torch.Tensor:
    """HWC uint8 numpy array (what the decoder returns) or CHW tensor -> CHW tensor."""
    if isinstance(image, torch.Tensor):
        return image
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)


def select_regions(boxes: torch.Tensor, probs: torch.Tensor, feats: torch.Tensor, size: tuple[int, int], *,
                   candidate_thresh: float, nms_thresh: float, score_thresh: float, min_regions: int,
                   num_regions: int) -> dict[str, torch.Tensor]:
    """Class-aware NMS over (region, class) pairs; one box per region, its best surviving class.

    boxes (R, K+1, 4), or (R, 1, 4) from class-agnostic regression; probs (R, K+1) with
    background at 0, feats (R, D). Regions that survive NMS for some class above
    score_thresh come first; the rest (best raw class score) only fill up to min_regions.
    Shared by the TEE and the bottom-up-attention baseline.
    """
    return kept(rank_regions(boxes, probs, feats, size, candidate_thresh=candidate_thresh, nms_thresh=nms_thresh,
                             score_thresh=score_thresh, min_regions=min_regions, num_regions=num_regions))


def kept(ranked: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """rank_regions' (or ranked_regions') rows cut to their `count`."""
    n = int(ranked["count"])
    return {k: v[:n] for k, v in ranked.items() if k != "count"}


def rank_regions(boxes: torch.Tensor, probs: torch.Tensor, feats: torch.Tensor, size, *, candidate_thresh: float,
                 nms_thresh: float, score_thresh: float, min_regions: int, num_regions: int) -> dict[str, torch.Tensor]:
    """select_regions before the cut: the best num_regions regions in order and `count`, a 0-d
    tensor, how many of them to keep (more than there are when fewer exist: keep them all).

    Written so that tracing keeps every data-dependent size a tensor (the ONNX export runs
    this very function): how many regions clear score_thresh varies per image, and a
    Python int here would freeze the first traced image's count into the graph. `size`
    (h, w) may be ints or 0-d tensors.
    """
    agnostic = boxes.shape[1] == 1
    boxes = clip_to(boxes if agnostic else boxes[:, 1:], size)  # (R, K or 1, 4), background dropped
    probs = probs[:, 1:]  # (R, K)
    ri, ki = torch.nonzero(probs > candidate_thresh, as_tuple=True)
    keep = batched_nms(boxes[ri, 0 if agnostic else ki], probs[ri, ki], ki, nms_thresh)
    survived = torch.zeros_like(probs, dtype=torch.bool)
    survived[ri[keep], ki[keep]] = True
    best_kept, best_kept_cls = torch.where(survived, probs, -1.0).max(1)  # (R,)
    best_raw, best_raw_cls = probs.max(1)
    has = best_kept >= 0
    cls = torch.where(has, best_kept_cls, best_raw_cls)
    rank = torch.where(has, best_kept, best_raw - 1.0)  # survivors sort above the rest
    confident = (has & (best_kept >= score_thresh)).sum()
    count = confident.clamp(max=num_regions).clamp(min=min_regions)
    order = rank.argsort(descending=True)[:num_regions]
    chosen = cls[order]
    return {"boxes": boxes[order, 0 if agnostic else chosen], "scores": probs[order, chosen], "classes": chosen + 1,
            "features": feats[order], "count": count}


def clip_to(boxes: torch.Tensor, size) -> torch.Tensor:
    """(..., 4) xyxy clipped to [0, w] x [0, h]; (h, w) ints or 0-d tensors (kept as tensors when traced)."""
    h, w = size
    x = boxes[..., 0::2].clamp(min=0)
    y = boxes[..., 1::2].clamp(min=0)
    if isinstance(w, torch.Tensor):
        x, y = torch.minimum(x, w.to(boxes.dtype)), torch.minimum(y, h.to(boxes.dtype))
    else:
        x, y = x.clamp(max=w), y.clamp(max=h)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


class SquareRoIAlign(MultiScaleRoIAlign):
    """RoIAlign over the pyramid of a letterboxed square input.

    The feature maps cover the whole (size x size) square, so the level scales must come
    from the square, not from the content sizes torchvision is handed (those clip boxes).
    torchvision also keeps the scales of the first batch it pools: from content sizes, a
    first batch of elongated images would set wrong scales for every later image.
    """

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.size = size

    def forward(self, x, boxes, image_shapes):
        return super().forward(x, boxes, [(self.size, self.size)] * len(image_shapes))


class TEE(nn.Module):
    def __init__(self, config: TEEConfig):
        super().__init__()
        import timm

        if not config.classes:
            raise ValueError("a TEE needs at least one class: classes=((label_id, name), ...)")
        self.config = c = config
        self._folded_id: str | None = None  # the extractor id from before fold_batchnorms(), once folded
        self.backbone = timm.create_model(c.backbone, features_only=True, out_indices=(2, 3, 4),
                                          pretrained=c.pretrained_backbone)
        if tuple(self.backbone.feature_info.reduction()) != STRIDES[:3]:
            raise ValueError(f"backbone {c.backbone} must give strides 8/16/32, "
                             f"gives {self.backbone.feature_info.reduction()}")
        self.fpn = BiFPN(self.backbone.feature_info.channels(), c.fpn_channels, c.fpn_repeats)
        sizes = tuple(tuple(c.anchor_scale * s * o for o in c.anchor_octaves) for s in STRIDES)
        anchors = AnchorGenerator(sizes, (c.aspect_ratios,) * len(STRIDES))
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(c.fpn_channels, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=c.rpn_batch_per_image,
            positive_fraction=0.5, pre_nms_top_n=dict(training=c.rpn_pre_nms[0], testing=c.rpn_pre_nms[1]),
            post_nms_top_n=dict(training=c.rpn_post_nms[0], testing=c.rpn_post_nms[1]),
            nms_thresh=c.rpn_nms_thresh)
        # canonical_scale keeps the level mapping of a 224-px box at P4 relative to a 512 input
        pool = SquareRoIAlign(c.image_size, featmap_names=list(LEVELS), output_size=c.roi_output_size,
                              sampling_ratio=2, canonical_scale=max(1, round(224 * c.image_size / 512)),
                              canonical_level=4)
        self.roi_heads = RoIHeads(
            pool, SlimBoxHead(c.fpn_channels, c.head_channels, c.roi_output_size, c.feature_dim),
            BoxPredictor(c.feature_dim, c.num_classes, c.class_agnostic_boxes),
            fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=c.roi_batch_per_image,
            positive_fraction=0.25, bbox_reg_weights=None, score_thresh=c.candidate_thresh,
            nms_thresh=c.nms_thresh, detections_per_img=c.num_regions)
        self.attribute_head = nn.Linear(c.feature_dim, len(c.attributes)) if c.attributes else None

    # ---- pieces -------------------------------------------------------------------

    def pyramid(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, S, S) -> {p3: (B, C, S/8, S/8), ..., p7: (B, C, S/128, S/128)}"""
        return dict(zip(LEVELS, self.fpn(*self.backbone(pixels))))

    def prepare(self, images: Sequence) -> Batch:
        """HWC uint8 arrays or CHW tensors of any sizes -> one letterboxed batch."""
        if len(images) == 0:
            raise ValueError("prepare() needs at least one image")
        out, sizes, scales, originals = [], [], [], []
        for img in images:
            chw = to_chw(img)
            x, s, content = letterbox(chw, self.config.image_size)
            out.append(x)
            sizes.append(content)
            scales.append(s)
            originals.append(tuple(chw.shape[1:]))
        device = next(self.parameters()).device
        return Batch(torch.stack(out).to(device), sizes, scales, originals)

    def forward(self, pixels: torch.Tensor, sizes: list[tuple[int, int]],
                targets: list[dict[str, torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
        """Training step: letterboxed pixels + targets (boxes xyxy in letterboxed pixels, labels 1..K,
        possibly none) -> the four detection losses."""
        if targets is None or len(targets) != pixels.shape[0]:
            raise ValueError("forward() trains: pass one target dict per image (use extract() for inference)")
        feats = self.pyramid(pixels)
        images = ImageList(pixels, list(sizes))
        proposals, rpn_losses = self.rpn(images, feats, targets)
        return {**rpn_losses, **self._roi_losses(feats, proposals, images.image_sizes, targets)}

    def _roi_losses(self, feats, proposals, image_sizes, targets) -> dict[str, torch.Tensor]:
        """torchvision's RoIHeads training step, opened up so the attribute head sees which
        ground-truth box each sampled region matched."""
        heads = self.roi_heads
        proposals, matched, labels, regression_targets = heads.select_training_samples(proposals, targets)
        region_feats = heads.box_head(heads.box_roi_pool(feats, proposals, image_sizes))  # (R, D)
        logits, deltas = heads.box_predictor(region_feats)
        loss_cls, loss_box = fastrcnn_loss(logits, deltas, labels, regression_targets)
        losses = {"loss_classifier": loss_cls, "loss_box_reg": loss_box}
        if self.attribute_head is not None:
            losses["loss_attributes"] = self._attribute_loss(region_feats, matched, labels, targets)
        return losses

    def _attribute_loss(self, region_feats, matched, labels, targets) -> torch.Tensor:
        """Binary cross-entropy over the attributes of foreground regions whose box has any annotated."""
        chosen, wanted = [], []
        start = 0
        for idx, lab, target in zip(matched, labels, targets):
            rows = torch.arange(start, start + len(lab), device=lab.device)
            start += len(lab)
            if "attributes" not in target or not len(target["attributes"]):
                continue
            gt = idx.clamp(min=0)
            keep = (lab > 0) & target["attributes_known"][gt]
            chosen.append(rows[keep])
            wanted.append(target["attributes"][gt[keep]])
        logits = self.attribute_head(region_feats)  # (R, A)
        if not chosen or not sum(len(c) for c in chosen):
            return logits.sum() * 0.0  # no annotated region in this batch: a zero that keeps the graph whole
        return F.binary_cross_entropy_with_logits(logits[torch.cat(chosen)], torch.cat(wanted))

    @torch.inference_mode()
    def detect(self, batch: Batch) -> list[dict[str, torch.Tensor]]:
        """Letterboxed batch -> per image regions in letterboxed pixels (boxes, scores, classes, features)."""
        return [kept(det) for det in self.ranked_regions(batch.pixels, batch.sizes)]

    def ranked_regions(self, pixels: torch.Tensor, sizes) -> list[dict[str, torch.Tensor]]:
        """(B, 3, S, S) letterboxed pixels + content sizes (h, w) -> per image its best num_regions
        regions in order (rank_regions) and `count`, how many to keep; with an attribute head,
        "attributes" (n, A) probabilities. What detect() and the ONNX export (models.export) run;
        sizes may be 0-d tensors there, so the traced graph keeps them as inputs."""
        feats = self.pyramid(pixels)
        images = ImageList(pixels, list(sizes))
        proposals, _ = self.rpn(images, feats)
        heads = self.roi_heads
        roi = heads.box_roi_pool(feats, proposals, images.image_sizes)  # (R_total, C, 4, 4)
        region_feats = heads.box_head(roi)  # (R_total, D)
        logits, deltas = heads.box_predictor(region_feats)
        boxes = heads.box_coder.decode(deltas, proposals)  # (R_total, K+1 or 1 (class-agnostic), 4)
        probs = F.softmax(logits, -1)
        counts = [len(p) for p in proposals]

        def per_image(x: torch.Tensor):  # one image: no split, whose sizes a trace would freeze
            return x.split(counts) if len(counts) > 1 else (x,)

        c = self.config
        found = [rank_regions(b, p, f, size, candidate_thresh=c.candidate_thresh, nms_thresh=c.nms_thresh,
                              score_thresh=c.score_thresh, min_regions=c.min_regions, num_regions=c.num_regions)
                 for b, p, f, size in zip(per_image(boxes), per_image(probs), per_image(region_feats), sizes)]
        if self.attribute_head is not None:
            for det in found:
                det["attributes"] = torch.sigmoid(self.attribute_head(det["features"]))  # (n, A)
        return found

    def extract(self, images: Sequence) -> list[Regions]:
        """HWC uint8 images (any sizes) -> Regions per image, boxes normalised in the original image."""
        was_training = self.training
        self.eval()
        try:
            batch = self.prepare(images)
            found = self.detect(batch)
        finally:
            self.train(was_training)
        out = []
        for det, scale, (h, w) in zip(found, batch.scales, batch.originals):
            boxes = det["boxes"].float().cpu() / scale
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w) / w
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h) / h
            classes = det["classes"].cpu().numpy().astype(np.int64)
            out.append(Regions(
                boxes=boxes.numpy().astype(np.float32), scores=det["scores"].float().cpu().numpy(),
                classes=classes, labels=[self.config.classes[k - 1][0] for k in classes],
                names=[self.config.classes[k - 1][1] for k in classes],
                features=det["features"].float().cpu().numpy(),
                **self._attributes(det.get("attributes"))))
        return out

    def _attributes(self, probs: torch.Tensor | None) -> dict:
        """(n, A) probabilities -> per region the names scoring >= attribute_thresh, best first."""
        if probs is None:
            return {}
        names, scores = [], []
        for row in probs.float().cpu().numpy():
            order = [i for i in np.argsort(-row, kind="stable") if row[i] >= self.config.attribute_thresh]
            names.append([self.config.attributes[i][1] for i in order])
            scores.append([float(row[i]) for i in order])
        return {"attributes": names, "attribute_scores": scores}

    # ---- inference form -------------------------------------------------------------

    def fold_batchnorms(self) -> int:
        """Fold every batch norm into the convolution before it (models/fusion_bn.py), in place, for
        inference: the same features to float rounding, ~5% less TEE time (docs/benchmarks.md).
        The folded TEE keeps its extractor id and cannot train or be saved. Returns how many."""
        from models.fusion_bn import fold_batchnorms

        if self.folded:
            return 0
        identity = self.extractor_id()  # of the weights as trained: rows and checks keep naming them
        self.eval()
        s = self.config.image_size
        device = next(self.parameters()).device
        with torch.inference_mode():
            folded = fold_batchnorms(self, lambda: self.pyramid(torch.zeros(1, 3, s, s, device=device)))
        self._folded_id = identity
        return folded

    @property
    def folded(self) -> bool:
        return self._folded_id is not None

    def train(self, mode: bool = True) -> "TEE":
        if mode and self.folded:
            raise RuntimeError("this TEE's batch norms are folded for inference: it cannot train; load it again")
        return super().train(mode)

    # ---- identity and persistence -------------------------------------------------

    def extractor_id(self) -> str:
        """sha256 of the config and every weight: equal ids mean equal features for equal pixels."""
        if self.folded:
            return self._folded_id
        h = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        for name, t in sorted(self.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return f"{self.config.name}-{h.hexdigest()[:16]}"

    def save_pretrained(self, directory: str) -> str:
        """Write config.json + model.safetensors (local or fsspec URL); returns the extractor id."""
        if self.folded:
            raise RuntimeError("this TEE's batch norms are folded for inference: save the TEE it was loaded from")
        eid = self.extractor_id()
        write_model(directory, {**self.config.to_dict(), "extractor_id": eid}, self.state_dict(),
                    metadata={"extractor_id": eid})
        return eid

    @classmethod
    def from_pretrained(cls, directory: str, map_location: str = "cpu") -> "TEE":
        """Load from a directory (local, gs://, s3://) written by save_pretrained; NotATEE for a
        student or a training run folder."""
        data, state = _read_tee(directory)
        data.pop("extractor_id", None)
        config = replace(TEEConfig.from_dict(data), pretrained_backbone=False)  # weights come from the file
        model = cls(config)
        model.load_state_dict(state, strict=True)
        return model.to(map_location).eval()


class NotATEE(ValueError):
    """A directory given as a TEE holds something else: "<dir> is a MiniVLM student, not a TEE"."""


# A student's config.json (models/minivlm.py, which imports this module, so its config class
# cannot be imported here) carries model_type "minivlm" and these fusion fields; a TEE's never does.
STUDENT_KEYS = frozenset({"num_layers", "region_feature_dim"})


def is_student_config(data: dict) -> bool:
    return data.get("model_type") == "minivlm" or STUDENT_KEYS <= set(data)


def is_tee_config(data: dict) -> bool:
    return {"backbone", "fpn_channels"} <= set(data)


def _read_tee(directory: str) -> tuple[dict, dict]:
    """(config, weights) of a saved TEE. A student, or a training run folder, is named as what it
    is (NotATEE), not reported as a list of config keys a TEE does not know or as missing files."""
    try:
        data, state = read_model(directory, "TEE")
    except FileNotFoundError as e:
        inner = _config_in(f"{directory.rstrip('/')}/model")
        if inner is None:
            raise
        if is_student_config(inner):
            raise NotATEE(f"{directory} is a training run folder holding a MiniVLM student, not a TEE") from e
        raise NotATEE(f"{directory} is a training run folder, not a TEE: its TEE is "
                      f"{directory.rstrip('/')}/model") from e
    if is_student_config(data):
        raise NotATEE(f"{directory} is a MiniVLM student, not a TEE")
    return data, state


def _config_in(directory: str) -> dict | None:
    """The config.json of a model directory, or None when there is none (or it is not JSON)."""
    import fsspec

    try:
        with fsspec.open(f"{directory}/config.json", "r") as f:
            data = json.load(f)
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---- registry: configs as data, one build path ------------------------------------
# Registered configs carry no classes: those come from the dataset a TEE is trained on.

_CONFIGS: dict[str, TEEConfig] = {}


def register_tee(config: TEEConfig) -> TEEConfig:
    if config.name in _CONFIGS:
        raise ValueError(f"TEE config {config.name!r} is already registered")
    _CONFIGS[config.name] = config
    return config


def list_tees() -> list[str]:
    return sorted(_CONFIGS)


def tee_config(name: str, **overrides) -> TEEConfig:
    if name not in _CONFIGS:
        raise ValueError(f"unknown TEE config {name!r}; registered: {', '.join(list_tees())}")
    return replace(_CONFIGS[name], **overrides)


def build_tee(name: str, *, classes=None, seed: int | None = 0, **overrides) -> TEE:
    """A freshly initialised TEE of a registered config (seeded: the same seed gives the same weights).

    `classes` ((label id, name) pairs) default to the bundled tag vocabulary.
    """
    config = tee_config(name, classes=tuple(map(tuple, classes or default_classes())), **overrides)
    if seed is None:
        return TEE(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TEE(config)


def default_classes() -> tuple[tuple[str, str], ...]:
    """The bundled tag vocabulary: the classes of a TEE that was not trained on a dataset."""
    return tuple(load_vocab(DEFAULT_VOCAB))  # the same vocabulary the tagger teacher uses by default


# EfficientDet-D0-sized: the product's TEE (input 512, B0, BiFPN 64 x 3).
# Class-agnostic boxes since the size trials (docs/benchmarks.md#size-and-speed-trials): 3.28 M
# fewer weights at 1,600 classes and 1.18x faster, mAP and CIDEr-D within noise. TEEs saved
# before keep their class-specific heads (an absent field reads as False).
register_tee(TEEConfig(name="tee-d0", class_agnostic_boxes=True))
# Small enough for tests and CPU learning checks; the same code paths.
register_tee(TEEConfig(name="tee-tiny", backbone="tinynet_e", image_size=128, fpn_channels=32, fpn_repeats=1,
                       anchor_octaves=(1.0, 1.5), rpn_pre_nms=(300, 200), rpn_post_nms=(200, 100),
                       rpn_batch_per_image=128, roi_batch_per_image=64, head_channels=32, feature_dim=64,
                       num_regions=20, class_agnostic_boxes=True))


def tiny_name(ref: str) -> str | None:
    """The registered config a small-random reference names (`tiny` -> tee-tiny, `tiny:<name>`), else None."""
    return registry.tiny_name(ref, _CONFIGS, "TEE", {"tiny": "tee-tiny"})


def load_tee(ref: str, *, cache_dir: str | None = None, map_location: str = "cpu") -> tuple[TEE, str]:
    """A TEE by reference -> (model in eval mode, provenance).

    `tiny` (or `tiny:<registered name>`) is a seeded random TEE, saved to the cache and
    loaded back through from_pretrained like any other (provenance `tiny-random/<name>`);
    anything else is a directory written by save_pretrained: local, gs:// or s3://.
    """
    name = tiny_name(ref)
    if name:
        root = cache_dir or os.environ.get("MINIVLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                             "minivlm")
        # the registered config's digest in the name: a cache made before a config changed is not reused
        digest = hashlib.sha256(json.dumps(tee_config(name).to_dict(), sort_keys=True).encode()).hexdigest()[:8]
        directory = os.path.join(root, "tee", f"{name}-seed0-{digest}")
        if not os.path.exists(os.path.join(directory, WEIGHTS_NAME)):
            tmp = f"{directory}.tmp-{os.getpid()}"
            build_tee(name, seed=0).save_pretrained(tmp)
            os.makedirs(os.path.dirname(directory), exist_ok=True)
            try:
                os.replace(tmp, directory)
            except OSError:  # another process published it first
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
        return TEE.from_pretrained(directory, map_location), f"tiny-random/{name}"
    return TEE.from_pretrained(ref, map_location), ref
