"""Depth-aware generators (DaGAN Sec. 3.3).

Both generators encode the source image and the source disparity to (B, 256, 64, 64) features, warp the
appearance features with the dense motion, multiply by the occlusion map, refine them with the cross-modal
depth attention and decode. :class:`DepthAwareGenerator` decodes with residual blocks and up-convolutions
(the released model); :class:`SPADEDepthAwareGenerator` with a SPADE decoder conditioned on the occluded,
warped source image (the released "SPADE" model).

DaGAN++ (``attention_layers``): the cross-modal attention also refines finer decoder levels, coarse to fine. Level
0 is the bottleneck (DaGAN's global attention, ``AttnModule``); level l >= 1 is the decoder output at 2^l times the
bottleneck resolution, where a :class:`~dagan.networks.attention.WindowedDepthAttention` takes its queries from the
source depth branch at that scale and its keys/values from the appearance features of that scale, warped by the
dense motion and occluded like the bottleneck's. Each new block is added through a gate initialised at 0, so a
model with released DaGAN weights in its shared keys renders exactly what DaGAN renders.

Grown models (``highres_levels`` L >= 1, e.g. 512 from the 256 release): the released generator runs on the source
halved L times (its own internal size) and :class:`HighResolutionLevels` adds L levels above its decoder, each
doubling the output. A level upsamples the decoder features, fuses them with the full-resolution source features
warped by the same dense motion, and adds a residual to the upsampled image; the residual convolution starts at
zero, so a grown model's first output is the released model's output upsampled.

The source-only work (:meth:`encode_source`) can be computed once and passed back in for every driving frame.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import torch
from torch import nn

from dagan.geometry import Keypoints, halve, resize, warp_by_deformation
from dagan.networks.attention import DepthAwareAttention, WindowedDepthAttention
from dagan.networks.blocks import DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d
from dagan.networks.dense_motion import DenseMotionNetwork
from dagan.networks.spade import SPADEDecoder


class SourceFeatures(NamedTuple):
    """Encoded source: appearance (B, C, h, w) from the image, depth (B, C, h, w) from its disparity, at the
    bottleneck; with attention at finer decoder levels also ``appearance_levels`` / ``depth_levels``: one
    (B, C_l, h_l, w_l) map per attended level l >= 1, in increasing level order (empty for DaGAN); grown models
    also ``highres``: the source encoded at each level above the released size (B, C_l, 2^l h_0, 2^l w_0), l = 1..L
    (computed from the source in the forward pass when empty)."""

    appearance: torch.Tensor
    depth: torch.Tensor
    appearance_levels: tuple[torch.Tensor, ...] = ()
    depth_levels: tuple[torch.Tensor, ...] = ()
    highres: tuple[torch.Tensor, ...] = ()

    def expand(self, batch: int) -> "SourceFeatures":
        """Broadcast batch-1 features to ``batch`` (no copy)."""
        def grow(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.expand(batch, *tensor.shape[1:])
        return SourceFeatures(grow(self.appearance), grow(self.depth), tuple(map(grow, self.appearance_levels)),
                              tuple(map(grow, self.depth_levels)), tuple(map(grow, self.highres)))


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


def encoder_channels(block_expansion: int, max_features: int, num_down_blocks: int, level: int) -> int:
    """Channels of the appearance/depth encoder features that decoder level ``level`` sees (0 = bottleneck)."""
    scale = num_down_blocks - level  # encoder outputs: 0 = the first block (full resolution), then each down block
    return block_expansion if scale == 0 else min(max_features, block_expansion * 2 ** scale)


def warp_and_occlude(features: torch.Tensor, motion) -> torch.Tensor:
    """Features (B, C, h, w) warped by the dense motion and multiplied by its occlusion map (both resized to h, w)."""
    warped = warp_by_deformation(features, motion.deformation)
    if motion.occlusion_map is not None:
        warped = warped * resize(motion.occlusion_map, tuple(warped.shape[2:]))
    return warped


def _down_blocks(block_expansion: int, max_features: int, num_down_blocks: int) -> nn.ModuleList:
    return nn.ModuleList(
        DownBlock2d(min(max_features, block_expansion * 2 ** level), min(max_features, block_expansion * 2 ** (level + 1)))
        for level in range(num_down_blocks))


class HighResolutionLevels(nn.Module):
    """L levels above a released decoder, each doubling the output: (B, C, h, w) decoder features and the released
    output image (B, 3, h, w) -> image (B, 3, 2^L h, 2^L w) in [0, 1].

    Level l: features <- fuse([UpBlock(features), warp(encode_l(source at 2^l h), deformation) x occlusion]);
    image <- upsample2x(image) + to_image_l(features). ``to_image`` starts at zero: the first output is the
    released image upsampled (bilinear).
    """

    def __init__(self, num_channels: int, decoder_channels: int, block_expansion: int, levels: int):
        super().__init__()
        widths = [max(8, block_expansion // 2 ** level) for level in range(1, levels + 1)]
        inputs = [decoder_channels] + widths[:-1]
        self.levels = levels
        self.encoders = nn.ModuleList(SameBlock2d(num_channels, width, kernel_size=7, padding=3) for width in widths)
        self.up_blocks = nn.ModuleList(UpBlock2d(width_in, width) for width_in, width in zip(inputs, widths))
        self.fuse = nn.ModuleList(SameBlock2d(2 * width, width) for width in widths)
        self.to_image = nn.ModuleList(nn.Conv2d(width, num_channels, kernel_size=7, padding=3) for width in widths)
        for conv in self.to_image:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def encode(self, source: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Full-resolution source (B, 3, H, W) -> one (B, C_l, H / 2^(L-l), W / 2^(L-l)) map per level l = 1..L."""
        return tuple(encoder(halve(source, self.levels - level))
                     for level, encoder in enumerate(self.encoders, start=1))

    def forward(self, features: torch.Tensor, image: torch.Tensor, encoded: Sequence[torch.Tensor],
                motion) -> torch.Tensor:
        for up_block, fuse, to_image, source_features in zip(self.up_blocks, self.fuse, self.to_image, encoded):
            features = fuse(torch.cat([up_block(features), warp_and_occlude(source_features, motion)], dim=1))
            image = resize(image, tuple(features.shape[2:])) + to_image(features)
        return image.clamp(0, 1)


