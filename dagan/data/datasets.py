"""Training datasets: frame pairs for the GAN stage, frame triplets for the depth stage, and sampling.

Determinism (what makes resumed training reproduce an uninterrupted run)
------------------------------------------------------------------------
Every sample is a pure function of ``(seed, key)``. The *key* of ``dataset[index]`` is
``epoch * len(dataset) + index`` (``epoch`` from ``set_epoch``, default 0); a key stands for item
``key % len(dataset)`` in pass ``key // len(dataset)``, and the sample's random numbers (video of the
identity, frame indices, flips, jitter factors, the fallback when a video is unreadable) all come from
``numpy.random.default_rng([seed, pass, item])``. No global random state is touched, so the result does
not depend on the DataLoader's worker count, on which worker loads the sample, or on what was loaded
before. Indices ``>= len(dataset)`` are therefore valid and address later passes:
``dataset[p * len(dataset) + i]`` is item ``i`` with the randomness of pass ``epoch + p``.

Two ways to use it:

* Counting steps (recommended): ``make_sampler(dataset, seed, rank, world_size)`` yields an endless stream
  of keys, shuffled per pass by ``(seed, pass)``; ``sampler.set_start(step * global_batch_size)`` resumes
  mid-stream; each rank takes its own run of keys in every block, so no ``DistributedSampler`` is needed. Leave
  ``set_epoch`` at 0.
  The position counts samples over all ranks, so a run resumed with another number of ranks (the same global
  batch) continues the stream without repeating or skipping a sample. Streaming datasets
  (``dataset_params.format: stream``, :mod:`dagan.data.stream`) use the same sampler: a sample reads its two or
  three frames by index.
* Counting epochs: a finite sampler (``shuffle=True`` with a seeded generator) and ``set_epoch(epoch)``
  before each epoch, in every process (with ``persistent_workers`` the workers keep their own copy).

Skipped videos: unreadable videos found while indexing are listed in ``skipped`` with one warning. One that
fails later while loading a sample is recorded (with a warning) in the ``skipped`` list of the process that
loaded it (a DataLoader worker has its own copy of the dataset) and the sample is replaced by another item
drawn from the same generator, so the replacement is deterministic too.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from dagan.config import DATA_FORMATS, AugmentationParams, DatasetParams
from dagan.data.augmentation import apply_augmentation, draw_augmentation
from dagan.data.frames import DEFAULT_CACHE_BYTES, Clip, DatasetError, PathLike, VideoItem, VideoStore
from dagan.data.stream import DEFAULT_CACHE_SIZE, StreamStore
from dagan.io import MediaError

MAX_ATTEMPTS = 32  # items tried for one sample before giving up (all of them unreadable)
DEFAULT_DEPTH_STRIDE = 1


def _check_seed(seed: int) -> int:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_index(index: int) -> int:
    if not isinstance(index, (int, np.integer, torch.Tensor)) or int(index) < 0:
        raise IndexError(f"dataset index must be a non-negative integer, got {index!r}")
    return int(index)


class SeededDataset(Dataset):
    """A map-style dataset whose samples are pure functions of ``(seed, key)`` (see the module docstring).

    Subclasses implement ``__len__`` and ``sample(key)``.
    """

    seed: int = 0
    epoch: int = 0

    def __len__(self) -> int:
        raise NotImplementedError

    def sample(self, key: int) -> dict[str, Any]:
        """The sample of item ``key % len(self)`` with the randomness of pass ``key // len(self)``."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Shift ``dataset[index]`` to the randomness of pass ``epoch`` (key ``epoch * len + index``)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.sample(self.epoch * len(self) + _check_index(index))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """One pass over the items (``dataset[0]`` ... ``dataset[len - 1]``)."""
        return (self[index] for index in range(len(self)))


