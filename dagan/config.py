"""The YAML schema: nested dataclasses, loaded with ``yaml.safe_load``.

Section and key names are those of the official DaGAN ``config/vox-adv-256.yaml`` so that an official
file loads unchanged; every default below is the official value. Keys this project adds are marked
``# dagan addition`` and have defaults that reproduce the official behaviour.

    config = load_config("configs/vox-adv-256.yaml", overrides=["model_params.common_params.num_kp=15"])

An unknown key or a bad value raises :class:`ConfigError` naming the dotted key.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Union

import yaml

from dagan.io.files import atomic_write_text

GENERATOR_TYPES = ("DepthAwareGenerator", "SPADEDepthAwareGenerator")
KP_DETECTOR_INPUTS = {"rgbd": 4, "rgb": 3, "depth": 1}  # input name -> number of channels
RESNET_DEPTHS = (18, 34, 50, 101, 152)
DATA_FORMATS = ("folders", "stream")


class ConfigError(ValueError):
    """A config key is unknown or its value is invalid; the message names the dotted key."""


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


_BRIEF = reprlib.Repr()  # attributes, not keywords: Python 3.11's Repr takes none
_BRIEF.maxlevel, _BRIEF.maxtuple, _BRIEF.maxlist, _BRIEF.maxdict, _BRIEF.maxset = 2, 4, 4, 4, 4
_BRIEF.maxstring, _BRIEF.maxother = 60, 60


def brief(value: Any) -> str:
    """A short repr of a config value for messages: bounded work and length whatever the value (a YAML alias bomb
    is a small file whose full repr would take minutes and gigabytes)."""
    return _BRIEF.repr(value)


# Dataset section.
@dataclass
class FlipParams:
    horizontal_flip: bool = True
    time_flip: bool = True


_JITTER = "dataset_params.augmentation_params.jitter_param"


@dataclass
class JitterParams:
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.1

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            _check(getattr(self, name) >= 0, f"{_JITTER}.{name}", "must be >= 0")
        _check(0 <= self.hue <= 0.5, f"{_JITTER}.hue", "must be in [0, 0.5]")


@dataclass
class AugmentationParams:
    flip_param: FlipParams = field(default_factory=FlipParams)
    jitter_param: JitterParams = field(default_factory=JitterParams)


@dataclass
class DatasetParams:
    root_dir: str = "data/vox"
    frame_shape: list[int] = field(default_factory=lambda: [256, 256, 3])
    id_sampling: bool = True
    pairs_list: Optional[str] = None
    augmentation_params: AugmentationParams = field(default_factory=AugmentationParams)
    # dagan additions: "folders" (frame folders / videos under root_dir) or "stream" (root_dir = a dataset written
    # by scripts/make_shards.py: a folder, s3://, gs://, azure:// or https:// URL, read through litdata); remote
    # chunks are cached in stream_cache_dir (empty: litdata's default) up to stream_cache_size (e.g. "50GB").
    format: str = "folders"
    stream_cache_dir: str = ""
    stream_cache_size: str = "50GB"

    def __post_init__(self) -> None:
        _check(len(self.frame_shape) == 3 and self.frame_shape[2] == 3 and min(self.frame_shape) > 0,
               "dataset_params.frame_shape", f"must be [height, width, 3], got {self.frame_shape}")
        _check(self.format != "shards", "dataset_params.format", "'shards' (tar shards) was replaced by 'stream': "
               "convert the shards with scripts/make_shards.py --convert OLD/index.json --out NEW")
        _check(self.format in DATA_FORMATS, "dataset_params.format",
               f"must be one of {DATA_FORMATS}, got {self.format!r}")
        _check(bool(re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]?B", self.stream_cache_size.strip(), re.IGNORECASE)),
               "dataset_params.stream_cache_size",
               f"must be a size such as 50GB or 500MB, got {self.stream_cache_size!r}")


# Model section.
@dataclass
class CommonParams:
    num_kp: int = 10
    num_channels: int = 3
    estimate_jacobian: bool = True

    def __post_init__(self) -> None:
        _check(self.num_kp >= 1, "model_params.common_params.num_kp", f"must be >= 1, got {self.num_kp}")
        _check(self.num_channels >= 1, "model_params.common_params.num_channels", "must be >= 1")


def _check_scale_factor(key: str, scale_factor: float) -> None:
    inverse = 1.0 / scale_factor if scale_factor > 0 else 0.0
    _check(0 < scale_factor <= 1 and abs(inverse - round(inverse)) < 1e-6, key,
           f"must be 1/n for an integer n >= 1 (e.g. 0.25), got {scale_factor}")


@dataclass
class KPDetectorParams:
    temperature: float = 0.1
    block_expansion: int = 32
    max_features: int = 1024
    scale_factor: float = 0.25
    num_blocks: int = 5
    single_jacobian_map: bool = False
    pad: int = 0

    def __post_init__(self) -> None:
        prefix = "model_params.kp_detector_params"
        _check(self.temperature > 0, f"{prefix}.temperature", "must be > 0")
        _check(self.num_blocks >= 1, f"{prefix}.num_blocks", "must be >= 1")
        _check_scale_factor(f"{prefix}.scale_factor", self.scale_factor)


@dataclass
class DenseMotionParams:
    block_expansion: int = 64
    max_features: int = 1024
    num_blocks: int = 5
    scale_factor: float = 0.25
    kp_variance: float = 0.01

    def __post_init__(self) -> None:
        prefix = "model_params.generator_params.dense_motion_params"
        _check(self.kp_variance > 0, f"{prefix}.kp_variance", "must be > 0")
        _check_scale_factor(f"{prefix}.scale_factor", self.scale_factor)


@dataclass
class GeneratorParams:
    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    num_bottleneck_blocks: int = 6
    estimate_occlusion_map: bool = True
    dense_motion_params: DenseMotionParams = field(default_factory=DenseMotionParams)
    # dagan additions (DaGAN++): decoder levels with depth-aware cross-modal attention, coarse to fine: 0 = the
    # bottleneck (DaGAN's attention, always present), l = after the l-th up block (2^l x the bottleneck size)
    attention_layers: list[int] = field(default_factory=lambda: [0])
    attention_window: int = 8  # window side of the attention at levels >= 1

    def __post_init__(self) -> None:
        key = "model_params.generator_params.attention_layers"
        levels = list(range(self.num_down_blocks + 1))
        _check(0 in self.attention_layers, key, "must include 0 (the bottleneck attention of DaGAN, which the "
               f"released weights hold), got {self.attention_layers}")
        _check(all(level in levels for level in self.attention_layers), key,
               f"levels must be among {levels} (0 = bottleneck, {self.num_down_blocks} = full resolution), "
               f"got {self.attention_layers}")
        _check(len(set(self.attention_layers)) == len(self.attention_layers), key,
               f"lists a level twice: {self.attention_layers}")
        _check(self.attention_window >= 1, "model_params.generator_params.attention_window", "must be >= 1")


@dataclass
class DiscriminatorParams:
    scales: list[float] = field(default_factory=lambda: [1.0])
    block_expansion: int = 32
    max_features: int = 512
    num_blocks: int = 4
    use_kp: bool = True
    sn: bool = False
    kp_variance: float = 0.01


@dataclass
class DepthParams:  # dagan addition: the self-supervised face depth network
    num_layers: int = 18
    checkpoint_dir: Optional[str] = None  # folder with the official encoder.pth and depth.pth

    def __post_init__(self) -> None:
        _check(self.num_layers in RESNET_DEPTHS, "model_params.depth_params.num_layers",
               f"must be one of {RESNET_DEPTHS}, got {self.num_layers}")


@dataclass
class ModelParams:
    common_params: CommonParams = field(default_factory=CommonParams)
    kp_detector_params: KPDetectorParams = field(default_factory=KPDetectorParams)
    generator_params: GeneratorParams = field(default_factory=GeneratorParams)
    discriminator_params: DiscriminatorParams = field(default_factory=DiscriminatorParams)
    generator: str = "DepthAwareGenerator"  # dagan addition (the reference's --generator)
    kp_detector_input: str = "rgbd"  # dagan addition (the reference's --rgbd / --use_depth)
    depth_params: DepthParams = field(default_factory=DepthParams)  # dagan addition
    # dagan addition: levels above the released 256 networks, each doubling the frame size (1 = a 512 model grown
    # from the 256 release). The depth network, keypoint detector, dense motion and the generator's encoder and
    # decoder see the frames halved this many times; the generator gains one full-resolution level per step.
    highres_levels: int = 0

    def __post_init__(self) -> None:
        _check(0 <= self.highres_levels <= 3, "model_params.highres_levels",
               f"must be 0 (256 models), 1 (512) or 2 (1024), got {self.highres_levels}")
        _check(self.generator in GENERATOR_TYPES, "model_params.generator",
               f"must be one of {', '.join(GENERATOR_TYPES)}, got {self.generator!r}")
        _check(self.kp_detector_input in KP_DETECTOR_INPUTS, "model_params.kp_detector_input",
               f"must be one of {', '.join(KP_DETECTOR_INPUTS)}, got {self.kp_detector_input!r}")
        if self.generator == "SPADEDepthAwareGenerator":
            params = self.generator_params
            _check(min(params.max_features, params.block_expansion * 2 ** params.num_down_blocks) == 256,
                   "model_params.generator_params",
                   "SPADEDepthAwareGenerator's decoder has fixed widths: it needs 256 encoder channels "
                   "(block_expansion 64, num_down_blocks 2)")

    @property
    def kp_detector_channels(self) -> int:
        """Input channels of the keypoint detector (4 for the released RGB-D detector)."""
        return KP_DETECTOR_INPUTS[self.kp_detector_input]


# Training section.
@dataclass
class TransformParams:
    sigma_affine: float = 0.05
    sigma_tps: float = 0.005
    points_tps: int = 5


@dataclass
class LossWeights:
    generator_gan: float = 1.0
    discriminator_gan: float = 1.0
    feature_matching: list[float] = field(default_factory=lambda: [10.0, 10.0, 10.0, 10.0])
    perceptual: list[float] = field(default_factory=lambda: [10.0, 10.0, 10.0, 10.0, 10.0])
    equivariance_value: float = 10.0
    equivariance_jacobian: float = 10.0
    kp_distance: float = 10.0
    kp_prior: float = 0.0
    kp_scale: float = 0.0
    depth_constraint: float = 0.0


TRAINING_STAGES = ("gan", "depth", "audio", "personalize")
FREEZABLE_NETWORKS = ("depth", "depth_encoder", "depth_decoder", "pose_network", "kp_detector", "generator",
                      "discriminator")
UNCERTAINTY_MODES = ("none", "image", "pose")
MIXED_PRECISION = ("no", "bf16")
KP_DISTANCE_FORMS = ("hinge", "sign")


@dataclass
class TrainParams:
    num_epochs: int = 150
    num_repeats: int = 75
    epoch_milestones: list[int] = field(default_factory=list)
    lr_generator: float = 2.0e-4
    lr_discriminator: float = 2.0e-4
    lr_kp_detector: float = 2.0e-4
    batch_size: int = 4  # global (all ranks together); the reference's was per GPU
    scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.25, 0.125])
    checkpoint_freq: int = 10
    transform_params: TransformParams = field(default_factory=TransformParams)
    loss_weights: LossWeights = field(default_factory=LossWeights)
    # dagan additions (defaults reproduce the reference's training where it had an equivalent):
    stage: str = "gan"  # "depth" (stage 1, self-supervised depth), "gan" (stage 2), "audio" or "personalize"
    num_steps: Optional[int] = None  # optimizer steps; None = num_epochs epochs of num_repeats passes
    vgg19_weights: Optional[str] = None  # torchvision vgg19-dcbb9e9d.pth; "random" = untrained (smoke tests only)
    kp_distance_form: str = "hinge"  # "hinge" pushes close keypoints apart; "sign" is the reference (no gradient)
    kp_distance_margin: float = 0.2
    seed: int = 0
    num_workers: int = 2
    grad_accumulation: int = 1
    mixed_precision: str = "no"  # "bf16": autocast on CUDA (ignored on the CPU)
    compile: bool = False  # torch.compile the networks
    sync_batchnorm: bool = False  # SyncBatchNorm across DDP ranks
    log_every: int = 10  # steps between stats.jsonl / TensorBoard records
    image_every: int = 500  # steps between PNG grids
    checkpoint_every: Optional[int] = None  # steps between checkpoints; None = every checkpoint_freq epochs
    keep_checkpoints: int = 3
    init_checkpoint: Optional[str] = None  # fine-tuning: start the networks from an official release file, an
    # official depth folder or one of our checkpoints (optimizers start fresh); see dagan/training/finetune.py
    freeze: list[str] = field(default_factory=list)  # networks (or dotted submodules) kept fixed, e.g. [kp_detector]

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "train_params.batch_size", "must be >= 1")
        for name in ("lr_generator", "lr_discriminator", "lr_kp_detector"):
            _check(getattr(self, name) > 0, f"train_params.{name}", "must be > 0")
        _check(self.stage in TRAINING_STAGES, "train_params.stage", f"must be one of {TRAINING_STAGES}, got {self.stage!r}")
        _check(self.mixed_precision in MIXED_PRECISION, "train_params.mixed_precision",
               f"must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        _check(self.kp_distance_form in KP_DISTANCE_FORMS, "train_params.kp_distance_form",
               f"must be one of {KP_DISTANCE_FORMS}, got {self.kp_distance_form!r}")
        _check(self.num_steps is None or self.num_steps >= 1, "train_params.num_steps", "must be >= 1")
        _check(self.grad_accumulation >= 1, "train_params.grad_accumulation", "must be >= 1")
        _check(self.keep_checkpoints >= 1, "train_params.keep_checkpoints", "must be >= 1")
        _check(self.checkpoint_every is None or self.checkpoint_every >= 1, "train_params.checkpoint_every",
               "must be >= 1")
        _check(self.log_every >= 1 and self.image_every >= 1, "train_params.log_every", "log_every and "
               "image_every must be >= 1")
        for index, name in enumerate(self.freeze):
            _check(name.split(".")[0] in FREEZABLE_NETWORKS, f"train_params.freeze[{index}]",
                   f"{name!r} is not a network; use one of {', '.join(FREEZABLE_NETWORKS)} (or a dotted submodule, "
                   "e.g. generator.dense_motion_network)")


@dataclass
class DepthTrainParams:  # dagan addition: stage 1, self-supervised face depth (DaGAN Sec. 3.1)
    num_steps: int = 50000
    batch_size: int = 32  # global
    lr: float = 1.0e-4
    lr_step: Optional[int] = None  # steps between x0.1 learning-rate decays; None = constant
    frame_stride: int = 1  # frames between the target and its two neighbours
    ssim_weight: float = 0.85
    smoothness: float = 1.0e-3  # edge-aware smoothness weight at scale 0 (divided by 2**scale)
    automask: bool = True  # ignore pixels that a static camera explains better (Monodepth2)
    # DaGAN++ per-pixel uncertainty weighting of the photometric loss: "none", "image" (a small network on the
    # target frame) or "pose" (the pose network predicts one map per view); true/false mean image/none
    uncertainty: Union[str, bool] = "none"
    pose_num_layers: int = 18
    min_depth: float = 0.1
    max_depth: float = 100.0

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "depth_train_params.batch_size", "must be >= 1")
        _check(self.lr > 0, "depth_train_params.lr", "must be > 0")
        _check(0 <= self.ssim_weight <= 1, "depth_train_params.ssim_weight", "must be in [0, 1]")
        _check(0 < self.min_depth < self.max_depth, "depth_train_params.min_depth", "need 0 < min_depth < max_depth")
        _check(self.pose_num_layers in RESNET_DEPTHS, "depth_train_params.pose_num_layers",
               f"must be one of {RESNET_DEPTHS}")
        _check(self.frame_stride >= 1, "depth_train_params.frame_stride", "must be >= 1")
        if isinstance(self.uncertainty, bool):  # the older boolean form
            self.uncertainty = "image" if self.uncertainty else "none"
        _check(self.uncertainty in UNCERTAINTY_MODES, "depth_train_params.uncertainty",
               f"must be one of {', '.join(UNCERTAINTY_MODES)}, got {self.uncertainty!r}")


AUDIO_POSE_MODELS = ("affine", "similarity")


@dataclass
class AudioParams:  # dagan addition: the audio-to-motion model (Yi et al. 2020 on DaGAN keypoints)
    num_mels: int = 80
    context_seconds: float = 0.2  # audio on each side of a frame that its window sees
    audio_channels: int = 128  # width of the per-frame audio encoding
    hidden_channels: int = 128  # GRU width of the audio-to-local-motion network
    pose_hidden_channels: int = 64  # GRU width of the head-pose generator
    noise_channels: int = 8  # per-frame noise of the head-pose generator (0: deterministic)
    pose_model: str = "affine"  # the head-pose part of the motion: "affine" or "similarity"

    def __post_init__(self) -> None:
        _check(self.num_mels >= 8, "audio_params.num_mels", "must be >= 8")
        _check(self.context_seconds >= 0.2, "audio_params.context_seconds",
               f"must be >= 0.2 (lips need +-200 ms of audio), got {self.context_seconds}")
        for name in ("audio_channels", "hidden_channels", "pose_hidden_channels"):
            _check(getattr(self, name) >= 1, f"audio_params.{name}", "must be >= 1")
        _check(self.noise_channels >= 0, "audio_params.noise_channels", "must be >= 0")
        _check(self.pose_model in AUDIO_POSE_MODELS, "audio_params.pose_model",
               f"must be one of {AUDIO_POSE_MODELS}, got {self.pose_model!r}")


@dataclass
class AudioTrainParams:  # dagan addition: stages "audio" (general model) and "personalize" (one target clip)
    data_dir: str = "data/av"  # folder of prepared .npz items (scripts/prepare_av.py)
    target: Optional[str] = None  # personalize: the target clip's prepared .npz
    init_checkpoint: Optional[str] = None  # personalize: the general audio model to start from (None: scratch)
    num_steps: int = 20000
    batch_size: int = 16  # sequences per step
    sequence_length: int = 50  # frames per training sequence
    lr: float = 1.0e-3
    l1: float = 1.0  # L1 on the (standardised) local motion
    velocity: float = 1.0  # L1 on its frame-to-frame change (MSE alone gives mumbling lips)
    pose: float = 0.1  # the down-weighted head-pose term (L1 + matching the clip's pose spread)
    smoothness: float = 0.1  # L1 on second differences of the prediction
    validation_fraction: float = 0.2  # personalize: the clip's last part, for early stopping
    validate_every: int = 25  # personalize: steps between validations
    patience: int = 4  # personalize: validations without improvement before stopping
    personalize_local_lr: float = 0.1  # personalize: learning-rate factor of the lips network (it overfits a
    # short clip within a few dozen steps, while the head-pose generator needs longer to take on the style)

    def __post_init__(self) -> None:
        prefix = "audio_train_params"
        _check(self.num_steps >= 1 and self.batch_size >= 1, f"{prefix}.num_steps", "num_steps and batch_size "
               "must be >= 1")
        _check(self.sequence_length >= 4, f"{prefix}.sequence_length", "must be >= 4 frames")
        _check(self.lr > 0, f"{prefix}.lr", "must be > 0")
        for name in ("l1", "velocity", "pose", "smoothness", "personalize_local_lr"):
            _check(getattr(self, name) >= 0, f"{prefix}.{name}", "must be >= 0")
        _check(0 < self.validation_fraction < 1, f"{prefix}.validation_fraction", "must be in (0, 1)")
        _check(self.validate_every >= 1 and self.patience >= 1, f"{prefix}.validate_every",
               "validate_every and patience must be >= 1")


# Evaluation / animation / visualisation sections (kept for compatibility with official files).
@dataclass
class ReconstructionParams:
    num_videos: int = 1000
    format: str = ".mp4"


@dataclass
class NormalizationParams:
    adapt_movement_scale: bool = False
    use_relative_movement: bool = True
    use_relative_jacobian: bool = True


@dataclass
class AnimateParams:
    num_pairs: int = 50
    format: str = ".mp4"
    normalization_params: NormalizationParams = field(default_factory=NormalizationParams)


@dataclass
class VisualizerParams:
    kp_size: int = 5
    draw_border: bool = True
    colormap: str = "gist_rainbow"


@dataclass
class Config:
    """A whole configuration file. Every section is optional in YAML; missing ones take defaults."""

    dataset_params: DatasetParams = field(default_factory=DatasetParams)
    model_params: ModelParams = field(default_factory=ModelParams)
    train_params: TrainParams = field(default_factory=TrainParams)
    depth_train_params: DepthTrainParams = field(default_factory=DepthTrainParams)  # dagan addition
    audio_params: AudioParams = field(default_factory=AudioParams)  # dagan addition
    audio_train_params: AudioTrainParams = field(default_factory=AudioTrainParams)  # dagan addition
    reconstruction_params: ReconstructionParams = field(default_factory=ReconstructionParams)
    animate_params: AnimateParams = field(default_factory=AnimateParams)
    visualizer_params: VisualizerParams = field(default_factory=VisualizerParams)

    def __post_init__(self) -> None:
        factor = 2 ** self.model_params.highres_levels
        height, width = self.dataset_params.frame_shape[:2]
        _check(factor == 1 or height % (4 * factor) == 0 and width % (4 * factor) == 0, "dataset_params.frame_shape",
               f"{height}x{width} must be a multiple of {4 * factor} with model_params.highres_levels "
               f"{self.model_params.highres_levels} (the networks see the frames halved that many times)")


# Loading: dict -> dataclasses with type checks.
def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field annotation; return it (ints become floats for float fields)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        if isinstance(value, bool) and bool in arguments:
            return value
        return _coerce(value, arguments[0], key)
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, key)
    if origin is list:
        _check(isinstance(value, (list, tuple)), key, f"expected a list, got {brief(value)}")
        (item_type,) = typing.get_args(annotation)
        return [_coerce(item, item_type, f"{key}[{index}]") for index, item in enumerate(value)]
    if annotation is bool:
        _check(isinstance(value, bool), key, f"expected true/false, got {brief(value)}")
        return value
    if annotation is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, f"expected an integer, got {brief(value)}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "2e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {brief(value)}") from None
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key,
               f"expected a number, got {brief(value)}")
        return float(value)
    if annotation is str:
        _check(isinstance(value, str), key, f"expected a string, got {brief(value)}")
        return value
    raise TypeError(f"{key}: unsupported annotation {annotation!r}")


def _build(cls: type, values: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, naming the dotted key of any problem."""
    where = prefix or "the top level"
    if values is None:
        values = {}
    _check(isinstance(values, dict), where, f"expected a mapping of keys, got {brief(values)}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    arguments = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in known:
            close = difflib.get_close_matches(str(name), sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{key}: unknown key (valid keys: {', '.join(sorted(known))}){hint}")
        arguments[name] = _coerce(value, hints[name], key)
    return cls(**arguments)


def config_from_dict(values: dict) -> Config:
    """Build a :class:`Config` from nested dicts (as ``yaml.safe_load`` returns them)."""
    return _build(Config, values, "")


def config_to_dict(config: Config) -> dict:
    """Nested plain dicts/lists, suitable for YAML and for ``torch.save(weights_only=True)``."""
    return dataclasses.asdict(config)


def apply_overrides(values: dict, overrides: Iterable[str]) -> dict:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to nested dicts, in place."""
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r}: expected dotted.key=value")
        dotted_key, raw_value = override.split("=", 1)
        parts = dotted_key.strip().split(".")
        node = values
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            _check(isinstance(child, dict), ".".join(parts[: depth + 1]), "is a value, not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw_value) if raw_value.strip() else None
    return values


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply dotted overrides."""
    values: dict = {}
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"config file {str(path)!r} does not exist (see the configs/ folder)")
        with open(path, "r", encoding="utf-8") as handle:
            try:
                values = yaml.safe_load(handle) or {}
            except yaml.YAMLError as error:
                raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from None
    return config_from_dict(apply_overrides(values, overrides))


def save_config(config: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))
