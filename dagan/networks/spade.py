"""SPADE decoder of the released SPADEDepthAwareGenerator (spatially-adaptive normalisation, Park et al. 2019).

The segmentation-like conditioning map is 7 channels: 4 compressed feature channels (nearest-resized to the
image size) and the occluded, warped source image. Convolutions in the residual blocks use the classic
``torch.nn.utils.spectral_norm`` hook so that state-dict keys are ``weight_orig`` / ``weight_u`` / ``weight_v`` as
in the release; in eval mode the hook uses the stored u, v without power iteration.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from dagan.networks.blocks import spectral_norm

HIDDEN_CHANNELS = 128
COMPRESSED_CHANNELS = 4
OUTPUT_WIDTH = 64


class SPADE(nn.Module):
    """x (B, C, h, w), condition (B, L, H, W) -> InstanceNorm(x) * (1 + gamma) + beta."""

    def __init__(self, channels: int, condition_channels: int):
        super().__init__()
        self.param_free_norm = nn.InstanceNorm2d(channels, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(condition_channels, HIDDEN_CHANNELS, kernel_size=3, padding=1),
                                        nn.ReLU())
        self.mlp_gamma = nn.Conv2d(HIDDEN_CHANNELS, channels, kernel_size=3, padding=1)
        self.mlp_beta = nn.Conv2d(HIDDEN_CHANNELS, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        condition = F.interpolate(condition, size=x.shape[2:], mode="nearest")
        hidden = self.mlp_shared(condition)
        return self.param_free_norm(x) * (1 + self.mlp_gamma(hidden)) + self.mlp_beta(hidden)


class SPADEResnetBlock(nn.Module):
    """Residual block with SPADE norms and leaky-ReLU(0.2); a learned 1x1 shortcut when widths differ."""

    def __init__(self, in_channels: int, out_channels: int, condition_channels: int):
        super().__init__()
        middle = min(in_channels, out_channels)
        self.learned_shortcut = in_channels != out_channels
        self.conv_0 = spectral_norm(nn.Conv2d(in_channels, middle, kernel_size=3, padding=1))
        self.conv_1 = spectral_norm(nn.Conv2d(middle, out_channels, kernel_size=3, padding=1))
        self.norm_0 = SPADE(in_channels, condition_channels)
        self.norm_1 = SPADE(middle, condition_channels)
        if self.learned_shortcut:
            self.conv_s = spectral_norm(nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False))
            self.norm_s = SPADE(in_channels, condition_channels)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_s(self.norm_s(x, condition)) if self.learned_shortcut else x
        out = self.conv_0(F.leaky_relu(self.norm_0(x, condition), 0.2))
        out = self.conv_1(F.leaky_relu(self.norm_1(out, condition), 0.2))
        return shortcut + out


class SPADEDecoder(nn.Module):
    """Refined features (B, 256, 64, 64) + occluded warped source (B, 3, 256, 256) -> image (B, 3, 256, 256).

    fc 256->512, three 512-wide blocks at 64x64, x2 -> block 512->256, x2 -> block 256->64, conv 64->3, sigmoid.
    """

    def __init__(self, feature_channels: int = 256):
        super().__init__()
        condition_channels = 3 + COMPRESSED_CHANNELS
        wide = 2 * feature_channels
        self.compress = nn.Conv2d(feature_channels, COMPRESSED_CHANNELS, kernel_size=3, padding=1)
        self.fc = nn.Conv2d(feature_channels, wide, kernel_size=3, padding=1)
        self.G_middle_0 = SPADEResnetBlock(wide, wide, condition_channels)
        self.G_middle_1 = SPADEResnetBlock(wide, wide, condition_channels)
        self.G_middle_2 = SPADEResnetBlock(wide, wide, condition_channels)
        self.up_0 = SPADEResnetBlock(wide, feature_channels, condition_channels)
        self.up_1 = SPADEResnetBlock(feature_channels, OUTPUT_WIDTH, condition_channels)
        self.conv_img = nn.Conv2d(OUTPUT_WIDTH, 3, kernel_size=3, padding=1)
        self.level_channels = {1: feature_channels, 2: OUTPUT_WIDTH}  # widths after up_0 (x2) and up_1 (x4)
        self.output_channels = OUTPUT_WIDTH

    def forward(self, features: torch.Tensor, occluded_deformed: torch.Tensor,
                refine: Optional[Callable[[int, torch.Tensor], torch.Tensor]] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> image (B, 3, H, W) in [0, 1] and the last features (B, 64, H, W). ``refine(level, x)`` (DaGAN++)
        refines the output of up_0 (level 1) and up_1 (level 2)."""
        refine = refine or (lambda level, x: x)
        compressed = F.interpolate(self.compress(features), size=occluded_deformed.shape[2:], mode="nearest")
        condition = torch.cat([compressed, occluded_deformed], dim=1)  # (B, 7, H, W)
        x = self.fc(features)
        for block in (self.G_middle_0, self.G_middle_1, self.G_middle_2):
            x = block(x, condition)
        x = refine(1, self.up_0(F.interpolate(x, scale_factor=2, mode="nearest"), condition))
        x = refine(2, self.up_1(F.interpolate(x, scale_factor=2, mode="nearest"), condition))
        return torch.sigmoid(self.conv_img(F.leaky_relu(x, 0.2))), x