class _DepthAwareEncoder(nn.Module):
    """The part both released generators share (same state-dict keys): encoders, dense motion, attention."""

    def __init__(self, num_channels: int, num_kp: int, block_expansion: int, max_features: int,
                 num_down_blocks: int, estimate_occlusion_map: bool, dense_motion_params: dict,
                 attention_layers: Sequence[int] = (0,), attention_window: int = 8, highres_levels: int = 0):
        super().__init__()
        self.num_down_blocks = num_down_blocks
        self.highres_levels = highres_levels
        self.fine_levels = sorted(level for level in set(attention_layers) if level > 0)
        self.dense_motion_network = DenseMotionNetwork(num_kp=num_kp, num_channels=num_channels,
                                                       estimate_occlusion_map=estimate_occlusion_map,
                                                       **dense_motion_params)
        self.first = SameBlock2d(num_channels, block_expansion, kernel_size=7, padding=3)
        self.down_blocks = _down_blocks(block_expansion, max_features, num_down_blocks)
        self.src_first = SameBlock2d(1, block_expansion, kernel_size=7, padding=3)
        self.src_down_blocks = _down_blocks(block_expansion, max_features, num_down_blocks)
        self.feature_channels = min(max_features, block_expansion * 2 ** num_down_blocks)
        self.AttnModule = DepthAwareAttention(self.feature_channels)
        self.layer_attention = nn.ModuleDict()  # DaGAN++'s new blocks, keyed by decoder level ("1", "2", ...)

    def build_layer_attention(self, decoder_channels: dict[int, int], block_expansion: int, max_features: int,
                              window: int) -> None:
        """One zero-gated windowed attention per fine level; ``decoder_channels``: level -> decoder width."""
        for level in self.fine_levels:
            channels = encoder_channels(block_expansion, max_features, self.num_down_blocks, level)
            self.layer_attention[str(level)] = WindowedDepthAttention(channels, channels, decoder_channels[level],
                                                                      window)

    def build_highres(self, num_channels: int, decoder_channels: int, block_expansion: int) -> None:
        """The levels above the released size (grown models only); keys ``highres.*``."""
        if self.highres_levels:
            self.highres = HighResolutionLevels(num_channels, decoder_channels, block_expansion, self.highres_levels)

    def encode_source(self, source: torch.Tensor, source_depth: torch.Tensor) -> SourceFeatures:
        """source: (B, 3, H, W) in [0, 1]; source_depth: (B, 1, H / 2^L, W / 2^L) disparity (L =
        ``highres_levels``, 0 for released models) -> :class:`SourceFeatures`."""
        highres = self.highres.encode(source) if self.highres_levels else ()
        source = halve(source, self.highres_levels)
        appearance_pyramid = [self.first(source)]  # full resolution, then after each down block
        for block in self.down_blocks:
            appearance_pyramid.append(block(appearance_pyramid[-1]))
        depth_pyramid = [self.src_first(source_depth)]
        for block in self.src_down_blocks:
            depth_pyramid.append(block(depth_pyramid[-1]))
        scales = [self.num_down_blocks - level for level in self.fine_levels]
        return SourceFeatures(appearance_pyramid[-1], depth_pyramid[-1],
                              tuple(appearance_pyramid[scale] for scale in scales),
                              tuple(depth_pyramid[scale] for scale in scales), highres)

    def upscale(self, features: torch.Tensor, image: torch.Tensor, source: torch.Tensor,
                source_features: SourceFeatures, motion) -> torch.Tensor:
        """The released-size image (B, 3, h, w) through the levels above it (the image itself for released models);
        ``features``: the decoder's last features (B, C, h, w)."""
        if not self.highres_levels:
            return image
        encoded = source_features.highres or self.highres.encode(source)
        return self.highres(features, image, encoded, motion)

    def warp_and_attend(self, source: torch.Tensor, kp_source: Keypoints, kp_driving: Keypoints,
                        features: SourceFeatures, return_attention: bool):
        """Dense motion, feature warping, occlusion and attention: refined features (B, C, h, w) + by-products.
        ``source``: the image at the released size (halved ``highres_levels`` times)."""
        motion = self.dense_motion_network(source, kp_source, kp_driving)
        warped = warp_and_occlude(features.appearance, motion)
        refined, attention = self.AttnModule(features.depth, warped, return_attention=return_attention)
        return refined, motion, attention

    def level_refiner(self, features: SourceFeatures, motion) -> Callable[[int, torch.Tensor], torch.Tensor]:
        """``refine(level, decoder_features)``: the decoder features after the attention of that level (unchanged
        at levels without one). Warps this source's appearance features of every attended level once."""
        warped_levels = {level: warp_and_occlude(appearance, motion)
                         for level, appearance in zip(self.fine_levels, features.appearance_levels)}
        depth_levels = dict(zip(self.fine_levels, features.depth_levels))

        def refine(level: int, decoder_features: torch.Tensor) -> torch.Tensor:
            if level not in warped_levels:
                return decoder_features
            return self.layer_attention[str(level)](depth_levels[level], warped_levels[level], decoder_features)
        return refine


