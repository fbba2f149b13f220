"""Depth-aware generators (DaGAN Sec. 3.3).

Both generators encode the source image and the source disparity to (B, 256, 64, 64) features, warp the
appearance features with the dense motion, multiply by the occlusion map, refine them with the cross-modal
depth attention and decode. :class:`DepthAwareGenerator` decodes with residual blocks and up-convolutions
(the released model); :class:`SPADEDepthAwareGenerator` with a SPADE decoder conditioned on the occluded,
warped source image (the released "SPADE" model).

The source-only work (:meth:`encode_source`) can be computed once and passed back in for every driving frame.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from dagan.geometry import Keypoints, resize, warp_by_deformation
from dagan.networks.attention import DepthAwareAttention
from dagan.networks.blocks import DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d
from dagan.networks.dense_motion import DenseMotionNetwork
from dagan.networks.spade import SPADEDecoder


class SourceFeatures(NamedTuple):
    """Encoded source: appearance (B, C, h, w) from the image, depth (B, C, h, w) from its disparity."""

    appearance: torch.Tensor
    depth: torch.Tensor

    def expand(self, batch: int) -> "SourceFeatures":
        """Broadcast batch-1 features to ``batch`` (no copy)."""
        return SourceFeatures(*(tensor.expand(batch, *tensor.shape[1:]) for tensor in self))


class GeneratorOutput(NamedTuple):
    """prediction: (B, 3, H, W) in [0, 1]; deformed: (B, 3, H, W) source warped by the dense motion (None when
    not asked for); occlusion_map: (B, 1, h, w); mask: (B, K+1, h, w); sparse_deformed: (B, K+1, 3, h, w);
    deformation: (B, h, w, 2); attention: (B, hw, hw) only when asked for."""

    prediction: torch.Tensor
    deformed: Optional[torch.Tensor]
    occlusion_map: Optional[torch.Tensor]
    mask: torch.Tensor
    sparse_deformed: torch.Tensor
    deformation: torch.Tensor
    attention: Optional[torch.Tensor]


def _down_blocks(block_expansion: int, max_features: int, num_down_blocks: int) -> nn.ModuleList:
    return nn.ModuleList(
        DownBlock2d(min(max_features, block_expansion * 2 ** level), min(max_features, block_expansion * 2 ** (level + 1)))
        for level in range(num_down_blocks))


class _DepthAwareEncoder(nn.Module):
    """The part both released generators share (same state-dict keys): encoders, dense motion, attention."""

    def __init__(self, num_channels: int, num_kp: int, block_expansion: int, max_features: int,
                 num_down_blocks: int, estimate_occlusion_map: bool, dense_motion_params: dict):
        super().__init__()
        self.dense_motion_network = DenseMotionNetwork(num_kp=num_kp, num_channels=num_channels,
                                                       estimate_occlusion_map=estimate_occlusion_map,
                                                       **dense_motion_params)
        self.first = SameBlock2d(num_channels, block_expansion, kernel_size=7, padding=3)
        self.down_blocks = _down_blocks(block_expansion, max_features, num_down_blocks)
        self.src_first = SameBlock2d(1, block_expansion, kernel_size=7, padding=3)
        self.src_down_blocks = _down_blocks(block_expansion, max_features, num_down_blocks)
        self.feature_channels = min(max_features, block_expansion * 2 ** num_down_blocks)
        self.AttnModule = DepthAwareAttention(self.feature_channels)

    def encode_source(self, source: torch.Tensor, source_depth: torch.Tensor) -> SourceFeatures:
        """source: (B, 3, H, W) in [0, 1]; source_depth: (B, 1, H, W) disparity -> :class:`SourceFeatures`."""
        appearance = self.first(source)
        for block in self.down_blocks:
            appearance = block(appearance)
        depth = self.src_first(source_depth)
        for block in self.src_down_blocks:
            depth = block(depth)
        return SourceFeatures(appearance, depth)

    def warp_and_attend(self, source: torch.Tensor, kp_source: Keypoints, kp_driving: Keypoints,
                        features: SourceFeatures, return_attention: bool):
        """Dense motion, feature warping, occlusion and attention: refined features (B, C, h, w) + by-products."""
        motion = self.dense_motion_network(source, kp_source, kp_driving)
        warped = warp_by_deformation(features.appearance, motion.deformation)
        if motion.occlusion_map is not None:
            warped = warped * resize(motion.occlusion_map, tuple(warped.shape[2:]))
        refined, attention = self.AttnModule(features.depth, warped, return_attention=return_attention)
        return refined, motion, attention


class DepthAwareGenerator(_DepthAwareEncoder):
    """Source (B, 3, H, W), its disparity (B, 1, H, W) and keypoints -> :class:`GeneratorOutput`."""

    def __init__(self, num_channels: int, num_kp: int, block_expansion: int, max_features: int,
                 num_down_blocks: int, num_bottleneck_blocks: int, estimate_occlusion_map: bool = False,
                 dense_motion_params: Optional[dict] = None, estimate_jacobian: bool = False):
        super().__init__(num_channels, num_kp, block_expansion, max_features, num_down_blocks,
                         estimate_occlusion_map, dense_motion_params or {})
        self.up_blocks = nn.ModuleList(
            UpBlock2d(min(max_features, block_expansion * 2 ** (num_down_blocks - level)),
                      min(max_features, block_expansion * 2 ** (num_down_blocks - level - 1)))
            for level in range(num_down_blocks))
        self.bottleneck = nn.Sequential()
        for index in range(num_bottleneck_blocks):
            self.bottleneck.add_module(f"r{index}", ResBlock2d(self.feature_channels, kernel_size=3, padding=1))
        self.final = nn.Conv2d(block_expansion, num_channels, kernel_size=7, padding=3)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """Refined features (B, C, h, w) -> image (B, 3, H, W) in [0, 1]."""
        out = self.bottleneck(features)
        for block in self.up_blocks:
            out = block(out)
        return torch.sigmoid(self.final(out))

    def forward(self, source: torch.Tensor, kp_source: Keypoints, kp_driving: Keypoints,
                source_depth: Optional[torch.Tensor] = None, source_features: Optional[SourceFeatures] = None,
                return_deformed: bool = True, return_attention: bool = False) -> GeneratorOutput:
        if source_features is None:
            source_features = self.encode_source(source, source_depth)
        refined, motion, attention = self.warp_and_attend(source, kp_source, kp_driving, source_features,
                                                          return_attention)
        deformed = warp_by_deformation(source, motion.deformation) if return_deformed else None
        return GeneratorOutput(self.decode(refined), deformed, motion.occlusion_map, motion.mask,
                               motion.sparse_deformed, motion.deformation, attention)


class SPADEDepthAwareGenerator(_DepthAwareEncoder):
    """As :class:`DepthAwareGenerator` but with a SPADE decoder (fixed widths: 256 encoder channels)."""

    def __init__(self, num_channels: int, num_kp: int, block_expansion: int, max_features: int,
                 num_down_blocks: int, num_bottleneck_blocks: int = 0, estimate_occlusion_map: bool = False,
                 dense_motion_params: Optional[dict] = None, estimate_jacobian: bool = False):
        super().__init__(num_channels, num_kp, block_expansion, max_features, num_down_blocks,
                         estimate_occlusion_map, dense_motion_params or {})
        self.decoder = SPADEDecoder(feature_channels=self.feature_channels)

    def forward(self, source: torch.Tensor, kp_source: Keypoints, kp_driving: Keypoints,
                source_depth: Optional[torch.Tensor] = None, source_features: Optional[SourceFeatures] = None,
                return_deformed: bool = True, return_attention: bool = False) -> GeneratorOutput:
        if source_features is None:
            source_features = self.encode_source(source, source_depth)
        refined, motion, attention = self.warp_and_attend(source, kp_source, kp_driving, source_features,
                                                          return_attention)
        deformed = warp_by_deformation(source, motion.deformation)
        occluded = deformed
        if motion.occlusion_map is not None:
            occluded = deformed * resize(motion.occlusion_map, tuple(deformed.shape[2:]))
        prediction = self.decoder(refined, occluded)
        return GeneratorOutput(prediction, deformed if return_deformed else None, motion.occlusion_map,
                               motion.mask, motion.sparse_deformed, motion.deformation, attention)


def build_generator(generator: str, **kwargs) -> nn.Module:
    """The generator named in ``model_params.generator``."""
    if generator == "DepthAwareGenerator":
        return DepthAwareGenerator(**kwargs)
    if generator == "SPADEDepthAwareGenerator":
        return SPADEDepthAwareGenerator(**kwargs)
    raise ValueError(f"unknown generator {generator!r}; use DepthAwareGenerator or SPADEDepthAwareGenerator")
