"""Batch-norm folding for frozen inference networks.

In eval mode BatchNorm is the per-channel affine map y = gamma (x - mean) / sqrt(var + eps) + beta. When it
directly follows a convolution (no non-linearity in between) it folds into that convolution's weights and bias:

    W' = W * s,  b' = (b - mean) * s + beta,  s = gamma / sqrt(var + eps)   (per output channel)

which removes one full pass over every activation it touched. Only the pairs listed in :data:`FOLDABLE` are
folded: blocks whose norm comes right after the conv. The pre-activation ``norm1`` of a residual block (it sees
the block input, after the skip addition) stays. Folding is exact up to float rounding (computed in float64).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from dagan.networks.backbones import BasicBlock, Bottleneck, ResNet
from dagan.networks.blocks import DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d

# Block type -> (conv attribute, batch-norm attribute) pairs where the norm reads the conv's output directly.
FOLDABLE: dict[type, tuple[tuple[str, str], ...]] = {
    SameBlock2d: (("conv", "norm"),),
    DownBlock2d: (("conv", "norm"),),
    UpBlock2d: (("conv", "norm"),),
    ResBlock2d: (("conv1", "norm2"),),
    BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
    Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    ResNet: (("conv1", "bn1"),),
}


@torch.no_grad()
def fold_into_conv(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    """Fold eval-mode ``norm`` (which reads ``conv``'s output) into ``conv`` in place."""
    scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)  # (C_out,)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    conv.weight.copy_(conv.weight.double() * scale.view(-1, 1, 1, 1))
    folded_bias = (bias - norm.running_mean.double()) * scale + norm.bias.double()
    if conv.bias is None:
        conv.bias = nn.Parameter(folded_bias.to(conv.weight.dtype), requires_grad=False)
    else:
        conv.bias.copy_(folded_bias)


def fold_batch_norms(module: nn.Module) -> int:
    """Fold every foldable (conv, BatchNorm) pair of ``module`` in place; returns how many were folded.

    The module must be frozen (eval mode, inference only): the folded norms become ``nn.Identity``. Besides the
    :data:`FOLDABLE` pairs, ResNet shortcuts ``Sequential(conv1x1, BatchNorm)`` are folded too.
    """
    folded = 0
    for block in list(module.modules()):
        pairs = [(block, conv_name, block, norm_name) for conv_name, norm_name in FOLDABLE.get(type(block), ())]
        shortcut = getattr(block, "downsample", None) if isinstance(block, (BasicBlock, Bottleneck)) else None
        if isinstance(shortcut, nn.Sequential) and len(shortcut) == 2:
            pairs.append((shortcut, "0", shortcut, "1"))
        for conv_owner, conv_name, norm_owner, norm_name in pairs:
            norm = getattr(norm_owner, norm_name)
            if isinstance(norm, nn.BatchNorm2d):
                fold_into_conv(getattr(conv_owner, conv_name), norm)
                setattr(norm_owner, norm_name, nn.Identity())
                folded += 1
    return folded


def frozen_for_inference(model: nn.Module, skip: tuple[str, ...] = ("discriminator",)) -> nn.Module:
    """A copy of ``model`` for inference: eval mode, no gradients, batch norms folded. Children named in
    ``skip`` (unused at inference) are not copied: they are None in the copy. ``model`` is left unchanged."""
    skipped = {name: getattr(model, name) for name in skip if getattr(model, name, None) is not None}
    for name in skipped:
        setattr(model, name, None)
    try:
        frozen = copy.deepcopy(model)
    finally:
        for name, child in skipped.items():
            setattr(model, name, child)
    frozen.eval().requires_grad_(False)
    fold_batch_norms(frozen)
    return frozen
