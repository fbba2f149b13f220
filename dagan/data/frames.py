"""The video store: index one split of a dataset once, then read frames of any video by index.

Layouts (``root`` is ``dataset_params.root_dir``):

* VoxCeleb layout (the reference's): ``root/train/<video>`` and ``root/test/<video>``.
* Flat layout: ``root/<video>`` with neither ``train/`` nor ``test/``. The folder is the train split, and
  the test split reads the same videos (a flat folder has no held-out clips). This lets the quickstart
  train on ``data/samples/``.

A ``<video>`` is either a folder of frames (png/jpg/jpeg/bmp/webp, natural name order: ``2.png`` before
``10.png``) or a video file that ffmpeg decodes (see ``dagan.io.VIDEO_SUFFIXES``). Other files (a README, a
stray image next to the videos) are ignored. Names follow the reference, ``idXXXXX#ytid#start#end.mp4``;
the identity of a video is its name up to the first ``#``.

Indexing lists every split entry once: frame folders are counted (no image is read), video files are
probed by ffmpeg (demux only, in parallel threads). A video that cannot be used (corrupt file, no frames,
a folder without images) is skipped with one summary warning and recorded in ``VideoStore.skipped``.
A split with no usable video raises :class:`DatasetError` naming the path and the expected layout.

Reading: frame folders read only the requested files; a video file is decoded whole (VoxCeleb clips are
short) and kept in a small per-process LRU cache bounded in bytes; a video too long for that cache (HDTF clips
run for minutes) is never decoded whole: each frame a sample needs is read by seeking. Frames come back as float32
``(T, 3, H, W)`` tensors in [0, 1] at ``frame_shape``; frames of another size are resized with
``skimage.transform.resize(..., anti_aliasing=True)``.
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence, Union

import numpy as np
import skimage.transform
import torch

from dagan.io import (IMAGE_SUFFIXES, MediaError, VideoSource, is_video_file, natural_sort_key, open_video, probe,
                      read_image_uint8)

PathLike = Union[str, os.PathLike]
Split = Literal["train", "test"]
VideoKind = Literal["frames", "video"]

DEFAULT_CACHE_BYTES = 256 * 2**20  # per process (each DataLoader worker has its own cache)
LAYOUT_HINT = ("expected root/train/<video> and root/test/<video> (the VoxCeleb layout), or a folder of videos, "
               "where each <video> is a folder of png/jpg frames or a video file (mp4, mov, avi, webm, mkv, gif)")
MAX_WARNED_NAMES = 5


class DatasetError(ValueError):
    """The dataset root is missing or malformed, or no video of a split can be read.

    The message names the path and the expected layout.
    """


@dataclass(frozen=True)
class VideoItem:
    """One video of a split.

    name: the folder or file name, e.g. ``id10001#7w0IBEWc9Qw#000993#001143.mp4``.
    path: the frame folder or the video file.
    kind: ``"frames"`` (a folder of images) or ``"video"`` (a file ffmpeg decodes).
    num_frames: frames counted at indexing (images in the folder, packets in the file); None if not probed.
        The frames actually read are authoritative (see ``Clip.num_frames``).
    """

    name: str
    path: Path
    kind: VideoKind
    num_frames: Optional[int]

    @property
    def identity(self) -> str:
        """The speaker identity: the name up to the first ``#`` (the whole name if there is none)."""
        return self.name.split("#", 1)[0]


