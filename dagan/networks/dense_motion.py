"""Dense motion with occlusion (FOMM Sec. 3.2, used unchanged by DaGAN): sparse keypoint motions are blended
by predicted soft masks into one dense backward flow, and an occlusion map is predicted alongside."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from dagan.geometry import Keypoints, inverse_2x2, keypoints_to_gaussian, make_coordinate_grid, warp
from dagan.networks.blocks import AntiAliasDownsample, Hourglass


class DenseMotion(NamedTuple):
    """deformation: (B, h, w, 2) driving->source sampling grid; occlusion_map: (B, 1, h, w) or None;
    mask: (B, K+1, h, w) softmax weights (channel 0 = background); sparse_deformed: (B, K+1, C, h, w)."""

    deformation: torch.Tensor
    occlusion_map: Optional[torch.Tensor]
    mask: torch.Tensor
    sparse_deformed: torch.Tensor


def sparse_motions(kp_source: Keypoints, kp_driving: Keypoints, height: int, width: int) -> torch.Tensor:
    """First-order motion per keypoint, plus the identity for the background: (B, K+1, h, w, 2).

    T_k(z) = kp_source_k + J_source_k J_driving_k^-1 (z - kp_driving_k)   (FOMM Eq. 4)
    """
    value_driving = kp_driving.value
    batch, num_kp, _ = value_driving.shape
    identity = make_coordinate_grid(height, width, value_driving.dtype, value_driving.device).view(1, 1, height, width, 2)
    relative = identity - value_driving.view(batch, num_kp, 1, 1, 2)  # (B, K, h, w, 2)
    if kp_driving.jacobian is not None:
        jacobian = torch.matmul(kp_source.jacobian, inverse_2x2(kp_driving.jacobian))  # (B, K, 2, 2)
        relative = torch.matmul(jacobian.view(batch, num_kp, 1, 1, 2, 2), relative.unsqueeze(-1)).squeeze(-1)
    driving_to_source = relative + kp_source.value.view(-1, num_kp, 1, 1, 2)  # a batch-1 source broadcasts
    return torch.cat([identity.expand(batch, 1, height, width, 2), driving_to_source], dim=1)


class DenseMotionNetwork(nn.Module):
    """Source image (B, C, H, W) + keypoints -> :class:`DenseMotion` at H*scale_factor x W*scale_factor."""

    def __init__(self, block_expansion: int, num_blocks: int, max_features: int, num_kp: int, num_channels: int,
                 estimate_occlusion_map: bool = False, scale_factor: float = 1.0, kp_variance: float = 0.01):
        super().__init__()
        self.hourglass = Hourglass(block_expansion, in_features=(num_kp + 1) * (num_channels + 1),
                                   max_features=max_features, num_blocks=num_blocks)
        self.mask = nn.Conv2d(self.hourglass.out_filters, num_kp + 1, kernel_size=7, padding=3)
        self.occlusion = (nn.Conv2d(self.hourglass.out_filters, 1, kernel_size=7, padding=3)
                          if estimate_occlusion_map else None)
        self.down = AntiAliasDownsample(num_channels, scale_factor) if scale_factor != 1 else None
        self.num_kp = num_kp
        self.kp_variance = kp_variance

    def heatmap_representation(self, kp_source: Keypoints, kp_driving: Keypoints, height: int, width: int
                               ) -> torch.Tensor:
        """Gaussian(driving) - Gaussian(source), with a zero background channel first: (B, K+1, 1, h, w)."""
        heatmap = (keypoints_to_gaussian(kp_driving.value, height, width, self.kp_variance)
                   - keypoints_to_gaussian(kp_source.value, height, width, self.kp_variance))
        background = torch.zeros_like(heatmap[:, :1])
        return torch.cat([background, heatmap], dim=1).unsqueeze(2)

    @staticmethod
    def deform_source(source: torch.Tensor, motions: torch.Tensor) -> torch.Tensor:
        """Warp the source (B, C, h, w) by each sparse motion (B, K+1, h, w, 2): (B, K+1, C, h, w)."""
        batch, channels, height, width = source.shape
        num_motions = motions.shape[1]
        repeated = source.unsqueeze(1).expand(batch, num_motions, channels, height, width)
        deformed = warp(repeated.reshape(batch * num_motions, channels, height, width),
                        motions.reshape(batch * num_motions, height, width, 2))
        return deformed.view(batch, num_motions, channels, height, width)

    def forward(self, source: torch.Tensor, kp_source: Keypoints, kp_driving: Keypoints) -> DenseMotion:
        if self.down is not None:
            source = self.down(source)
        batch, _, height, width = source.shape
        motions = sparse_motions(kp_source, kp_driving, height, width)
        sparse_deformed = self.deform_source(source, motions)
        heatmaps = self.heatmap_representation(kp_source, kp_driving, height, width)
        features = torch.cat([heatmaps, sparse_deformed], dim=2).view(batch, -1, height, width)  # (B, (K+1)(C+1), h, w)
        prediction = self.hourglass(features)
        mask = F.softmax(self.mask(prediction), dim=1)  # (B, K+1, h, w)
        deformation = (motions * mask.unsqueeze(-1)).sum(dim=1)  # (B, h, w, 2)  (FOMM Eq. 6)
        occlusion_map = torch.sigmoid(self.occlusion(prediction)) if self.occlusion is not None else None
        return DenseMotion(deformation, occlusion_map, mask, sparse_deformed)
