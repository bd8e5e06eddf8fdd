"""Fold inference-mode batch norms into the convolutions that feed them.

In eval mode a BatchNorm is an affine map per channel, y = (x - mean) / sqrt(var + eps) * gamma
+ beta; when x is a convolution's output, the map folds into that convolution's weights and
bias, and the BatchNorm op (a full pass over the feature map) disappears. The TEE has 76
(48 in the EfficientNet backbone, 28 in the BiFPN).

Pairs are found by running the model once, not by names: a BatchNorm is folded only where
its input is the very tensor a Conv2d returned, each runs once, and the norm is that
tensor's only use (every torch function call is watched, so a residual sum of the conv's
output keeps its norm). The folded model computes the same function to float rounding (tested) and is
for inference only: it cannot train or be saved as the unfolded one.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

BATCH_NORM_FUNCTIONS = (torch.nn.functional.batch_norm, torch.batch_norm)


def _bn_act_tail(bn: nn.Module) -> nn.Module:
    """What is left of a BatchNorm once its affine map is folded: timm's BatchNormAct2d keeps its
    dropout and activation (its forward: bn -> drop -> act); a plain BatchNorm2d, nothing."""
    drop, act = getattr(bn, "drop", None), getattr(bn, "act", None)
    if drop is None and act is None:
        return nn.Identity()
    return nn.Sequential(drop or nn.Identity(), act or nn.Identity())


class _ConsumersOf(TorchFunctionMode):
    """Records, for every watched tensor, the torch functions that take it and return a tensor
    (shape and dtype queries are not uses). Nested calls inside one function are not seen."""

    def __init__(self, watched: dict[int, str]):
        super().__init__()
        self.watched = watched  # id(tensor) -> its producer; filled while the model runs
        self.uses: dict[int, list] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if any(isinstance(t, torch.Tensor) for t in tree_flatten(out)[0]):
            for t in tree_flatten((args, kwargs))[0]:
                if isinstance(t, torch.Tensor) and id(t) in self.watched:
                    self.uses.setdefault(id(t), []).append(func)
        return out


def find_conv_bn_pairs(model: nn.Module, run: Callable[[], object]) -> list[tuple[str, str]]:
    """(conv name, bn name) for every BatchNorm2d whose input is a Conv2d's output and that output's
    only use (a residual sum of the conv's output would change if the norm were folded into it).

    `run()` runs the model once (any input: only the wiring is looked at)."""
    produced: dict[int, str] = {}  # id(conv output) -> the conv
    keep: list[torch.Tensor] = []  # conv outputs and norm inputs, alive for the run so that ids stay unique
    calls: dict[str, int] = {}
    bn_input: dict[str, int] = {}
    handles = []

    def count(name):
        def hook(module, args):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(module, nn.BatchNorm2d) and args and isinstance(args[0], torch.Tensor):
                bn_input[name] = id(args[0])
                keep.append(args[0])  # alive, so no later conv output can take its id
        return hook

    def conv_output(name):
        def hook(module, args, output):
            produced[id(output)] = name
            keep.append(output)
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):
            handles.append(module.register_forward_pre_hook(count(name)))
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_output(name)))
    consumers = _ConsumersOf(produced)
    try:
        with torch.no_grad(), consumers:
            run()
    finally:
        for h in handles:
            h.remove()
    pairs = []
    for bn, tensor in bn_input.items():
        conv = produced.get(tensor)
        uses = consumers.uses.get(tensor, [])
        if (conv is not None and calls.get(conv) == 1 and calls.get(bn) == 1 and len(uses) == 1
                and uses[0] in BATCH_NORM_FUNCTIONS):
            pairs.append((conv, bn))
    folded_into = [conv for conv, _ in pairs]
    assert len(set(folded_into)) == len(folded_into), "one conv output, one use: a conv feeds at most one norm"
    return pairs


def fold_batchnorms(model: nn.Module, run: Callable[[], object]) -> int:
    """Fold every BatchNorm2d that find_conv_bn_pairs finds into its conv, in place; returns how many.

    The model must be in eval mode (running statistics are what gets folded)."""
    if model.training:
        raise ValueError("fold_batchnorms needs a model in eval mode: training batch norms use batch statistics")
    pairs = find_conv_bn_pairs(model, run)
    modules = dict(model.named_modules())
    for conv_name, bn_name in pairs:
        conv, bn = modules[conv_name], modules[bn_name]
        if bn.running_mean is None or bn.running_var is None:
            continue  # no running statistics: not an affine map in eval mode
        gamma = bn.weight if bn.affine else torch.ones_like(bn.running_mean)
        beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                            gamma, beta)
        conv.weight, conv.bias = weight, bias
        parent_name, _, attr = bn_name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, attr, _bn_act_tail(bn))
    return len(pairs)
