"""Training datasets over synthetic talking-head clips (:mod:`dagan.data.synthetic.heads`) with exact ground truth.

Both training stages read them when ``dataset_params.root_dir`` is a *synthetic root*, a string of the form

    synthetic://num_clips=64,num_frames=16,fps=5,seed=0

(every key optional; the defaults are those of :class:`SyntheticSpec`). Clip ``i`` of the set is
``render_clip(num_frames, size, seed=spec.seed + i, fps=spec.fps, ...)`` with ``size`` from
``dataset_params.frame_shape`` (square frames only), so a set is reproducible from its string alone, and a
held-out set is one with a disjoint seed range (``scripts/eval_depth.py`` checks this).

Motion between frames: the renderer's head trajectories are sums of 0.1-0.5 Hz sinusoids. At 25 fps and
64 x 64 consecutive frames move by a fraction of a pixel, too little for the photometric loss of the depth
stage (a wrong depth then costs less than bilinear interpolation noise). A lower ``fps`` spreads the same
trajectories over fewer frames: at ``fps=5`` consecutive frames are 0.2 s apart and the head moves by about
1-4 pixels at 64 x 64, like ``depth_train_params.frame_stride=5`` at 25 fps would.

Determinism: samples are pure functions of ``(seed, key)`` exactly as for the video datasets
(:mod:`dagan.data.datasets`): the target frame, the pair and the augmentation come from
``numpy.random.default_rng([seed, pass, item])``, and rendering never touches a global random state.

Rendering cost: about 40 ms per 64 x 64 frame on one CPU core. Clips are rendered whole on first use and kept
in a per-process cache (each DataLoader worker renders its own; prefer ``num_workers: 0`` on a CPU), or all
at construction with ``prerender=True``.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from dagan.config import AugmentationParams, DatasetParams
from dagan.data.augmentation import apply_augmentation, draw_augmentation
from dagan.data.datasets import DEFAULT_DEPTH_STRIDE, SeededDataset, _check_index, _check_seed
from dagan.data.synthetic.heads import MotionRanges, SyntheticClip, render_clip

SYNTHETIC_SCHEME = "synthetic://"


@dataclass(frozen=True)
class SyntheticSpec:
    """A set of seeded synthetic clips: clip i is rendered with seed ``seed + i``.

    num_clips: clips in the set (the dataset's items).
    num_frames: frames per clip.
    fps: frame rate of the trajectories; lower = more motion between consecutive frames (module docstring).
    seed: render seed of clip 0 (not the sampling seed, which is ``train_params.seed``).
    supersample: sub-pixel rays per side at silhouettes and depth edges (1 = none; see ``render_clip``).
    talking: the jaw moves (True) or the mouth stays closed, a rigid head (False).
    rotation_scale, translation_scale: factors on the renderer's default limits of head rotation (yaw 30,
        pitch 15, roll 10 degrees) and translation ((0.05, 0.04, 0.08) scene units) (module docstring).
    """

    num_clips: int = 64
    num_frames: int = 16
    fps: float = 5.0
    seed: int = 0
    supersample: int = 1
    talking: bool = True
    rotation_scale: float = 1.0
    translation_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("num_clips", "num_frames", "supersample"):
            if getattr(self, name) < 1:
                raise ValueError(f"synthetic root: {name} must be >= 1, got {getattr(self, name)}")
        if self.fps <= 0:
            raise ValueError(f"synthetic root: fps must be > 0, got {self.fps}")
        for name in ("rotation_scale", "translation_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"synthetic root: {name} must be >= 0, got {getattr(self, name)}")
        _check_seed(self.seed)

    @classmethod
    def parse(cls, root_dir: str) -> "SyntheticSpec":
        """``synthetic://key=value,key=value`` -> spec; an unknown key or a bad value names the key."""
        if not is_synthetic_root(root_dir):
            raise ValueError(f"not a synthetic root (expected '{SYNTHETIC_SCHEME}key=value,...'): {root_dir!r}")
        body = str(root_dir)[len(SYNTHETIC_SCHEME):].strip().strip("/")
        fields = {field.name: field.type for field in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for entry in filter(None, (part.strip() for part in body.split(","))):
            key, equals, raw = (part.strip() for part in entry.partition("="))
            if not equals or key not in fields:
                raise ValueError(f"synthetic root {root_dir!r}: unknown entry {entry!r} "
                                 f"(valid keys: {', '.join(fields)})")
            values[key] = _parse_value(key, raw, fields[key], root_dir)
        return cls(**values)

    def __str__(self) -> str:
        entries = ",".join(f"{field.name}={str(getattr(self, field.name)).lower()}"
                           for field in dataclasses.fields(self))
        return SYNTHETIC_SCHEME + entries

    @property
    def seeds(self) -> range:
        """The render seeds of the clips, ``seed .. seed + num_clips - 1``."""
        return range(self.seed, self.seed + self.num_clips)

    @property
    def motion(self) -> MotionRanges:
        """The renderer's motion limits for this set."""
        default = MotionRanges()
        return dataclasses.replace(
            default, max_yaw_degrees=default.max_yaw_degrees * self.rotation_scale,
            max_pitch_degrees=default.max_pitch_degrees * self.rotation_scale,
            max_roll_degrees=default.max_roll_degrees * self.rotation_scale,
            max_translation=tuple(limit * self.translation_scale for limit in default.max_translation),
            mouth_opening_range=default.mouth_opening_range if self.talking else (0.0, 0.0))

    def render(self, index: int, size: int) -> SyntheticClip:
        """Render clip ``index`` (0-based) at ``size`` x ``size``."""
        if not 0 <= index < self.num_clips:
            raise IndexError(f"clip index {index} out of range for {self.num_clips} clips")
        return render_clip(self.num_frames, size=size, seed=self.seed + index, fps=self.fps,
                           supersample=self.supersample, motion=self.motion)


def _parse_value(key: str, raw: str, annotation: str, root_dir: str) -> Any:
    try:
        if annotation == "bool":
            if raw.lower() not in ("true", "false"):
                raise ValueError
            return raw.lower() == "true"
        return int(raw) if annotation == "int" else float(raw)
    except ValueError:
        raise ValueError(f"synthetic root {root_dir!r}: {key} expects a {annotation}, got {raw!r}") from None


def is_synthetic_root(root_dir: Any) -> bool:
    """True for ``dataset_params.root_dir`` values that name a synthetic set (``synthetic://...``)."""
    return isinstance(root_dir, str) and root_dir.startswith(SYNTHETIC_SCHEME)


def square_size(frame_shape: Sequence[int]) -> int:
    """The side of the square frames of ``dataset_params.frame_shape`` (H, W, 3); the renderer makes squares."""
    height, width = int(frame_shape[0]), int(frame_shape[1])
    if height != width:
        raise ValueError(f"synthetic clips are square: dataset_params.frame_shape must be [S, S, 3], got "
                         f"{list(frame_shape)}")
    return height


class SyntheticClipStore:
    """Clips of a :class:`SyntheticSpec`, rendered on first use and kept in a per-process LRU cache.

    cache_clips: clips kept (None = all of them; a 16-frame 64 x 64 clip holds about 1.3 MB).
    """

    def __init__(self, spec: SyntheticSpec, size: int, cache_clips: Optional[int] = None,
                 prerender: bool = False) -> None:
        self.spec, self.size = spec, int(size)
        self.cache_clips = spec.num_clips if cache_clips is None else max(1, int(cache_clips))
        self._cache: "OrderedDict[int, SyntheticClip]" = OrderedDict()
        if prerender:
            for index in range(min(spec.num_clips, self.cache_clips)):
                self.clip(index)

    def __len__(self) -> int:
        return self.spec.num_clips

    def clip(self, index: int) -> SyntheticClip:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        clip = self.spec.render(index, self.size)
        self._cache[index] = clip
        while len(self._cache) > self.cache_clips:
            self._cache.popitem(last=False)
        return clip

    def name(self, index: int) -> str:
        return f"synthetic-{self.spec.seed + index:06d}"


class _SyntheticDataset(SeededDataset):
    """Shared machinery: the clip store, the per-sample generator, augmentation of frames and ground truth."""

    def __init__(self, spec: SyntheticSpec, frame_shape: Sequence[int], is_train: bool,
                 augmentation_params: Optional[AugmentationParams], seed: int, min_frames: int,
                 cache_clips: Optional[int], prerender: bool) -> None:
        if spec.num_frames < min_frames:
            raise ValueError(f"synthetic root: num_frames={spec.num_frames} is too short, need >= {min_frames}")
        self.seed = _check_seed(seed)
        self.epoch = 0
        self.is_train = bool(is_train)
        self.augmentation_params = augmentation_params if is_train else None
        self.store = SyntheticClipStore(spec, square_size(frame_shape), cache_clips, prerender)

    @property
    def spec(self) -> SyntheticSpec:
        return self.store.spec

    def __len__(self) -> int:
        return len(self.store)

    def sample(self, key: int) -> dict[str, Any]:
        pass_index, item = divmod(_check_index(key), len(self))
        rng = np.random.default_rng([self.seed, pass_index, item])
        return self.make_sample(self.store.clip(item), self.store.name(item), rng)

    def make_sample(self, clip: SyntheticClip, name: str, rng: np.random.Generator) -> dict[str, Any]:
        raise NotImplementedError

    def _augment(self, clip: SyntheticClip, indices: list[int], rng: np.random.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frames (T, 3, H, W), depth (T, 1, H, W) and head mask (T, 1, H, W) of ``indices`` under one draw of
        flips and jitter (train only); the ground truth follows the flips, the jitter touches colours only."""
        draw = draw_augmentation(self.augmentation_params, rng)
        frames = apply_augmentation(clip.frames[indices], draw)
        depth, head_mask = clip.depth[indices], clip.head_mask[indices]
        if draw.time_flip:
            depth, head_mask = depth.flip(0), head_mask.flip(0)
        elif draw.horizontal_flip:
            depth, head_mask = depth.flip(-1), head_mask.flip(-1)
        return frames, depth, head_mask


class SyntheticTripletDataset(_SyntheticDataset):
    """Frames ``(t - stride, t, t + stride)`` of synthetic clips for the depth stage (as ``DepthTripletDataset``).

    Training: ``t`` uniform in ``[stride, num_frames - 1 - stride]``, one augmentation draw for the triplet (a
    time flip swaps ``previous`` and ``next``). Test: ``t = num_frames // 2``, no augmentation.

    Returns (``dataset[index]``): ``{"previous", "target", "next"}`` (3, H, W) float32 in [0, 1], the target's
    ground truth ``"depth"`` (1, H, W) camera z and ``"head_mask"`` (1, H, W) bool, and ``"name"``.
    """

    def __init__(self, spec: SyntheticSpec, frame_shape: Sequence[int] = (64, 64, 3), is_train: bool = True,
                 augmentation_params: Optional[AugmentationParams] = None, seed: int = 0,
                 stride: int = DEFAULT_DEPTH_STRIDE, cache_clips: Optional[int] = None,
                 prerender: bool = False) -> None:
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride = int(stride)
        super().__init__(spec, frame_shape, is_train, augmentation_params, seed, 2 * self.stride + 1,
                         cache_clips, prerender)

    @classmethod
    def from_config(cls, params: DatasetParams, is_train: bool = True, seed: int = 0,
                    stride: int = DEFAULT_DEPTH_STRIDE) -> "SyntheticTripletDataset":
        """Build from ``dataset_params`` whose ``root_dir`` is a synthetic root; ``stride`` is
        ``depth_train_params.frame_stride``."""
        return cls(SyntheticSpec.parse(params.root_dir), params.frame_shape, is_train, params.augmentation_params,
                   seed, stride=stride)

    def make_sample(self, clip: SyntheticClip, name: str, rng: np.random.Generator) -> dict[str, Any]:
        if self.is_train:
            target = int(rng.integers(self.stride, clip.num_frames - self.stride))
        else:
            target = clip.num_frames // 2
        frames, depth, head_mask = self._augment(clip, [target - self.stride, target, target + self.stride], rng)
        return {"previous": frames[0], "target": frames[1], "next": frames[2], "depth": depth[1],
                "head_mask": head_mask[1], "name": name}


class SyntheticPairDataset(_SyntheticDataset):
    """(source, driving) frame pairs of synthetic clips for the GAN stage (as ``FramesDataset``).

    Training: two frame indices uniform with replacement, sorted (source first), one augmentation draw.
    Test: source = frame 0, driving = frame ``num_frames // 2``, no augmentation.

    Returns (``dataset[index]``): ``{"source", "driving"}`` (3, H, W) float32 in [0, 1],
    ``"depth_source"``, ``"depth_driving"`` (1, H, W) camera z, and ``"name"``.
    """

    def __init__(self, spec: SyntheticSpec, frame_shape: Sequence[int] = (64, 64, 3), is_train: bool = True,
                 augmentation_params: Optional[AugmentationParams] = None, seed: int = 0,
                 cache_clips: Optional[int] = None, prerender: bool = False) -> None:
        super().__init__(spec, frame_shape, is_train, augmentation_params, seed, 1, cache_clips, prerender)

    @classmethod
    def from_config(cls, params: DatasetParams, is_train: bool = True, seed: int = 0) -> "SyntheticPairDataset":
        """Build from ``dataset_params`` whose ``root_dir`` is a synthetic root."""
        return cls(SyntheticSpec.parse(params.root_dir), params.frame_shape, is_train, params.augmentation_params,
                   seed)

    def make_sample(self, clip: SyntheticClip, name: str, rng: np.random.Generator) -> dict[str, Any]:
        if self.is_train:
            indices = np.sort(rng.integers(0, clip.num_frames, size=2)).tolist()
        else:
            indices = [0, clip.num_frames // 2]
        frames, depth, _ = self._augment(clip, indices, rng)
        return {"source": frames[0], "driving": frames[1], "depth_source": depth[0], "depth_driving": depth[1],
                "name": name}
