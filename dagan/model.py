"""The DaGAN model: depth network + depth-guided keypoint detector + depth-aware generator (+ discriminator).

One class serves the demo, training and evaluation::

    model = DaGAN.from_official("DaGAN_vox_adv_256.pth.tar", depth_dir="depth/models/weights_19")
    disparity = model.depth(image)                       # (B, 1, H, W)
    kp = model.keypoints(image, disparity)               # Keypoints(value (B, K, 2), jacobian (B, K, 2, 2))
    out = model.generate(source, kp_source, kp_driving, source_depth=disparity_source)
    out.prediction                                        # (B, 3, H, W) in [0, 1]

Data flow (DaGAN Fig. 2)::

    source ──► depth net ─► disparity_s ─┬─► [RGB|D] keypoint detector ─► kp_s ─┐
    driving ─► depth net ─► disparity_d ─┼─► [RGB|D] keypoint detector ─► kp_d ─┼─► dense motion + occlusion
                                         │                                       │          │
    source ─► appearance encoder ────────┼───────────────────────────────────────┴─► warp ─►│
                                         └─► depth encoder ─► Q ──► cross-modal attention ◄─ K,V (warped)
                                                                         │
                                                                   decoder ─► prediction
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import torch
from torch import nn

from dagan.config import Config, config_from_dict, config_to_dict
from dagan.geometry import Keypoints
from dagan.networks.depth import DepthDecoder, DepthEncoder
from dagan.networks.discriminator import MultiScaleDiscriminator
from dagan.networks.generator import GeneratorOutput, SourceFeatures, build_generator
from dagan.networks.keypoints import KeypointDetector

NETWORK_NAMES = ("depth_encoder", "depth_decoder", "kp_detector", "generator", "discriminator")


class DaGAN(nn.Module):
    """All DaGAN networks built from a :class:`~dagan.config.Config`. Images are (B, 3, H, W) in [0, 1]."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        params = config.model_params
        common = params.common_params
        self.depth_encoder = DepthEncoder(params.depth_params.num_layers)
        self.depth_decoder = DepthDecoder(self.depth_encoder.num_ch_enc)
        self.kp_detector = KeypointDetector(**dataclasses.asdict(params.kp_detector_params), num_kp=common.num_kp,
                                            num_channels=params.kp_detector_channels,
                                            estimate_jacobian=common.estimate_jacobian)
        self.generator = build_generator(params.generator, **dataclasses.asdict(params.generator_params),
                                         **dataclasses.asdict(common))
        discriminator = params.discriminator_params
        self.discriminator = MultiScaleDiscriminator(
            scales=discriminator.scales, num_channels=common.num_channels, block_expansion=discriminator.block_expansion,
            num_blocks=discriminator.num_blocks, max_features=discriminator.max_features, sn=discriminator.sn,
            use_kp=discriminator.use_kp, num_kp=common.num_kp, kp_variance=discriminator.kp_variance)

    # Inference building blocks.
    def depth(self, image: torch.Tensor) -> torch.Tensor:
        """Full-resolution disparity (B, 1, H, W) in (0, 1) of images (B, 3, H, W)."""
        return self.depth_decoder(self.depth_encoder(image), scales=(0,))[0]

    def keypoint_input(self, image: torch.Tensor, disparity: Optional[torch.Tensor]) -> torch.Tensor:
        """What the keypoint detector sees: RGB + disparity (the release), RGB, or disparity alone."""
        mode = self.config.model_params.kp_detector_input
        if mode == "rgb":
            return image
        if disparity is None:
            disparity = self.depth(image)
        return torch.cat([image, disparity], dim=1) if mode == "rgbd" else disparity

    def keypoints(self, image: torch.Tensor, disparity: Optional[torch.Tensor] = None) -> Keypoints:
        """Keypoints of images (B, 3, H, W); the disparity is computed when needed and not given."""
        return self.kp_detector(self.keypoint_input(image, disparity))

    def encode_source(self, source: torch.Tensor, source_depth: torch.Tensor) -> SourceFeatures:
        """Source-only generator work, reusable for every driving frame."""
        return self.generator.encode_source(source, source_depth)

    def generate(self, source: torch.Tensor, kp_source: Keypoints, kp_driving: Keypoints,
                 source_depth: Optional[torch.Tensor] = None, source_features: Optional[SourceFeatures] = None,
                 return_deformed: bool = True, return_attention: bool = False) -> GeneratorOutput:
        """Render the source with the driving keypoints. Give ``source_depth`` or cached ``source_features``."""
        return self.generator(source, kp_source, kp_driving, source_depth=source_depth,
                              source_features=source_features, return_deformed=return_deformed,
                              return_attention=return_attention)

    def reconstruct(self, source: torch.Tensor, driving: torch.Tensor) -> GeneratorOutput:
        """Animate ``source`` with ``driving`` (absolute keypoints), as training and reconstruction do."""
        source_depth = self.depth(source)
        kp_source = self.keypoints(source, source_depth)
        kp_driving = self.keypoints(driving)
        return self.generate(source, kp_source, kp_driving, source_depth=source_depth)

    # Persistence.
    def network_state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """State dicts of every network, keyed by :data:`NETWORK_NAMES`."""
        return {name: getattr(self, name).state_dict() for name in NETWORK_NAMES}

    @classmethod
    def from_official(cls, checkpoint: Optional[str | os.PathLike] = None, depth_dir: Optional[str | os.PathLike] = None,
                      config: Optional[Config | str | os.PathLike] = None, map_location: str = "cpu") -> "DaGAN":
        """Build from the official release files (see :func:`dagan.checkpoint.load_official`)."""
        from dagan.checkpoint import load_official

        return load_official(checkpoint, depth_dir, config, map_location=map_location)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, map_location: str = "cpu") -> "DaGAN":
        """Build from a checkpoint in this project's format (config stored inside)."""
        from dagan.checkpoint import load_checkpoint

        state = load_checkpoint(path, map_location=map_location)
        model = cls(config_from_dict(state["config"]))
        model.load_network_state_dicts(state["networks"])
        model.step = int(state.get("step", 0))
        return model.eval()

    def load_network_state_dicts(self, state_dicts: dict[str, dict[str, torch.Tensor]]) -> None:
        """Strictly load the networks present in ``state_dicts``."""
        for name, state_dict in state_dicts.items():
            getattr(self, name).load_state_dict(state_dict, strict=True)

    def save(self, path: str | os.PathLike, step: int = 0) -> None:
        """Write a checkpoint in this project's format (atomic): every network, the config and ``step``."""
        from dagan.checkpoint import save_checkpoint

        save_checkpoint(path, {"config": config_to_dict(self.config), "step": step,
                               "networks": self.network_state_dicts()})