class DepthAwareGenerator(_DepthAwareEncoder):
    """Source (B, 3, H, W), its disparity (B, 1, H, W) and keypoints -> :class:`GeneratorOutput`."""

    def __init__(self, num_channels: int, num_kp: int, block_expansion: int, max_features: int,
                 num_down_blocks: int, num_bottleneck_blocks: int, estimate_occlusion_map: bool = False,
                 dense_motion_params: Optional[dict] = None, estimate_jacobian: bool = False,
                 attention_layers: Sequence[int] = (0,), attention_window: int = 8, highres_levels: int = 0):
        super().__init__(num_channels, num_kp, block_expansion, max_features, num_down_blocks,
                         estimate_occlusion_map, dense_motion_params or {}, attention_layers, attention_window,
                         highres_levels)
        self.up_blocks = nn.ModuleList(
            UpBlock2d(min(max_features, block_expansion * 2 ** (num_down_blocks - level)),
                      min(max_features, block_expansion * 2 ** (num_down_blocks - level - 1)))
            for level in range(num_down_blocks))
        self.bottleneck = nn.Sequential()
        for index in range(num_bottleneck_blocks):
            self.bottleneck.add_module(f"r{index}", ResBlock2d(self.feature_channels, kernel_size=3, padding=1))
        self.final = nn.Conv2d(block_expansion, num_channels, kernel_size=7, padding=3)
        self.build_layer_attention({level: encoder_channels(block_expansion, max_features, num_down_blocks, level)
                                    for level in self.fine_levels}, block_expansion, max_features, attention_window)
        self.build_highres(num_channels, block_expansion, block_expansion)

    def decode(self, features: torch.Tensor, refine: Optional[Callable[[int, torch.Tensor], torch.Tensor]] = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Refined features (B, C, h, w) -> image (B, 3, h', w') in [0, 1] at the released size, and the last
        decoder features (B, block_expansion, h', w'); ``refine`` from :meth:`level_refiner` applies the attention
        of the finer levels (after up block l comes level l)."""
        out = self.bottleneck(features)
        for level, block in enumerate(self.up_blocks, start=1):
            out = block(out)
            if refine is not None:
                out = refine(level, out)
        return torch.sigmoid(self.final(out)), out

    def forward(self, source: torch.Tensor, kp_source: Keypoints, kp_driving: Keypoints,
                source_depth: Optional[torch.Tensor] = None, source_features: Optional[SourceFeatures] = None,
                return_deformed: bool = True, return_attention: bool = False) -> GeneratorOutput:
        if source_features is None:
            source_features = self.encode_source(source, source_depth)
        refined, motion, attention = self.warp_and_attend(halve(source, self.highres_levels), kp_source, kp_driving,
                                                          source_features, return_attention)
        deformed = warp_by_deformation(source, motion.deformation) if return_deformed else None
        image, last_features = self.decode(refined, self.level_refiner(source_features, motion))
        prediction = self.upscale(last_features, image, source, source_features, motion)
        return GeneratorOutput(prediction, deformed, motion.occlusion_map, motion.mask,
                               motion.sparse_deformed, motion.deformation, attention)


class SPADEDepthAwareGenerator(_DepthAwareEncoder):
    """As :class:`DepthAwareGenerator` but with a SPADE decoder (fixed widths: 256 encoder channels)."""

    def __init__(self, num_channels: int, num_kp: int, block_expansion: int, max_features: int,
                 num_down_blocks: int, num_bottleneck_blocks: int = 0, estimate_occlusion_map: bool = False,
                 dense_motion_params: Optional[dict] = None, estimate_jacobian: bool = False,
                 attention_layers: Sequence[int] = (0,), attention_window: int = 8, highres_levels: int = 0):
        super().__init__(num_channels, num_kp, block_expansion, max_features, num_down_blocks,
                         estimate_occlusion_map, dense_motion_params or {}, attention_layers, attention_window,
                         highres_levels)
        self.decoder = SPADEDecoder(feature_channels=self.feature_channels)
        self.build_layer_attention(self.decoder.level_channels, block_expansion, max_features, attention_window)
        self.build_highres(num_channels, self.decoder.output_channels, block_expansion)

    def forward(self, source: torch.Tensor, kp_source: Keypoints, kp_driving: Keypoints,
                source_depth: Optional[torch.Tensor] = None, source_features: Optional[SourceFeatures] = None,
                return_deformed: bool = True, return_attention: bool = False) -> GeneratorOutput:
        if source_features is None:
            source_features = self.encode_source(source, source_depth)
        core_source = halve(source, self.highres_levels)
        refined, motion, attention = self.warp_and_attend(core_source, kp_source, kp_driving, source_features,
                                                          return_attention)
        occluded = warp_and_occlude(core_source, motion)
        image, last_features = self.decoder(refined, occluded, self.level_refiner(source_features, motion))
        prediction = self.upscale(last_features, image, source, source_features, motion)
        deformed = warp_by_deformation(source, motion.deformation) if return_deformed else None
        return GeneratorOutput(prediction, deformed, motion.occlusion_map,
                               motion.mask, motion.sparse_deformed, motion.deformation, attention)


def build_generator(generator: str, **kwargs) -> nn.Module:
    """The generator named in ``model_params.generator``."""
    if generator == "DepthAwareGenerator":
        return DepthAwareGenerator(**kwargs)
    if generator == "SPADEDepthAwareGenerator":
        return SPADEDepthAwareGenerator(**kwargs)
    raise ValueError(f"unknown generator {generator!r}; use DepthAwareGenerator or SPADEDepthAwareGenerator")
