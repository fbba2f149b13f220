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

from dagan.checkpoint import (CheckpointError, check_fits, grow_states, infer_model_settings, is_our_checkpoint,
                              load_checkpoint, load_shared, load_strict, read_official_checkpoint,
                              read_official_depth, save_checkpoint)
from dagan.config import Config, config_from_dict, config_to_dict, load_config
from dagan.geometry import Keypoints, halve
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
                                         **dataclasses.asdict(common), highres_levels=params.highres_levels)
        discriminator = params.discriminator_params
        self.discriminator = MultiScaleDiscriminator(
            scales=discriminator.scales, num_channels=common.num_channels, block_expansion=discriminator.block_expansion,
            num_blocks=discriminator.num_blocks, max_features=discriminator.max_features, sn=discriminator.sn,
            use_kp=discriminator.use_kp, num_kp=common.num_kp, kp_variance=discriminator.kp_variance)

    # Inference building blocks.
    @property
    def highres_levels(self) -> int:
        """How many times the frames are halved for the networks that keep the released size (0 = 256 models)."""
        return self.config.model_params.highres_levels

    def depth(self, image: torch.Tensor) -> torch.Tensor:
        """Disparity (B, 1, H / 2^L, W / 2^L) in (0, 1) of images (B, 3, H, W); L = :attr:`highres_levels` (the
        full resolution for released models)."""
        return self.depth_decoder(self.depth_encoder(halve(image, self.highres_levels)), scales=(0,))[0]

    def keypoint_input(self, image: torch.Tensor, disparity: Optional[torch.Tensor]) -> torch.Tensor:
        """What the keypoint detector sees: RGB + disparity (the release), RGB, or disparity alone."""
        mode = self.config.model_params.kp_detector_input
        if disparity is None and mode != "rgb":
            disparity = self.depth(image)
        image = halve(image, self.highres_levels)
        if mode == "rgb":
            return image
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
        """Build from the official release files (see :func:`load_official`)."""
        return load_official(checkpoint, depth_dir, config, map_location=map_location)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, map_location: str = "cpu") -> "DaGAN":
        """Build from a checkpoint in this project's format (config stored inside)."""
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
        save_checkpoint(path, {"config": config_to_dict(self.config), "step": step,
                               "networks": self.network_state_dicts()})


# Building a model from checkpoint files (dagan.checkpoint reads and writes the state dicts).
def _resolve_config(config: Config | str | os.PathLike | None, networks: dict, encoder_state: Optional[dict]) -> Config:
    if isinstance(config, Config):
        return config
    if config is not None:
        return load_config(config)
    overrides = [f"{key}={value}" for key, value in infer_model_settings(networks, encoder_state).items()]
    return load_config(None, overrides)


def load_official(checkpoint: str | os.PathLike | None, depth_dir: str | os.PathLike | None = None,
                  config: Config | str | os.PathLike | None = None, map_location: str = "cpu") -> DaGAN:
    """Build a :class:`DaGAN` from the official release.

    checkpoint: the main ``.pth.tar`` (generator and keypoint detector loaded strictly, discriminator when present).
    depth_dir: folder with ``encoder.pth`` and ``depth.pth``; ``None`` uses ``model_params.depth_params.checkpoint_dir``.
    config: a Config, a YAML path, or None to use the official vox-adv-256 defaults with the keypoint count,
    generator, detector input and depth-encoder depth read from the files.
    """
    networks = read_official_checkpoint(checkpoint, map_location) if checkpoint is not None else {}
    if depth_dir is None and isinstance(config, Config):
        depth_dir = config.model_params.depth_params.checkpoint_dir
    encoder_state, decoder_state = read_official_depth(depth_dir, map_location) if depth_dir else (None, None)
    resolved = _resolve_config(config, networks, encoder_state)
    check_fits(resolved, networks, encoder_state)
    model = DaGAN(resolved)
    networks, new_prefixes = grow_states(networks, resolved.model_params.highres_levels,
                                         resolved.model_params.discriminator_params.scales)
    for name, state_dict in networks.items():
        load_shared(getattr(model, name), state_dict, name, new_prefixes.get(name, ()))
    if encoder_state is not None:
        load_depth_states(model, encoder_state, decoder_state)
    model.loaded_networks = tuple(networks) + (("depth_encoder", "depth_decoder") if encoder_state is not None else ())
    return model.eval()


def load_depth_states(model: DaGAN, encoder_state: dict, decoder_state: dict) -> None:
    """Strictly load depth encoder/decoder state dicts into ``model`` (a DaGAN)."""
    load_strict(model.depth_encoder, encoder_state, "depth encoder (encoder.pth)")
    load_strict(model.depth_decoder, decoder_state, "depth decoder (depth.pth)")


def load_official_depth_into(model: DaGAN, depth_dir: str | os.PathLike) -> None:
    """Load an official-layout depth folder (encoder.pth + depth.pth) into an existing DaGAN, checking that its
    ResNet depth fits the model's config."""
    encoder_state, decoder_state = read_official_depth(depth_dir)
    check_fits(model.config, {}, encoder_state)
    load_depth_states(model, encoder_state, decoder_state)


def load_checkpoint_or_official(checkpoint: str | os.PathLike, depth_dir: str | os.PathLike | None = None,
                                config: Config | str | os.PathLike | None = None, map_location: str = "cpu") -> DaGAN:
    """A :class:`DaGAN` from either of our checkpoints (``depth_dir`` and ``config`` must then be
    None: ours hold everything) or from the official release (main file + depth folder)."""
    if is_our_checkpoint(checkpoint):
        if depth_dir is not None:
            raise CheckpointError(f"{os.fspath(checkpoint)!r} is a dagan checkpoint that already holds the depth "
                                  "network; drop --depth_checkpoint")
        return DaGAN.from_checkpoint(checkpoint, map_location=map_location)
    if depth_dir is None and not (isinstance(config, Config) and config.model_params.depth_params.checkpoint_dir):
        raise CheckpointError(f"{os.fspath(checkpoint)!r} is an official DaGAN checkpoint: it needs the depth "
                              "network too; pass --depth_checkpoint DIR (the folder with encoder.pth and depth.pth, "
                              "see checkpoints/README.md)")
    return load_official(checkpoint, depth_dir, config, map_location=map_location)
