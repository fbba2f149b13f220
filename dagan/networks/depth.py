"""Self-supervised face depth network (DaGAN Sec. 3.1; DaGAN++ Sec. 3.1).

* :class:`DepthEncoder` + :class:`DepthDecoder`: a ResNet encoder and a multi-scale disparity decoder
  (Monodepth2 layout). Key names follow the official ``encoder.pth`` / ``depth.pth`` files.
* :class:`PoseNetwork`: from two stacked frames, the relative rotation and translation **and the camera
  intrinsics**, so no calibration is needed to train the depth from face videos; optionally (DaGAN++) a per-pixel
  photometric uncertainty map of the pair (:class:`PoseUncertaintyHead`).

Disparities are sigmoid outputs in (0, 1); DaGAN feeds the full-resolution one to the keypoint detector and
the generator as it is.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from dagan.networks.backbones import ResNet

DECODER_CHANNELS = (16, 32, 64, 128, 256)
NUM_SCALES = 4
TRANSLATION_SCALE = 0.01  # pose outputs are scaled down so that training starts near the identity
MIN_UNCERTAINTY = 1e-3  # floor of the learned photometric uncertainty (keeps e / s + log s bounded below)


class DepthEncoder(nn.Module):
    """Image (B, 3, H, W) in [0, 1] -> five ResNet features at strides 2..32. Keys ``encoder.*`` (torchvision)."""

    def __init__(self, num_layers: int = 18):
        super().__init__()
        self.encoder = ResNet(num_layers)
        self.num_layers = num_layers
        self.num_ch_enc = self.encoder.channels

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder.features((image - 0.45) / 0.225)


class Conv3x3(nn.Module):
    """Reflection-padded 3x3 convolution."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.pad = nn.ReflectionPad2d(1)
        self.conv = nn.Conv2d(in_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


class ConvBlock(nn.Module):
    """Reflection-padded 3x3 convolution followed by ELU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = Conv3x3(in_channels, out_channels)
        self.nonlin = nn.ELU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlin(self.conv(x))


class DepthDecoder(nn.Module):
    """Encoder features -> disparities at scales 0..3 (full, 1/2, 1/4, 1/8 resolution), each (B, 1, h, w).

    ``decoder`` is a flat ModuleList as in the official ``depth.pth``: entries 2(4-i) and 2(4-i)+1 are the two
    ConvBlocks of level i (i = 4..0), entries 10..13 the disparity heads of scales 0..3.
    """

    def __init__(self, num_ch_enc: list[int]):
        super().__init__()
        blocks: list[nn.Module] = []
        for level in range(4, -1, -1):
            in_channels = num_ch_enc[-1] if level == 4 else DECODER_CHANNELS[level + 1]
            blocks.append(ConvBlock(in_channels, DECODER_CHANNELS[level]))
            skip_channels = num_ch_enc[level - 1] if level > 0 else 0
            blocks.append(ConvBlock(DECODER_CHANNELS[level] + skip_channels, DECODER_CHANNELS[level]))
        blocks += [Conv3x3(DECODER_CHANNELS[scale], 1) for scale in range(NUM_SCALES)]
        self.decoder = nn.ModuleList(blocks)

    def forward(self, features: list[torch.Tensor], scales: tuple[int, ...] = (0, 1, 2, 3)) -> list[torch.Tensor]:
        """Disparities for ``scales`` (in that order); ask for (0,) at inference to skip the coarse heads."""
        disparities: dict[int, torch.Tensor] = {}
        x = features[-1]
        for level in range(4, -1, -1):
            block = 2 * (4 - level)
            x = F.interpolate(self.decoder[block](x), scale_factor=2, mode="nearest")
            if level > 0:
                x = torch.cat([x, features[level - 1]], dim=1)
            x = self.decoder[block + 1](x)
            if level in scales:
                disparities[level] = torch.sigmoid(self.decoder[10 + level](x))
        return [disparities[scale] for scale in scales]


class PoseOutput(NamedTuple):
    """axis_angle: (B, 3); translation: (B, 3); intrinsics: (B, 3, 3) in pixels of the input size; uncertainty:
    (B, 1, H, W) > 0 in the first frame's pixels, only with ``predict_uncertainty``."""

    axis_angle: torch.Tensor
    translation: torch.Tensor
    intrinsics: torch.Tensor
    uncertainty: Optional[torch.Tensor] = None


class PoseUncertaintyHead(nn.Module):
    """DaGAN++'s pixel-level uncertainty at the end of the pose network (our reading of its Sec. 3.1): from the
    pose encoder's stride-2 and stride-8 features of the stacked pair, s = softplus(.) + 1e-3 at the input size,
    (B, 1, H, W): how unreliable each target pixel's reprojection from this source view is."""

    def __init__(self, encoder_channels: list[int], hidden_channels: int = 32):
        super().__init__()
        self.fine = nn.Conv2d(encoder_channels[0], hidden_channels, 3, padding=1)
        self.coarse = nn.Conv2d(encoder_channels[2], hidden_channels, 1)
        self.out = nn.Conv2d(hidden_channels, 1, 3, padding=1)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        fine = features[0]
        hidden = self.fine(fine) + F.interpolate(self.coarse(features[2]), size=fine.shape[2:], mode="bilinear",
                                                 align_corners=False)
        logits = F.interpolate(self.out(F.elu(hidden)), size=size, mode="bilinear", align_corners=False)
        return F.softplus(logits) + MIN_UNCERTAINTY


class PoseNetwork(nn.Module):
    """Two frames (B, 3, H, W) each, in [0, 1] -> motion from the first to the second + shared intrinsics.

    A ResNet over the stacked frames (6 channels), a squeeze 1x1 conv, two 3x3 convs and three heads:
    6 pose numbers (scaled by 0.01), focal lengths f = softplus(.) * (W, H) and the principal point
    c = sigmoid(.) * (W, H) (it starts at the image centre), both averaged over space. With
    ``predict_uncertainty`` also a per-pixel uncertainty map (:class:`PoseUncertaintyHead`).
    """

    def __init__(self, num_layers: int = 18, hidden_channels: int = 256, predict_uncertainty: bool = False):
        super().__init__()
        self.encoder = ResNet(num_layers, in_channels=6)
        self.squeeze = nn.Conv2d(self.encoder.channels[-1], hidden_channels, 1)
        self.pose_0 = nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1)
        self.pose_1 = nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1)
        self.pose_2 = nn.Conv2d(hidden_channels, 6, 1)
        self.focal = nn.Conv2d(hidden_channels, 2, 3, padding=1)
        self.principal_point = nn.Conv2d(hidden_channels, 2, 3, padding=1)
        self.uncertainty_head = PoseUncertaintyHead(self.encoder.channels) if predict_uncertainty else None

    def forward(self, frame_from: torch.Tensor, frame_to: torch.Tensor) -> PoseOutput:
        pyramid = self.encoder.features((torch.cat([frame_from, frame_to], dim=1) - 0.45) / 0.225)
        hidden = F.relu(self.squeeze(pyramid[-1]))
        hidden = F.relu(self.pose_1(F.relu(self.pose_0(hidden))))
        pose = TRANSLATION_SCALE * self.pose_2(hidden).mean(dim=(2, 3))  # (B, 6)
        height, width = frame_from.shape[2:]
        size = torch.tensor([width, height], dtype=hidden.dtype, device=hidden.device)
        focal = F.softplus(self.focal(hidden)).mean(dim=(2, 3)) * size  # (B, 2)
        principal = torch.sigmoid(self.principal_point(hidden).mean(dim=(2, 3))) * size  # (B, 2)
        intrinsics = torch.zeros(pose.shape[0], 3, 3, dtype=hidden.dtype, device=hidden.device)
        intrinsics[:, 0, 0], intrinsics[:, 1, 1] = focal[:, 0], focal[:, 1]
        intrinsics[:, :2, 2] = principal
        intrinsics[:, 2, 2] = 1
        uncertainty = None if self.uncertainty_head is None else self.uncertainty_head(pyramid, (height, width))
        return PoseOutput(pose[:, :3], pose[:, 3:], intrinsics, uncertainty)


def disparity_to_depth(disparity: torch.Tensor, min_depth: float, max_depth: float) -> torch.Tensor:
    """Sigmoid disparity in (0, 1) -> depth in [min_depth, max_depth] (Monodepth2's scaling)."""
    min_disparity, max_disparity = 1 / max_depth, 1 / min_depth
    return 1 / (min_disparity + (max_disparity - min_disparity) * disparity)
