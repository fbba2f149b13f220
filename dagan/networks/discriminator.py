"""Multi-scale patch discriminator conditioned on driving-keypoint heatmaps (FOMM / pix2pix style)."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from dagan.geometry import keypoints_to_gaussian
from dagan.networks.blocks import spectral_norm


class DiscriminatorOutput(NamedTuple):
    """feature_maps: one list of block outputs per scale; prediction_maps: (B, 1, h, w) per scale."""

    feature_maps: dict[str, list[torch.Tensor]]
    prediction_maps: dict[str, torch.Tensor]


class DiscriminatorBlock(nn.Module):
    """4x4 unpadded conv -> [InstanceNorm] -> LeakyReLU(0.2) -> [2x2 average pool]."""

    def __init__(self, in_features: int, out_features: int, norm: bool, pool: bool, sn: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=4)
        if sn:
            self.conv = spectral_norm(self.conv)
        self.norm = nn.InstanceNorm2d(out_features, affine=True) if norm else None
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.norm is not None:
            out = self.norm(out)
        out = F.leaky_relu(out, 0.2)
        return F.avg_pool2d(out, 2) if self.pool else out


class Discriminator(nn.Module):
    """Image (B, C, H, W) [+ keypoint heatmaps] -> block feature maps and a patch prediction map."""

    def __init__(self, num_channels: int = 3, block_expansion: int = 64, num_blocks: int = 4,
                 max_features: int = 512, sn: bool = False, use_kp: bool = False, num_kp: int = 10,
                 kp_variance: float = 0.01):
        super().__init__()
        blocks = []
        for index in range(num_blocks):
            in_features = num_channels + num_kp * use_kp if index == 0 else min(max_features, block_expansion * 2 ** index)
            blocks.append(DiscriminatorBlock(in_features, min(max_features, block_expansion * 2 ** (index + 1)),
                                             norm=index != 0, pool=index != num_blocks - 1, sn=sn))
        self.down_blocks = nn.ModuleList(blocks)
        self.conv = nn.Conv2d(min(max_features, block_expansion * 2 ** num_blocks), 1, kernel_size=1)
        self.use_kp = use_kp
        self.kp_variance = kp_variance

    def forward(self, image: torch.Tensor, kp_value: Optional[torch.Tensor] = None
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
        out = image
        if self.use_kp:
            heatmaps = keypoints_to_gaussian(kp_value, image.shape[2], image.shape[3], self.kp_variance)
            out = torch.cat([out, heatmaps.to(image.dtype)], dim=1)
        feature_maps = []
        for block in self.down_blocks:
            out = block(out)
            feature_maps.append(out)
        return feature_maps, self.conv(out)


def scale_key(scale: float) -> str:
    """ModuleDict key of a scale, as in the release: 1 -> '1', 0.5 -> '0-5'."""
    return str(scale).replace(".", "-")


class MultiScaleDiscriminator(nn.Module):
    """One :class:`Discriminator` per pyramid scale, keyed ``discs.<scale>`` as in the official checkpoints."""

    def __init__(self, scales: list[float] = (1,), **kwargs):
        super().__init__()
        self.scales = [int(scale) if float(scale).is_integer() else scale for scale in scales]
        self.discs = nn.ModuleDict({scale_key(scale): Discriminator(**kwargs) for scale in self.scales})

    def forward(self, pyramid: dict[str, torch.Tensor], kp_value: Optional[torch.Tensor] = None) -> DiscriminatorOutput:
        """pyramid: {'prediction_<scale>': (B, C, H*scale, W*scale)}, as :class:`ImagePyramid` returns it."""
        feature_maps, prediction_maps = {}, {}
        for scale in self.scales:
            name = str(scale)
            maps, prediction = self.discs[scale_key(scale)](pyramid[f"prediction_{name}"], kp_value)
            feature_maps[name] = maps
            prediction_maps[name] = prediction
        return DiscriminatorOutput(feature_maps, prediction_maps)
