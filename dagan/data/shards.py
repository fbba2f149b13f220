"""Tar shards of a training dataset: writing them, the index, and reading clips back by byte range.

A dataset root (see :mod:`dagan.data.frames`) becomes a folder of plain POSIX tar files of about
``shard_bytes`` each, plus ``index.json``:

    index.json                 {"format": "dagan-shards", "encoding": "png", "layout": "splits", "shards": [...]}
    train-000000.tar           <clip>/000000.png ... <clip>/000149.png  <clip>/frames.json   (encoding png|jpeg)
                               <clip>                                                         (encoding mp4)
    train-000000.tar.json      the shard's record (clips, bytes, sha256), written when the shard is complete
    plan.json                  which clips go into which shard (what makes an interrupted run resumable)

Each clip is one sample: its frames as one tar member each (``tar xf`` gives back the frame-folder layout) and a
``frames.json`` manifest with the byte range of every frame; or, with ``encoding: mp4``, the video file itself.
Clips are assigned to shards in a seeded random order, so every shard mixes identities.

The index lists, per shard, its path (relative to the index), split, size, SHA-256 and clips as
``[name, num_frames, offset, size]``: the byte range of the clip's manifest (frames) or of its video (mp4).
Reading a sample is then two or three ranged reads (manifest, the frames it needs) of a shard that its rank
streams through in order (see :class:`dagan.data.datasets.ShardSampler`); no file is listed or opened per clip.
The index may be a local path or an ``http(s)://`` URL; shards are then read with HTTP range requests.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import urllib.parse
import urllib.request
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal, Optional, Sequence

import numpy as np

from dagan.data.frames import (DEFAULT_CACHE_BYTES, Clip, DatasetError, PathLike, Split, VideoItem, VideoStore,
                               _ClipCache, list_frame_files, locate_split)
from dagan.io import MediaError, decode_image_uint8, encode_image, natural_sort_key, open_video, read_image_uint8
from dagan.io.files import atomic_write_text

Encoding = Literal["png", "jpeg", "mp4"]
ENCODINGS = ("png", "jpeg", "mp4")
INDEX_FORMAT = "dagan-shards"
INDEX_VERSION = 1
INDEX_NAME = "index.json"
PLAN_NAME = "plan.json"
MANIFEST_NAME = "frames.json"
BLOCK = 512  # tar block size
DEFAULT_SHARD_BYTES = 2 ** 30
HASH_CHUNK = 2 ** 22


class ShardError(DatasetError):
    """A shard index, shard file or shard output folder is missing, malformed or inconsistent."""


def is_url(location: str) -> bool:
    return urllib.parse.urlparse(str(location)).scheme in ("http", "https")


# Writing.


@dataclass(frozen=True)
class ShardSettings:
    """How clips are stored: ``encoding`` png (lossless) | jpeg (at ``jpeg_quality``) | mp4 (the video file as
    it is), shards of about ``shard_bytes``, clips shuffled into shards by ``seed``."""

    encoding: Encoding = "png"
    jpeg_quality: int = 95
    shard_bytes: int = DEFAULT_SHARD_BYTES
    seed: int = 0

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg quality must be in [1, 100], got {self.jpeg_quality}")
        if self.shard_bytes < BLOCK:
            raise ValueError(f"shard size must be at least {BLOCK} bytes, got {self.shard_bytes}")


def _frame_suffix(settings: ShardSettings) -> str:
    return ".jpg" if settings.encoding == "jpeg" else ".png"


def encoded_frames(item: VideoItem, settings: ShardSettings, limit: Optional[int] = None) -> Iterable[bytes]:
    """The frames of ``item`` as image file bytes; PNG frame files are copied byte for byte in png mode."""
    if item.kind == "frames":
        for count, path in enumerate(list_frame_files(item.path)):
            if limit is not None and count >= limit:
                return
            if settings.encoding == "png" and path.suffix.lower() == ".png":
                yield path.read_bytes()
            else:
                yield encode_image(read_image_uint8(path), settings.encoding, settings.jpeg_quality)
        return
    for count, frame in enumerate(open_video(item.path)):
        if limit is not None and count >= limit:
            return
        yield encode_image(frame, settings.encoding, settings.jpeg_quality)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> tuple[int, int]:
    """Append one regular file; returns ``(offset, size)`` of its data in the shard."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # mtime 0: the same input gives the same shard bytes
    tar.addfile(info, io.BytesIO(data))
    padded = -(-len(data) // BLOCK) * BLOCK
    return tar.offset - padded, len(data)


def _add_clip(tar: tarfile.TarFile, item: VideoItem, settings: ShardSettings) -> list:
    """Write one clip; returns its index entry ``[name, num_frames, offset, size]``.

    Everything is read and encoded before the first member is written, so a clip that fails leaves no trace.
    """
    if settings.encoding == "mp4":
        if item.kind != "video":
            raise MediaError(f"'{item.path}' is a frame folder; encoding mp4 stores video files as they are: "
                             "use --encoding png or jpeg for frame folders")
        data = item.path.read_bytes()
        num_frames = item.num_frames if item.num_frames is not None else len(open_video(item.path).read_all())
        offset, size = _add_member(tar, item.name, data)
        return [item.name, int(num_frames), offset, size]
    frames = list(encoded_frames(item, settings))
    if not frames:
        raise MediaError(f"'{item.path}' has no frames")
    suffix = _frame_suffix(settings)
    ranges = [_add_member(tar, f"{item.name}/{index:06d}{suffix}", data) for index, data in enumerate(frames)]
    offset, size = _add_member(tar, f"{item.name}/{MANIFEST_NAME}", json.dumps(ranges).encode())
    return [item.name, len(ranges), offset, size]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_shard(path: Path, items: Sequence[VideoItem], settings: ShardSettings, split: str) -> dict:
    """Write ``items`` into the tar ``path`` (atomically) and its record ``path.json``; returns the record.

    A clip that cannot be read is left out with a warning and listed in the record's ``skipped``.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    clips, skipped = [], []
    try:
        with os.fdopen(handle, "wb") as stream:
            with tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for item in items:
                    try:
                        clips.append(_add_clip(tar, item, settings))
                    except (MediaError, OSError, ValueError) as error:
                        skipped.append([item.name, str(error) or type(error).__name__])
                        warnings.warn(f"skipping clip '{item.name}': {error}", stacklevel=2)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; shards are shared read-only data
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    record = {"path": path.name, "split": split, "bytes": path.stat().st_size, "sha256": file_sha256(path),
              "clips": clips, "skipped": skipped}
    atomic_write_text(f"{path}.json", json.dumps(record))
    return record


def estimate_clip_bytes(items: Sequence[VideoItem], settings: ShardSettings, samples: int = 4,
                        frames_per_sample: int = 4) -> list[float]:
    """Expected stored size of every clip: the file size for mp4, else frames x the mean encoded frame size of
    the first frames of a few clips (the plan only needs shards of roughly equal size)."""
    if settings.encoding == "mp4":
        return [float(item.path.stat().st_size) for item in items]
    chosen = items[:: max(1, len(items) // samples)][:samples]
    sizes = [len(data) for item in chosen for data in encoded_frames(item, settings, frames_per_sample)]
    per_frame = float(np.mean(sizes)) if sizes else 1.0
    return [(item.num_frames or 1) * (per_frame + 2 * BLOCK) for item in items]


def plan_shards(items: Sequence[VideoItem], sizes: Sequence[float], settings: ShardSettings, split: str
                ) -> dict[str, list[VideoItem]]:
    """``{shard file name: [clips]}``: clips in a ``seed``-shuffled order, cut every ``shard_bytes``."""
    order = np.random.default_rng([settings.seed]).permutation(len(items))
    shards: list[list[VideoItem]] = [[]]
    filled = 0.0
    for index in order:
        if shards[-1] and filled + sizes[index] > settings.shard_bytes:
            shards.append([])
            filled = 0.0
        shards[-1].append(items[index])
        filled += sizes[index]
    return {f"{split}-{number:06d}.tar": clips for number, clips in enumerate(shards)}


def make_shards(root_dir: PathLike, output_dir: PathLike, settings: ShardSettings, workers: int = 1,
                progress: Optional[Callable[[int], None]] = None, probe_videos: bool = True) -> dict:
    """Convert a dataset root into shards + ``index.json`` in ``output_dir``; resumable.

    Complete shards of an earlier run with the same settings (a ``.tar.json`` record and a tar of the recorded
    size) are kept; the others are (re)written, ``workers`` at a time in processes. ``progress(n)`` is called
    with the number of clips each finished shard holds.
    Returns ``{"path": index path, "written": n, "reused": n, "skipped": [[name, reason], ...]}``.
    """
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    plan = _load_or_make_plan(Path(root_dir), output, settings, probe_videos)
    records: dict[str, dict] = {}
    pending = []
    for name, entry in plan["shards"].items():
        record = _complete_record(output / name)
        if record is None:
            pending.append(name)
        else:
            records[name] = record
            if progress:
                progress(len(entry["clips"]))
    jobs = {name: ([VideoItem(clip, Path(path), kind, num_frames) for clip, path, kind, num_frames
                    in plan["shards"][name]["clips"]], plan["shards"][name]["split"]) for name in pending}
    reused = len(records)
    for name, record in _run_jobs(output, jobs, settings, workers, progress):
        records[name] = record
    index = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "encoding": settings.encoding,
             "jpeg_quality": settings.jpeg_quality if settings.encoding == "jpeg" else None,
             "layout": plan["layout"], "shards": [records[name] for name in sorted(records)]}
    skipped = [entry for record in index["shards"] for entry in record.pop("skipped", [])]
    atomic_write_text(output / INDEX_NAME, json.dumps(index))
    return {"path": str(output / INDEX_NAME), "written": len(jobs), "reused": reused, "skipped": skipped}


def _run_jobs(output: Path, jobs: dict, settings: ShardSettings, workers: int, progress):
    if workers <= 1:
        for name, (items, split) in jobs.items():
            record = write_shard(output / name, items, settings, split)
            if progress:
                progress(len(items))
            yield name, record
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(write_shard, output / name, items, settings, split): (name, len(items))
                   for name, (items, split) in jobs.items()}
        for future in as_completed(futures):
            name, count = futures[future]
            if progress:
                progress(count)
            yield name, future.result()


def _load_or_make_plan(root: Path, output: Path, settings: ShardSettings, probe_videos: bool) -> dict:
    """The plan of an earlier run (same settings required) or a new one, written to ``plan.json``: per shard its
    split and clips ``[name, path, kind, num_frames]``, so a resumed run indexes nothing again."""
    wanted = {"root": str(root.resolve()), "settings": settings.__dict__}
    path = output / PLAN_NAME
    if path.exists():
        plan = json.loads(path.read_text())
        if {"root": plan.get("root"), "settings": plan.get("settings")} != wanted:
            raise ShardError(f"'{output}' holds shards of {plan.get('root')!r} written with {plan.get('settings')}; "
                             f"to write {wanted['settings']} choose another --output folder")
        return plan
    if any(output.glob("*.tar")):
        raise ShardError(f"'{output}' already holds .tar files but no {PLAN_NAME}; choose an empty --output folder")
    layout, _ = locate_split(root, "train")
    splits = ["train", "test"] if layout == "splits" and (root / "test").is_dir() else ["train"]
    shards: dict[str, dict] = {}
    for split in splits:
        items = VideoStore(root, split, probe_videos=probe_videos).items
        folders = [item.name for item in items if item.kind == "frames"]
        if settings.encoding == "mp4" and folders:
            raise ShardError(f"'{root}/{split}' has {len(folders)} frame folder(s) (e.g. '{folders[0]}'); encoding "
                             "mp4 stores video files as they are: use --encoding png or jpeg for frame folders")
        for name, clips in plan_shards(items, estimate_clip_bytes(items, settings), settings, split).items():
            entries = [[clip.name, os.path.abspath(clip.path), clip.kind, clip.num_frames] for clip in clips]
            shards[name] = {"split": split, "clips": entries}
    plan = {**wanted, "layout": layout, "splits": splits, "shards": shards}
    atomic_write_text(path, json.dumps(plan))
    return plan


def _complete_record(path: Path) -> Optional[dict]:
    """The record of a finished shard, or None when the shard is missing, partial or unrecorded."""
    record_path = Path(f"{path}.json")
    if not record_path.exists() or not path.exists():
        return None
    try:
        record = json.loads(record_path.read_text())
    except ValueError:
        return None
    return record if record.get("bytes") == path.stat().st_size else None


# Reading.


@dataclass(frozen=True)
class ShardInfo:
    location: str  # local path or URL of the tar file
    split: str
    num_bytes: int
    sha256: str
    clips: list = field(repr=False)  # [name, num_frames, offset, size] per clip


@dataclass(frozen=True)
class ShardIndex:
    location: str
    encoding: Encoding
    layout: str
    shards: list[ShardInfo]

    def split_shards(self, split: Split) -> list[int]:
        """Indices of the shards of ``split`` (a flat dataset's test split reads the train shards)."""
        wanted = "train" if self.layout == "flat" else split
        return [number for number, shard in enumerate(self.shards) if shard.split == wanted]


def load_index(location: PathLike) -> ShardIndex:
    """Read ``index.json`` from a path or an http(s) URL; ShardError naming the problem otherwise."""
    location = str(location)
    try:
        if is_url(location):
            with urllib.request.urlopen(location, timeout=60) as response:
                data = json.loads(response.read())
        else:
            path = Path(location)
            if path.is_dir():
                path = path / INDEX_NAME
            location = str(path)
            data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ShardError(f"shard index '{location}' could not be read ({error}); give the index.json written by "
                         "scripts/make_shards.py (dataset_params.format: shards)") from error
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
        raise ShardError(f"'{location}' is not a shard index (no \"format\": \"{INDEX_FORMAT}\"); write one with "
                         "scripts/make_shards.py")
    base = location if is_url(location) else str(Path(location).parent)
    shards = [ShardInfo(_resolve(base, record["path"]), record["split"], int(record["bytes"]), record["sha256"],
                        record["clips"]) for record in data["shards"]]
    return ShardIndex(location, data["encoding"], data.get("layout", "splits"), shards)


def _resolve(base: str, relative: str) -> str:
    return urllib.parse.urljoin(base, relative) if is_url(base) else str(Path(base) / relative)


def read_range(location: str, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` of a local file (``os.pread``: safe in forked workers) or a URL (HTTP Range).

    Raises OSError when the file is missing or shorter than the range (a truncated shard).
    """
    if is_url(location):
        request = urllib.request.Request(location, headers={"Range": f"bytes={offset}-{offset + size - 1}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            data = response.read() if response.status == 206 else response.read(offset + size)[offset:]
    else:
        descriptor = os.open(location, os.O_RDONLY)
        try:
            data = os.pread(descriptor, size, offset)
        finally:
            os.close(descriptor)
    if len(data) != size:
        raise OSError(f"shard '{location}' is truncated: {len(data)} of {size} bytes at offset {offset}")
    return data


@dataclass(frozen=True)
class ShardItem(VideoItem):
    """A clip stored in a shard. ``path`` is ``<shard>/<clip name>`` (a unique label); the data is the byte
    range ``offset``, ``size`` of ``shard_location`` (the clip's manifest, or its video for mp4)."""

    shard: int = 0
    shard_location: str = ""
    offset: int = 0
    size: int = 0


class ShardStore(VideoStore):
    """The clips of one split of a shard index, with the interface of :class:`VideoStore` (``items``,
    ``open_clip``, ``skipped``, ``mark_unusable``), so the pair and triplet datasets read shards unchanged.

    Nothing is read at construction but the index. A clip whose bytes do not decode, or whose shard is missing or
    truncated, is skipped with a warning and counted in ``skipped`` when it is first read.
    """

    def __init__(self, index: PathLike, split: Split = "train", frame_shape: Sequence[int] = (256, 256),
                 cache_bytes: int = DEFAULT_CACHE_BYTES, min_frames: int = 1) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.index = load_index(index)
        self.root = Path(self.index.location)
        self.split = split
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self.min_frames = max(1, int(min_frames))
        self.layout, self.split_dir = "shards", Path(self.index.location)
        self.skipped: list[tuple[str, str]] = []
        self._bad: dict[Path, str] = {}
        self._cache = _ClipCache(cache_bytes)
        self.shard_numbers = self.index.split_shards(split)
        self.items = self._shard_items()

    def _shard_items(self) -> list[ShardItem]:
        kind = "video" if self.index.encoding == "mp4" else "frames"
        items, short = [], 0
        for number in self.shard_numbers:
            shard = self.index.shards[number]
            for name, num_frames, offset, size in shard.clips:
                if num_frames < self.min_frames:
                    short += 1
                    continue
                items.append(ShardItem(name, Path(shard.location) / name, kind, int(num_frames), number,
                                       shard.location, int(offset), int(size)))
        if short:
            warnings.warn(f"skipping {short} clip(s) of '{self.index.location}' with fewer than {self.min_frames} "
                          "frames", stacklevel=3)
        items.sort(key=lambda item: natural_sort_key(Path(item.name)))  # VideoStore's order: same keys, same samples
        if not items:
            raise ShardError(f"shard index '{self.index.location}' has no usable '{self.split}' clip; write the "
                             "shards of a dataset root with that split (scripts/make_shards.py)")
        return items

    def _open_item(self, item: ShardItem) -> Clip:
        if item.kind == "video":
            return self._open_video(item)
        ranges = json.loads(read_range(item.shard_location, item.offset, item.size))
        if len(ranges) != item.num_frames:
            raise MediaError(f"clip '{item.name}' of '{item.shard_location}' lists {len(ranges)} frames, the index "
                             f"{item.num_frames}; rewrite its shard")

        def read_frame(index: int):
            offset, size = ranges[index]
            return decode_image_uint8(read_range(item.shard_location, offset, size), f"{item.path}[{index}]")

        return Clip(item.name, len(ranges), read_frame, self.frame_shape)

    def _open_video(self, item: ShardItem) -> Clip:
        array = self._cache.get(item.path)
        if array is None:
            data = read_range(item.shard_location, item.offset, item.size)
            with tempfile.TemporaryDirectory(dir=_scratch_dir()) as folder:
                path = Path(folder) / Path(item.name).name
                path.write_bytes(data)
                array = open_video(path).read_all()  # (T, h, w, 3) uint8
            self._cache.put(item.path, array)
        return Clip(item.name, len(array), lambda index: array[index], self.frame_shape)


def _scratch_dir() -> Optional[str]:
    """Where an mp4 sample is unpacked for ffmpeg: memory-backed /dev/shm when there is one."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


# Verification.


@dataclass
class VerifyReport:
    shards: int = 0
    clips: int = 0
    frames_decoded: int = 0
    errors: list[str] = field(default_factory=list)


def verify_shards(index_location: PathLike, decode: str = "ends",
                  progress: Optional[Callable[[int], None]] = None) -> VerifyReport:
    """Check every shard of an index: size and SHA-256 as recorded, every manifest consistent, and frames decoding
    (``decode``: "ends" = first and last frame of each clip, "all", or "none"). Problems are collected, not raised.
    """
    index = load_index(index_location)
    report = VerifyReport()
    for shard in index.shards:
        report.shards += 1
        problem = _check_shard_file(shard)
        if problem:
            report.errors.append(problem)
        else:
            for entry in shard.clips:
                report.clips += 1
                try:
                    report.frames_decoded += _check_clip(index, shard, entry, decode)
                except (MediaError, OSError, ValueError) as error:
                    report.errors.append(f"{shard.location}: clip '{entry[0]}': {error}")
        if progress:
            progress(1)
    return report


def _check_shard_file(shard: ShardInfo) -> Optional[str]:
    if is_url(shard.location):
        return None
    path = Path(shard.location)
    if not path.exists():
        return f"{path}: missing"
    if path.stat().st_size != shard.num_bytes:
        return f"{path}: {path.stat().st_size} bytes, the index says {shard.num_bytes} (truncated or rewritten)"
    if file_sha256(path) != shard.sha256:
        return f"{path}: SHA-256 differs from the index (corrupted)"
    return None


def _check_clip(index: ShardIndex, shard: ShardInfo, entry: list, decode: str) -> int:
    name, num_frames, offset, size = entry
    if index.encoding == "mp4":
        return 0
    ranges = json.loads(read_range(shard.location, offset, size))
    if len(ranges) != num_frames:
        raise ValueError(f"manifest lists {len(ranges)} frames, the index {num_frames}")
    chosen = {"none": [], "ends": sorted({0, len(ranges) - 1}), "all": range(len(ranges))}[decode]
    for frame in chosen:
        decode_image_uint8(read_range(shard.location, *ranges[frame]), f"{name}[{frame}]")
    return len(chosen)