class _VideoDataset(SeededDataset):
    """Shared machinery: a :class:`VideoStore`, items (identities or videos), the seeded fallback loop."""

    def __init__(self, root_dir: PathLike, frame_shape: Sequence[int], id_sampling: bool, is_train: bool,
                 augmentation_params: Optional[AugmentationParams], seed: int, min_frames: int,
                 probe_videos: bool, cache_bytes: int, format: str = "folders", stream_cache_dir: str = "",
                 stream_cache_size: str = DEFAULT_CACHE_SIZE) -> None:
        if format not in DATA_FORMATS:
            raise ValueError(f"format must be one of {DATA_FORMATS}, got {format!r}")
        self.seed = _check_seed(seed)
        self.epoch = 0
        self.is_train = bool(is_train)
        self.id_sampling = bool(id_sampling and is_train)
        self.augmentation_params = augmentation_params if is_train else None
        split = "train" if is_train else "test"
        if format == "stream":  # root_dir is a dataset written by scripts/make_shards.py (a folder or a URL)
            self.store = StreamStore(root_dir, split, frame_shape[:2], cache_bytes=cache_bytes, min_frames=min_frames,
                                     cache_dir=stream_cache_dir, max_cache_size=stream_cache_size)
        else:
            self.store = VideoStore(root_dir, split, frame_shape[:2], probe_videos=probe_videos,
                                    cache_bytes=cache_bytes, min_frames=min_frames)
        self.groups, self.item_names = _group_videos(self.store.items, self.id_sampling)

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def videos(self) -> list[VideoItem]:
        """Every usable video of the split (found at indexing)."""
        return self.store.items

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """``(name, reason)`` of each video skipped by this process (at indexing or when loading)."""
        return self.store.skipped

    def sample(self, key: int) -> dict[str, Any]:
        pass_index, item = divmod(_check_index(key), len(self))
        rng = np.random.default_rng([self.seed, pass_index, item])
        for _ in range(MAX_ATTEMPTS):
            video = self._draw_video(item, rng)
            try:
                return self.make_sample(self.store.open_clip(video), rng)
            except (MediaError, OSError) as error:
                self.store.mark_unusable(video, str(error) or type(error).__name__)  # no-op if already recorded
                item = int(rng.integers(len(self)))
        raise DatasetError(f"{MAX_ATTEMPTS} videos in a row could not be read from '{self.store.split_dir}' "
                           f"({len(self.skipped)} skipped so far); check the dataset")

    def make_sample(self, clip: Clip, rng: np.random.Generator) -> dict[str, Any]:
        raise NotImplementedError

    def planned_videos(self, pass_index: int) -> np.ndarray:
        """``(len(self),)``: the index in ``videos`` of the clip each item reads in pass ``pass_index``: the
        first draw of ``sample`` (another clip is read only when this one turns out to be unreadable)."""
        return np.array([group[0] if len(group) == 1 else  # (a one-video group needs no generator)
                         self._draw_video(item, np.random.default_rng([self.seed, pass_index, item]))
                         for item, group in enumerate(self.groups)], dtype=np.int64)

    def _draw_video(self, item: int, rng: np.random.Generator) -> int:
        """A video of item ``item`` (one of its identity's videos with id_sampling), drawn from ``rng``."""
        return self.groups[item][int(rng.integers(len(self.groups[item])))]

    def _augment(self, frames: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """``(T, 3, H, W)`` -> ``(T, 3, H, W)``: one draw of flips and jitter for all frames (train only)."""
        return apply_augmentation(frames, draw_augmentation(self.augmentation_params, rng))


def _format_arguments(params: DatasetParams) -> dict[str, Any]:
    """``format`` and the stream cache settings from ``dataset_params`` (folders when the fields are absent)."""
    return {"format": getattr(params, "format", "folders"),
            "stream_cache_dir": getattr(params, "stream_cache_dir", ""),
            "stream_cache_size": getattr(params, "stream_cache_size", DEFAULT_CACHE_SIZE)}


def _group_videos(videos: list[VideoItem], id_sampling: bool) -> tuple[list[list[int]], list[str]]:
    """Items as lists of video indices: one per identity (sorted) with id_sampling, else one per video."""
    if not id_sampling:
        return [[index] for index in range(len(videos))], [video.name for video in videos]
    groups: "OrderedDict[str, list[int]]" = OrderedDict()
    for index, video in enumerate(videos):
        groups.setdefault(video.identity, []).append(index)
    identities = sorted(groups)
    return [groups[identity] for identity in identities], identities


class FramesDataset(_VideoDataset):
    """(source, driving) frame pairs for the GAN stage, as the reference ``FramesDataset``.

    Training (``is_train=True``): with ``id_sampling`` the items are the unique identities (name up to the
    first ``#``) and each sample picks a random video of its identity; otherwise the items are the videos.
    Two frame indices are drawn uniformly with replacement and sorted: source = the first, driving = the
    second. Both frames then get the same augmentation (flips, colour jitter).
    Test (``is_train=False``): items are the videos of ``test/``; source = frame 0, driving = frame
    ``num_frames // 2``; no augmentation.

    Args:
        root_dir: dataset root (see :mod:`dagan.data.frames` for the layouts).
        frame_shape: ``(H, W, 3)`` of the returned frames (``dataset_params.frame_shape``).
        id_sampling: one item per identity (training only).
        is_train: the train split with augmentation, or the deterministic test pairs.
        augmentation_params: flips and jitter; None for no augmentation.
        seed: base seed of every sample's randomness (>= 0).
        probe_videos, cache_bytes: see :class:`VideoStore`.
    Returns (``dataset[index]``):
        ``{"source": (3, H, W) float32 in [0, 1], "driving": (3, H, W) float32 in [0, 1], "name": str}``;
        ``name`` is the video's name (file or folder name).
    """

    def __init__(self, root_dir: PathLike, frame_shape: Sequence[int] = (256, 256, 3), id_sampling: bool = True,
                 is_train: bool = True, augmentation_params: Optional[AugmentationParams] = None, seed: int = 0,
                 probe_videos: bool = True, cache_bytes: int = DEFAULT_CACHE_BYTES, format: str = "folders",
                 **stream_settings: str) -> None:
        super().__init__(root_dir, frame_shape, id_sampling, is_train, augmentation_params, seed,
                         min_frames=1, probe_videos=probe_videos, cache_bytes=cache_bytes, format=format,
                         **stream_settings)

    @classmethod
    def from_config(cls, params: DatasetParams, is_train: bool = True, seed: int = 0) -> "FramesDataset":
        """Build from ``dataset_params`` (``pairs_list`` is not used for training, as in the reference)."""
        return cls(params.root_dir, params.frame_shape, params.id_sampling, is_train, params.augmentation_params,
                   seed, probe_videos=getattr(params, "probe_videos", True),
                   cache_bytes=int(getattr(params, "video_cache_mib", DEFAULT_CACHE_BYTES // 2**20)) * 2**20,
                   **_format_arguments(params))

    def make_sample(self, clip: Clip, rng: np.random.Generator) -> dict[str, Any]:
        if self.is_train:
            indices = np.sort(rng.integers(0, clip.num_frames, size=2))
        else:
            indices = np.array([0, clip.num_frames // 2])
        frames = self._augment(clip.frames(indices.tolist()), rng)  # (2, 3, H, W)
        return {"source": frames[0], "driving": frames[1], "name": clip.name}


class DepthTripletDataset(_VideoDataset):
    """Consecutive frames ``(t - stride, t, t + stride)`` of one video for the self-supervised depth stage.

    Training: ``t`` uniform in ``[stride, num_frames - 1 - stride]``; the three frames share one augmentation
    draw (a time flip swaps ``previous`` and ``next``). Test: ``t = num_frames // 2``, no augmentation.
    Videos shorter than ``2 * stride + 1`` frames are skipped. ``id_sampling`` works as in
    :class:`FramesDataset` (off by default).

    Returns (``dataset[index]``):
        ``{"previous": (3, H, W), "target": (3, H, W), "next": (3, H, W), "name": str}``, float32 in [0, 1].
    """

    def __init__(self, root_dir: PathLike, frame_shape: Sequence[int] = (256, 256, 3), id_sampling: bool = False,
                 is_train: bool = True, augmentation_params: Optional[AugmentationParams] = None, seed: int = 0,
                 stride: int = DEFAULT_DEPTH_STRIDE, probe_videos: bool = True,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, format: str = "folders", **stream_settings: str) -> None:
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride = int(stride)
        super().__init__(root_dir, frame_shape, id_sampling, is_train, augmentation_params, seed,
                         min_frames=2 * self.stride + 1, probe_videos=probe_videos, cache_bytes=cache_bytes,
                         format=format, **stream_settings)

    @classmethod
    def from_config(cls, params: DatasetParams, is_train: bool = True, seed: int = 0,
                    stride: int = DEFAULT_DEPTH_STRIDE) -> "DepthTripletDataset":
        """Build from ``dataset_params``; ``stride`` is ``depth_train_params.frame_stride``."""
        return cls(params.root_dir, params.frame_shape, params.id_sampling, is_train, params.augmentation_params,
                   seed, stride=stride, probe_videos=getattr(params, "probe_videos", True),
                   cache_bytes=int(getattr(params, "video_cache_mib", DEFAULT_CACHE_BYTES // 2**20)) * 2**20,
                   **_format_arguments(params))

    def make_sample(self, clip: Clip, rng: np.random.Generator) -> dict[str, Any]:
        if self.is_train:
            target = int(rng.integers(self.stride, clip.num_frames - self.stride))
        else:
            target = clip.num_frames // 2
        indices = [target - self.stride, target, target + self.stride]
        frames = self._augment(clip.frames(indices), rng)  # (3, 3, H, W)
        return {"previous": frames[0], "target": frames[1], "next": frames[2], "name": clip.name}


class DatasetRepeater(SeededDataset):
    """``num_repeats`` passes over ``dataset`` as one epoch (the reference's ``DatasetRepeater``).

    Index ``j`` of epoch ``e`` is key ``e * len(self) + j`` of the wrapped dataset, so every repeat of an
    item gets its own randomness. ``set_epoch`` is the repeater's (leave the wrapped dataset's at 0).
    """

    def __init__(self, dataset: SeededDataset, num_repeats: int = 100) -> None:
        if num_repeats < 1:
            raise ValueError(f"num_repeats must be >= 1, got {num_repeats}")
        self.dataset = dataset
        self.num_repeats = int(num_repeats)
        self.seed = dataset.seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.num_repeats * len(self.dataset)

    def sample(self, key: int) -> dict[str, Any]:
        return self.dataset.sample(key)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return getattr(self.dataset, "skipped", [])


def check_start_offset(offset: int, stride: int) -> None:
    """A resume position must fall on a global-batch boundary (``stride`` = world_size x block_size)."""
    if offset < 0 or offset % stride:
        raise ValueError(f"start offset must be a non-negative multiple of world_size x block_size={stride} "
                         f"(step * global batch size), got {offset}")


class ResumableSampler(Sampler[int]):
    """An endless stream of dataset keys, shuffled per pass, resumable, split across ranks.

    Stream position ``p`` (counted over all ranks) is in pass ``e = p // n`` (``n = dataset_size``) and
    yields key ``e * n + permutation_e[p % n]``, where ``permutation_e`` comes from
    ``numpy.random.default_rng([seed, e])``. The stream is cut into blocks of ``world_size * block_size``
    positions; rank ``r`` takes the ``r``-th run of ``block_size`` consecutive positions of every block, so the
    ranks partition the stream and one rank's batch of ``block_size`` is a contiguous slice of the global
    batch (the same samples one process with gradient accumulation puts in a micro-batch). With
    ``start = step * global_batch_size``, a resumed run sees exactly the samples an uninterrupted run would
    have seen from that step on.
    """

    def __init__(self, dataset_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, block_size: int = 1) -> None:
        if dataset_size < 1:
            raise ValueError(f"dataset_size must be >= 1, got {dataset_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.dataset_size = int(dataset_size)
        self.seed = _check_seed(seed)
        self.rank, self.world_size, self.block_size = int(rank), int(world_size), int(block_size)
        self.shuffle = bool(shuffle)
        self.start = 0
        self._cached: tuple[int, Optional[np.ndarray]] = (-1, None)

    def set_start(self, offset: int) -> None:
        """Begin the next iteration at global stream position ``offset`` (samples consumed by all ranks)."""
        check_start_offset(offset, self.world_size * self.block_size)
        self.start = int(offset)

    def key_at(self, position: int) -> int:
        """The dataset key at global stream position ``position``."""
        epoch, within = divmod(position, self.dataset_size)
        return epoch * self.dataset_size + int(self._permutation(epoch)[within])

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._cached[0] != epoch:
            order = (np.random.default_rng([self.seed, epoch]).permutation(self.dataset_size) if self.shuffle
                     else np.arange(self.dataset_size))
            self._cached = (epoch, order)
        return self._cached[1]

    def __iter__(self) -> Iterator[int]:
        block = self.start + self.rank * self.block_size
        while True:
            for offset in range(self.block_size):
                yield self.key_at(block + offset)
            block += self.world_size * self.block_size


def make_sampler(dataset: Dataset, seed: int, rank: int = 0, world_size: int = 1,
                 block_size: int = 1) -> ResumableSampler:
    """An endless, resumable, rank-split key stream over ``dataset`` (see :class:`ResumableSampler`), for folder and
    streaming datasets alike.

    Usage (``batch_size`` per rank; the global batch is ``batch_size * world_size``):

        sampler = make_sampler(dataset, seed, rank, world_size, block_size=batch_size)
        sampler.set_start(start_step * batch_size * world_size)
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=4, drop_last=True)
    """
    return ResumableSampler(len(dataset), seed=seed, rank=rank, world_size=world_size, block_size=block_size)
