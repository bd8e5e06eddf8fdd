"""BiFPN: EfficientDet's weighted bidirectional feature pyramid (Tan et al., 2020).

Backbone levels P3-P5 are projected to `channels`; P6 and P7 are made by striding
down from P5. Each BiFPN layer runs one top-down and one bottom-up pass; every node
fuses its inputs with learned non-negative weights ("fast normalised fusion"), then
applies a depthwise-separable 3x3 conv. Written here rather than taken from effdet,
whose pinned timm internals move between timm releases.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 + pointwise 1x1 + BN: ~9x cheaper than a dense 3x3 at 64 channels."""

    def __init__(self, channels: int):
        super().__init__(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels, momentum=0.01, eps=1e-3),
        )


class FusionNode(nn.Module):
    """Weighted sum of same-shape inputs -> SiLU -> separable conv."""

    def __init__(self, num_inputs: int, channels: int, eps: float = 1e-4):
        super().__init__()
        self.weights = nn.Parameter(torch.ones(num_inputs))
        self.conv = SeparableConv(channels)
        self.eps = eps

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        w = F.relu(self.weights)
        w = w / (w.sum() + self.eps)
        fused = sum(wi * x for wi, x in zip(w, inputs))
        return self.conv(F.silu(fused))


def _resize_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Nearest up/down-sampling to ref's spatial size (exact x2 for sizes divisible by 128)."""
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    if x.shape[-1] > ref.shape[-1]:  # going down: max-pool as EfficientDet does
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        if x.shape[-2:] == ref.shape[-2:]:
            return x
    return F.interpolate(x, size=ref.shape[-2:], mode="nearest")


class BiFPNLayer(nn.Module):
    """One top-down + bottom-up pass over 5 levels (P3..P7), all `channels` wide."""

    def __init__(self, channels: int, num_levels: int = 5):
        super().__init__()
        self.num_levels = num_levels
        # top-down: P6td..P3out, two inputs each
        self.down = nn.ModuleList(FusionNode(2, channels) for _ in range(num_levels - 1))
        # bottom-up: P4out..P6out take three inputs (input, td, lower out), P7out two
        self.up = nn.ModuleList(FusionNode(3 if i < num_levels - 2 else 2, channels)
                                for i in range(num_levels - 1))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        # feats: [P3 .. P7], each (B, C, H_l, W_l), finest first
        n = self.num_levels
        td = [None] * n
        td[-1] = feats[-1]
        for i in range(n - 2, -1, -1):  # P6 .. P3
            td[i] = self.down[i]([feats[i], _resize_to(td[i + 1], feats[i])])
        out = [None] * n
        out[0] = td[0]
        for i in range(1, n):  # P4 .. P7
            lower = _resize_to(out[i - 1], feats[i])
            inputs = [feats[i], td[i], lower] if i < n - 1 else [feats[i], lower]
            out[i] = self.up[i - 1](inputs)
        return out


class BiFPN(nn.Module):
    """Backbone features (strides 8, 16, 32) -> 5 pyramid levels P3..P7 of `channels`."""

    def __init__(self, in_channels: list[int], channels: int = 64, repeats: int = 3):
        super().__init__()
        if len(in_channels) != 3:
            raise ValueError(f"BiFPN takes three backbone levels (strides 8, 16, 32), got {len(in_channels)}")
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, channels, 1, bias=False), nn.BatchNorm2d(channels, momentum=0.01, eps=1e-3))
            for c in in_channels
        )
        self.p6 = nn.Sequential(nn.Conv2d(in_channels[-1], channels, 1, bias=False),
                                nn.BatchNorm2d(channels, momentum=0.01, eps=1e-3),
                                nn.MaxPool2d(3, stride=2, padding=1))
        self.p7 = nn.MaxPool2d(3, stride=2, padding=1)
        self.layers = nn.Sequential(*(BiFPNLayer(channels) for _ in range(repeats)))

    def forward(self, c3: torch.Tensor, c4: torch.Tensor, c5: torch.Tensor) -> list[torch.Tensor]:
        p3, p4, p5 = (lat(c) for lat, c in zip(self.lateral, (c3, c4, c5)))
        p6 = self.p6(c5)
        p7 = self.p7(p6)
        return self.layers([p3, p4, p5, p6, p7])
