"""Depth-guided keypoint detector (DaGAN Sec. 3.2): an hourglass on RGB + disparity gives K keypoints as the
expectations of spatial-softmax heatmaps, and a 2x2 Jacobian per keypoint (FOMM Eq. 4-5)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from dagan.geometry import Keypoints, heatmap_to_keypoints
from dagan.networks.blocks import AntiAliasDownsample, Hourglass


class KeypointDetector(nn.Module):
    """(B, C, H, W) image (+ disparity channel for the RGB-D detector) in [0, 1] -> :class:`Keypoints`.

    With ``scale_factor`` 0.25 and 256x256 input the hourglass runs at 64x64 and the 7x7 unpadded heads
    (``pad`` 0) give 58x58 heatmaps. State-dict keys match the official ``kp_detector``.
    """

    def __init__(self, block_expansion: int, num_kp: int, num_channels: int, max_features: int,
                 num_blocks: int, temperature: float, estimate_jacobian: bool = False,
                 scale_factor: float = 1.0, single_jacobian_map: bool = False, pad: int = 0):
        super().__init__()
        self.predictor = Hourglass(block_expansion, in_features=num_channels, max_features=max_features,
                                   num_blocks=num_blocks)
        self.kp = nn.Conv2d(self.predictor.out_filters, num_kp, kernel_size=7, padding=pad)
        self.jacobian: Optional[nn.Conv2d] = None
        self.num_jacobian_maps = 1 if single_jacobian_map else num_kp
        if estimate_jacobian:
            self.jacobian = nn.Conv2d(self.predictor.out_filters, 4 * self.num_jacobian_maps, kernel_size=7, padding=pad)
            nn.init.zeros_(self.jacobian.weight)  # start at the identity Jacobian
            with torch.no_grad():
                self.jacobian.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 1.0] * self.num_jacobian_maps))
        self.temperature = temperature
        self.down = AntiAliasDownsample(num_channels, scale_factor) if scale_factor != 1 else None
        self.num_kp = num_kp

    def forward(self, image: torch.Tensor) -> Keypoints:
        if self.down is not None:
            image = self.down(image)
        feature_map = self.predictor(image)
        logits = self.kp(feature_map)  # (B, K, h, w)
        batch, num_kp, height, width = logits.shape
        heatmap = F.softmax(logits.view(batch, num_kp, -1) / self.temperature, dim=2)
        heatmap = heatmap.view(batch, num_kp, height, width)
        value = heatmap_to_keypoints(heatmap)
        if self.jacobian is None:
            return Keypoints(value, None)
        jacobian_map = self.jacobian(feature_map).view(batch, self.num_jacobian_maps, 4, height, width)
        jacobian = (heatmap.unsqueeze(2) * jacobian_map).view(batch, num_kp, 4, -1).sum(dim=-1)
        return Keypoints(value, jacobian.view(batch, num_kp, 2, 2))