@dataclass(frozen=True)
class Clip:
    """An opened video: ``num_frames`` frames, read by index with ``frames(indices)``."""

    name: str
    num_frames: int
    read_frame: Callable[[int], np.ndarray]  # index -> (h, w, 3) uint8 at the stored size
    frame_shape: tuple[int, int]  # (H, W) of the returned frames

    def frames(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames at ``indices`` (each in [0, num_frames)) as a float32 ``(T, 3, H, W)`` tensor in [0, 1]."""
        for index in indices:
            if not 0 <= index < self.num_frames:
                raise IndexError(f"frame {index} of '{self.name}' is out of range (it has {self.num_frames})")
        arrays = [resize_frame(self.read_frame(int(index)), self.frame_shape) for index in indices]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (T, H, W, 3) -> (T, 3, H, W)


def resize_frame(frame: np.ndarray, frame_shape: tuple[int, int]) -> np.ndarray:
    """``(h, w, 3)`` uint8 -> ``(H, W, 3)`` float32 in [0, 1]; resized (anti-aliased) only if the size differs."""
    if frame.shape[:2] == tuple(frame_shape):
        return frame.astype(np.float32) / np.float32(255.0)
    resized = skimage.transform.resize(frame, frame_shape, anti_aliasing=True)  # float64 in [0, 1]
    return np.clip(resized, 0.0, 1.0).astype(np.float32)


def _frame_file_names(folder: Path) -> list[str]:
    """Names of the image files in a folder, unsorted (``os.scandir``: no ``stat`` call per file)."""
    with os.scandir(folder) as entries:
        return [entry.name for entry in entries if not entry.name.startswith(".")
                and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file()]


def list_frame_files(folder: Path) -> list[Path]:
    """The image files of a frame folder in natural name order (hidden files ignored)."""
    return sorted((folder / name for name in _frame_file_names(folder)), key=natural_sort_key)


class _ClipCache:
    """A per-process LRU of decoded videos, bounded by the total size of the arrays in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._clips: "OrderedDict[Path, np.ndarray]" = OrderedDict()
        self._bytes = 0

    def get(self, path: Path) -> Optional[np.ndarray]:
        clip = self._clips.get(path)
        if clip is not None:
            self._clips.move_to_end(path)
        return clip

    def put(self, path: Path, clip: np.ndarray) -> None:
        if clip.nbytes > self.max_bytes or path in self._clips:
            return
        self._clips[path] = clip
        self._bytes += clip.nbytes
        while self._bytes > self.max_bytes:
            _, evicted = self._clips.popitem(last=False)
            self._bytes -= evicted.nbytes


class VideoStore:
    """The videos of one split, indexed once at construction.

    Args:
        root_dir: the dataset root (VoxCeleb layout or a flat folder of videos, see the module docstring).
        split: ``"train"`` or ``"test"``.
        frame_shape: ``(H, W)`` (or ``(H, W, 3)``) of the frames returned.
        probe_videos: probe video files with ffmpeg while indexing (catches corrupt files early; about
            20-50 ms per file, run in parallel threads). Without it, bad files are found when first read.
        cache_bytes: budget of the decoded-video LRU cache, per process.
        min_frames: videos with fewer frames are skipped (at indexing when the count is known, else when read).
    Attributes:
        items: the usable videos, in natural name order.
        skipped: ``(name, reason)`` of every video found unusable so far (at indexing or when read).
        split_dir: the folder the videos were listed from.
        layout: ``"splits"`` (root/train, root/test) or ``"flat"``.
    Raises:
        DatasetError: missing root, missing split folder, or no usable video.
    """

    def __init__(self, root_dir: PathLike, split: Split = "train", frame_shape: Sequence[int] = (256, 256),
                 probe_videos: bool = True, cache_bytes: int = DEFAULT_CACHE_BYTES, min_frames: int = 1) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.root = Path(root_dir)
        self.split = split
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self.min_frames = max(1, int(min_frames))
        self.layout, self.split_dir = locate_split(self.root, split)
        self.skipped: list[tuple[str, str]] = []
        self._bad: dict[Path, str] = {}
        self._cache = _ClipCache(cache_bytes)
        self._sources: dict[Path, VideoSource] = {}  # opened (probed) video files, metadata only
        self.items = self._index(probe_videos)

    def __len__(self) -> int:
        return len(self.items)

    def _index(self, probe_videos: bool) -> list[VideoItem]:
        entries = sorted((path for path in self.split_dir.iterdir() if _is_video_entry(path)), key=natural_sort_key)
        with ThreadPoolExecutor(max_workers=max(1, min(16, 2 * (os.cpu_count() or 1)))) as pool:
            results = list(pool.map(lambda path: _index_entry(path, probe_videos, self.min_frames), entries))
        items = []
        for path, (item, reason) in zip(entries, results):
            if item is None:
                self.skipped.append((path.name, reason))
                self._bad[path] = reason
            else:
                items.append(item)
        if self.skipped:
            _warn_skipped(self.split_dir, self.skipped)
        if not items:
            found = f"no usable video ({len(entries)} skipped, see the warning)" if entries else "no videos"
            raise DatasetError(f"dataset split '{self.split_dir}' has {found}; {LAYOUT_HINT}")
        return items

    def open_clip(self, index: int) -> Clip:
        """Open video ``index`` of ``items``.

        Raises MediaError if it cannot be read or has fewer than ``min_frames`` frames; it is then
        recorded in ``skipped`` (with a warning) and later calls fail fast without reading it again.
        """
        item = self.items[index]
        if item.path in self._bad:
            raise MediaError(self._bad[item.path])
        try:
            clip = self._open_item(item)
        except (MediaError, OSError, ValueError) as error:
            raise self.mark_unusable(index, str(error) or type(error).__name__) from error
        if clip.num_frames < self.min_frames:
            raise self.mark_unusable(index, f"video '{item.path}' has {clip.num_frames} frame(s), "
                                            f"fewer than the {self.min_frames} needed")
        return clip

    def mark_unusable(self, index: int, reason: str) -> MediaError:
        """Record video ``index`` as skipped (warning once per process); returns the error to raise."""
        item = self.items[index]
        if item.path not in self._bad:
            self._bad[item.path] = reason
            self.skipped.append((item.name, reason))
            warnings.warn(f"skipping unusable video '{item.name}': {reason}", stacklevel=3)
        return MediaError(reason)

    def _open_item(self, item: VideoItem) -> Clip:
        if item.kind == "frames":
            paths = list_frame_files(item.path)
            if not paths:
                raise MediaError(f"frame folder '{item.path}' contains no images")
            return Clip(item.name, len(paths), lambda index: read_image_uint8(paths[index]), self.frame_shape)
        array = self._cache.get(item.path)
        if array is not None:
            return Clip(item.name, len(array), lambda index: array[index], self.frame_shape)
        video = self._sources.get(item.path) or self._sources.setdefault(item.path, open_video(item.path))
        width, height = video.size
        if video.num_frames is not None and video.num_frames * width * height * 3 > self._cache.max_bytes:
            # Too long to keep decoded (HDTF clips run for minutes): seek to each frame a sample needs.
            return Clip(item.name, video.num_frames, video.read_frame, self.frame_shape)
        array = video.read_all()  # (T, h, w, 3) uint8
        self._cache.put(item.path, array)
        return Clip(item.name, len(array), lambda index: array[index], self.frame_shape)


def locate_split(root: Path, split: Split) -> tuple[str, Path]:
    """``(layout, folder)`` holding the videos of ``split``; DatasetError naming the path otherwise."""
    if not root.exists():
        raise DatasetError(f"dataset root '{root}' does not exist; {LAYOUT_HINT}")
    if not root.is_dir():
        raise DatasetError(f"dataset root '{root}' is not a directory; {LAYOUT_HINT}")
    if (root / "train").is_dir() or (root / "test").is_dir():
        split_dir = root / split
        if not split_dir.is_dir():
            raise DatasetError(f"dataset root '{root}' has no '{split}/' folder; {LAYOUT_HINT}")
        return "splits", split_dir
    if not any(not path.name.startswith(".") for path in root.iterdir()):
        raise DatasetError(f"dataset root '{root}' is empty; {LAYOUT_HINT}")
    return "flat", root


def _is_video_entry(path: Path) -> bool:
    """A candidate video: a visible folder, or a file with a video suffix."""
    if path.name.startswith("."):
        return False
    return path.is_dir() or is_video_file(path)


def _index_entry(path: Path, probe_videos: bool, min_frames: int) -> tuple[Optional[VideoItem], str]:
    """``(item, "")`` for a usable entry, ``(None, reason)`` for one to skip."""
    if path.is_dir():
        item = VideoItem(path.name, path, "frames", len(_frame_file_names(path)))
        if item.num_frames == 0:
            return None, f"frame folder '{path}' contains no images ({', '.join(IMAGE_SUFFIXES)})"
    elif not probe_videos:
        return VideoItem(path.name, path, "video", None), ""
    else:
        try:
            item = VideoItem(path.name, path, "video", probe(path).num_frames)
        except MediaError as error:
            return None, str(error)
        if item.num_frames == 0:
            return None, f"video '{path}' has no frames"
    if item.num_frames is not None and item.num_frames < min_frames:
        return None, f"video '{path}' has {item.num_frames} frame(s), fewer than the {min_frames} needed"
    return item, ""


def _warn_skipped(split_dir: Path, skipped: list[tuple[str, str]]) -> None:
    shown = "; ".join(f"{name}: {reason}" for name, reason in skipped[:MAX_WARNED_NAMES])
    more = f" (and {len(skipped) - MAX_WARNED_NAMES} more)" if len(skipped) > MAX_WARNED_NAMES else ""
    warnings.warn(f"skipping {len(skipped)} unusable video(s) in '{split_dir}': {shown}{more}", stacklevel=3)
