"""Streaming datasets on litdata: writing a dataset root once, reading frames from disk or an object store.

A dataset root (see :mod:`dagan.data.frames`) becomes a folder (local, or copied as it is to a bucket):

    dataset.json               {"format": "dagan-stream", "encoding": "png", "layout": "splits", "splits": [...]}
    plan.json                  which clips go into which part (what makes an interrupted run resumable)
    train/index.json           litdata's index of the chunks (written by litdata's BinaryWriter)
    train/chunk-<part>-<n>.bin litdata chunks: one item per frame, {"frame": the encoded PNG/JPEG bytes,
                               "digest": BLAKE2b-8 of those bytes}; with ``encoding: mp4`` one item per clip (the file);
                               with ``encoding: speech`` (layout flat) one item per prepared speech item: its
                               arrays and numbers and their digest (:func:`speech_record`, read by dagan.data.speech)
    train/clips.json           per clip: [name, num_frames, fps, first item]; the SHA-256 of every chunk
    train/part-<part>.json     the record of a finished part (a worker's unit of work)
    test/...                   the same for the test split

Frames are items of their own, so a pair or a triplet reads two or three items: with a remote root, litdata fetches
exactly those byte ranges (``on_demand_bytes``, one ranged GET per frame), never the clip or the chunk. Every item
read is checked against its digest; a mismatch (a corrupt chunk) marks the clip unusable, as an unreadable video is
today. ``verify_stream`` checks the chunks' SHA-256 whole, for local and remote roots alike.

Roots: a local folder, ``s3://bucket/prefix`` (credentials and ``AWS_ENDPOINT_URL`` from the environment, through
boto3), ``gs://`` (``GOOGLE_APPLICATION_CREDENTIALS``), ``azure://`` and ``https://`` (a read-only downloader
registered with litdata's ``register_downloader``). Remote chunks and files are cached under ``cache_dir``, bounded
by ``max_cache_size`` (litdata evicts the oldest chunks). Every request is bounded by :class:`Timeouts`
(``DAGAN_STREAM_CONNECT_TIMEOUT``, ``DAGAN_STREAM_TIMEOUT``, ``DAGAN_STREAM_RETRIES``); metadata sizes are checked
before the files are read, and a litdata index that would unpickle a field is refused (:func:`check_index`).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence

import numpy as np

from dagan.data.frames import (DEFAULT_CACHE_BYTES, Clip, DatasetError, PathLike, Split, VideoItem, VideoStore,
                               list_frame_files, locate_split)
from dagan.io import MediaError, decode_image_uint8, encode_image, natural_sort_key, open_video, probe, read_image_uint8
from dagan.io.files import atomic_write_text

Encoding = Literal["png", "jpeg", "mp4", "speech"]
ENCODINGS = ("png", "jpeg", "mp4", "speech")  # speech: prepared audio-video items (dagan.audio.data), one per clip
FORMAT = "dagan-stream"
VERSION = 1
DATASET_NAME = "dataset.json"
CLIPS_NAME = "clips.json"
PLAN_NAME = "plan.json"
DEFAULT_CHUNK_BYTES = 64 * 2**20
DEFAULT_PART_BYTES = 2**30
DEFAULT_CACHE_SIZE = "50GB"
MAX_METADATA_BYTES = 512 * 2**20  # dataset.json / clips.json larger than this are refused (1M clips: ~80 MB)
DIGEST_BYTES = 8
HASH_CHUNK = 2**22
REMOTE_SCHEMES = ("s3", "gs", "azure", "http", "https")
FALLBACK_FPS = 25.0


class StreamError(DatasetError):
    """A streaming dataset is missing, unreachable, malformed or inconsistent (one line naming the fix)."""


def is_remote(root: str) -> bool:
    return urllib.parse.urlparse(str(root)).scheme in REMOTE_SCHEMES


def join(root: str, *names: str) -> str:
    root = str(root)
    return "/".join([root.rstrip("/"), *names]) if is_remote(root) else str(Path(root, *names))


def frame_digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()


# Writing.


@dataclass(frozen=True)
class StreamSettings:
    """How clips are stored: ``encoding`` png (lossless; PNG files copied byte for byte) | jpeg (at
    ``jpeg_quality``) | mp4 (video files as they are) | speech (prepared .npz items as plain arrays); litdata
    chunks of ``chunk_bytes``; parts (one worker job, the unit of resumption) of about ``part_bytes``; clips
    shuffled into parts by ``seed``."""

    encoding: Encoding = "png"
    jpeg_quality: int = 95
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    part_bytes: int = DEFAULT_PART_BYTES
    seed: int = 0

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg quality must be in [1, 100], got {self.jpeg_quality}")
        if self.chunk_bytes < 1024 or self.part_bytes < 1024:
            raise ValueError(f"chunk and part sizes must be at least 1 KiB, got {self.chunk_bytes}, {self.part_bytes}")


@dataclass(frozen=True)
class ClipSource:
    """A clip to write: a frame folder or video file (``kind`` frames | video), a prepared speech item (``kind``
    speech: an .npz of scripts/prepare_av.py), or a clip of an old tar-shard dataset (``kind`` tar-frames |
    tar-video: the byte range ``offset``, ``size`` of ``path``)."""

    name: str
    path: str
    kind: str
    num_frames: Optional[int] = None
    offset: int = 0
    size: int = 0


def read_file_range(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(size)
    if len(data) != size:
        raise OSError(f"'{path}' is truncated: {len(data)} of {size} bytes at offset {offset}")
    return data


def clip_frames(clip: ClipSource, settings: StreamSettings) -> tuple[list[bytes], float]:
    """``(encoded frames, fps)`` of a clip; for encoding mp4 the one item is the video file itself."""
    if clip.kind == "tar-frames":
        ranges = json.loads(read_file_range(clip.path, clip.offset, clip.size))
        return [read_file_range(clip.path, offset, size) for offset, size in ranges], FALLBACK_FPS
    if clip.kind == "tar-video":
        return [read_file_range(clip.path, clip.offset, clip.size)], FALLBACK_FPS
    if settings.encoding == "mp4":
        if clip.kind != "video":
            raise MediaError(f"'{clip.path}' is a frame folder; encoding mp4 stores video files as they are: use "
                             "--encoding png or jpeg for frame folders")
        return [Path(clip.path).read_bytes()], probe(clip.path).fps
    if clip.kind == "frames":
        return [_frame_file_bytes(path, settings) for path in list_frame_files(Path(clip.path))], FALLBACK_FPS
    video = open_video(clip.path)
    return [encode_image(frame, settings.encoding, settings.jpeg_quality) for frame in video], video.fps


def clip_records(clip: ClipSource, settings: StreamSettings) -> tuple[list[dict], float, int]:
    """``(litdata items, fps, frame count)`` of a clip: one item per stored frame ({"frame", "digest"}), or for a
    speech item one item of plain arrays (see :func:`speech_record`)."""
    if clip.kind == "speech":
        record, fps, num_frames = speech_record(clip.path)
        return [record], fps, num_frames
    frames, fps = clip_frames(clip, settings)
    if not frames:
        raise MediaError(f"'{clip.path}' has no frames")
    num_frames = clip.num_frames if settings.encoding == "mp4" or clip.kind == "tar-video" else len(frames)
    return [{"frame": data, "digest": frame_digest(data)} for data in frames], fps, int(num_frames or 0)


SPEECH_ARRAYS = ("keypoints", "jacobians", "mel", "silence")  # stored as numpy arrays; fps and offset as numbers


def speech_record(path: str) -> tuple[dict, float, int]:
    """A prepared speech item (.npz, checked as the speech stage checks it) as one litdata item of plain arrays:
    keypoints (T, K, 2) float32, jacobians (T, K, 2, 2) float32, mel (N, M) float32, silence (T,) bool, fps
    float, offset_frames int, and the BLAKE2b-8 ``digest`` of them all (:func:`speech_digest`)."""
    from dagan.audio.data import load_item

    try:
        item = load_item(path)
    except ValueError as error:
        raise MediaError(str(error)) from None
    record = {name: np.ascontiguousarray(getattr(item, name)) for name in SPEECH_ARRAYS}
    record.update(fps=float(item.fps), offset_frames=int(item.offset_frames))
    record["digest"] = speech_digest(record)
    return record, float(item.fps), item.num_frames


def speech_digest(record: dict) -> bytes:
    """BLAKE2b-8 of a speech item's arrays (dtype, shape and bytes of each, in order) and numbers."""
    digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for name in SPEECH_ARRAYS:
        array = np.ascontiguousarray(record[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    digest.update(np.float64(record["fps"]).tobytes() + np.int64(record["offset_frames"]).tobytes())
    return digest.digest()


def _frame_file_bytes(path: Path, settings: StreamSettings) -> bytes:
    if settings.encoding == "png" and path.suffix.lower() == ".png":
        return path.read_bytes()
    return encode_image(read_image_uint8(path), settings.encoding, settings.jpeg_quality)


def write_part(split_dir: Path, part: int, clips: Sequence[ClipSource], settings: StreamSettings) -> dict:
    """Write the clips of part ``part`` as litdata chunks ``chunk-<part>-<n>.bin`` of ``split_dir`` and the record
    ``part-<part>.json`` (written last: a part without it is rewritten). A clip that cannot be read is left out with
    a warning and listed in the record's ``skipped``."""
    from litdata.streaming.writer import BinaryWriter

    _remove_part_files(split_dir, part)
    previous = os.environ.get("DATA_OPTIMIZER_GLOBAL_RANK")
    os.environ["DATA_OPTIMIZER_GLOBAL_RANK"] = str(part)  # litdata names the chunks and index after this rank
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # litdata prints the data format it inferred
            writer = BinaryWriter(str(split_dir), chunk_bytes=settings.chunk_bytes)
        rows, skipped, count = [], [], 0
        for clip in clips:
            try:
                records, fps, num_frames = clip_records(clip, settings)
            except (MediaError, OSError, ValueError) as error:
                skipped.append([clip.name, str(error) or type(error).__name__])
                warnings.warn(f"skipping clip '{clip.name}': {error}", stacklevel=2)
                continue
            rows.append([clip.name, num_frames, float(fps), count])
            for record in records:
                with contextlib.redirect_stdout(io.StringIO()):
                    writer.add_item(count, record)
                count += 1
        writer.done()
    finally:
        if previous is None:
            os.environ.pop("DATA_OPTIMIZER_GLOBAL_RANK", None)
        else:
            os.environ["DATA_OPTIMIZER_GLOBAL_RANK"] = previous
    index = split_dir / f"{part}.index.json"
    chunks = json.loads(index.read_text())["chunks"] if index.exists() else []
    record = {"part": part, "clips": rows, "skipped": skipped, "items": count,
              "sha256": {chunk["filename"]: file_sha256(split_dir / chunk["filename"]) for chunk in chunks}}
    atomic_write_text(split_dir / f"part-{part}.json", json.dumps(record))
    return record


def _remove_part_files(split_dir: Path, part: int) -> None:
    for path in [*split_dir.glob(f"chunk-{part}-*.bin"), split_dir / f"{part}.index.json",
                 split_dir / f"part-{part}.json"]:
        if path.exists():
            path.unlink()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(HASH_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _complete_record(split_dir: Path, part: int) -> Optional[dict]:
    """The record of a finished part, or None when the part is missing, partial or unrecorded."""
    path = split_dir / f"part-{part}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if all((split_dir / name).exists() for name in record["sha256"]) else None


def plan_parts(clips: Sequence[ClipSource], sizes: Sequence[float], settings: StreamSettings) -> list[list[ClipSource]]:
    """Clips in a ``seed``-shuffled order (every part mixes identities), cut every ``part_bytes``."""
    order = np.random.default_rng([settings.seed]).permutation(len(clips))
    parts: list[list[ClipSource]] = [[]]
    filled = 0.0
    for index in order:
        if parts[-1] and filled + sizes[index] > settings.part_bytes:
            parts.append([])
            filled = 0.0
        parts[-1].append(clips[index])
        filled += sizes[index]
    return parts


def estimate_sizes(clips: Sequence[ClipSource], settings: StreamSettings, samples: int = 4) -> list[float]:
    """Rough stored size of every clip (the file size for mp4 and old shards, else frames x a sampled frame size)."""
    if settings.encoding in ("mp4", "speech") or (clips and clips[0].kind.startswith("tar")):
        return [float(max(clip.size, 1) if clip.kind.startswith("tar") else Path(clip.path).stat().st_size)
                for clip in clips]
    chosen = [clip for clip in clips[:: max(1, len(clips) // samples)][:samples] if clip.kind == "frames"]
    sizes = [path.stat().st_size for clip in chosen for path in list_frame_files(Path(clip.path))[:4]]
    per_frame = float(np.mean(sizes)) if sizes else 50_000.0
    return [(clip.num_frames or 1) * per_frame for clip in clips]


def make_stream(root_dir: PathLike, output_dir: PathLike, settings: StreamSettings, workers: int = 1,
                progress: Optional[Callable[[int], None]] = None) -> dict:
    """Convert a dataset root into a streaming dataset in ``output_dir``; parallel and resumable.

    Finished parts of an earlier run with the same settings are kept; the others are (re)written, ``workers`` at a
    time in processes. Returns ``{"path", "written", "reused", "skipped": [[name, reason], ...]}``.
    """
    root = Path(root_dir)
    layout, _ = locate_split(root, "train")
    splits = ["train", "test"] if layout == "splits" and (root / "test").is_dir() else ["train"]
    sources = {split: [ClipSource(item.name, str(item.path.resolve()), item.kind, item.num_frames)
                       for item in VideoStore(root, split).items] for split in splits}
    return write_stream(sources, layout, output_dir, settings, workers, progress,
                        {"root": str(root.resolve()), "settings": settings.__dict__})


def make_speech_stream(items_dir: PathLike, output_dir: PathLike, settings: StreamSettings, workers: int = 1,
                       progress: Optional[Callable[[int], None]] = None) -> dict:
    """Write the prepared speech items of ``items_dir`` (``<clip>.npz`` of scripts/prepare_av.py) as a streaming
    dataset (encoding speech, layout flat): one litdata item of plain arrays per clip, named by its file name;
    parallel and resumable as :func:`make_stream`. An item that fails the speech stage's checks is skipped."""
    from dagan.audio.data import item_paths

    if settings.encoding != "speech":
        settings = StreamSettings("speech", chunk_bytes=settings.chunk_bytes, part_bytes=settings.part_bytes,
                                  seed=settings.seed)
    try:
        paths = item_paths(items_dir)
    except ValueError as error:
        raise StreamError(str(error)) from None
    sources = {"train": [ClipSource(path.name, str(path.resolve()), "speech") for path in paths]}
    return write_stream(sources, "flat", output_dir, settings, workers, progress,
                        {"speech": str(Path(items_dir).resolve()), "settings": settings.__dict__})


def write_stream(sources: dict[str, list[ClipSource]], layout: str, output_dir: PathLike, settings: StreamSettings,
                 workers: int, progress: Optional[Callable[[int], None]], origin: dict) -> dict:
    """Write ``{split: clips}`` (see :func:`make_stream`); ``origin`` identifies the input for resumption."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    plan = _load_or_make_plan(output, sources, layout, settings, origin)
    jobs, records = [], {}
    for split, parts in plan["splits"].items():
        (output / split).mkdir(exist_ok=True)
        for part, clips in enumerate(parts):
            record = _complete_record(output / split, part)
            if record is None:
                jobs.append((split, part, [ClipSource(*clip) for clip in clips]))
            else:
                records[split, part] = record
                if progress:
                    progress(len(clips))
    reused = len(records)
    for key, record in _run_jobs(output, jobs, settings, workers, progress):
        records[key] = record
    skipped = []
    for split, parts in plan["splits"].items():
        skipped += _finish_split(output / split, [records[split, part] for part in range(len(parts))], settings)
    atomic_write_text(output / DATASET_NAME, json.dumps({"format": FORMAT, "version": VERSION,
                                                         "encoding": settings.encoding, "layout": plan["layout"],
                                                         "splits": list(plan["splits"])}))
    return {"path": str(output), "written": len(jobs), "reused": reused, "skipped": skipped}


def _run_jobs(output: Path, jobs: list, settings: StreamSettings, workers: int, progress):
    if workers <= 1:
        for split, part, clips in jobs:
            record = write_part(output / split, part, clips, settings)
            if progress:
                progress(len(clips))
            yield (split, part), record
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(write_part, output / split, part, clips, settings): (split, part, len(clips))
                   for split, part, clips in jobs}
        for future in as_completed(futures):
            split, part, count = futures[future]
            if progress:
                progress(count)
            yield (split, part), future.result()


def _finish_split(split_dir: Path, records: list[dict], settings: StreamSettings) -> list:
    """litdata's ``index.json`` over the chunks of every part (in part order) and our ``clips.json``."""
    chunks, config, clips, hashes, skipped, first = [], None, [], {}, [], 0
    for record in records:
        index = split_dir / f"{record['part']}.index.json"
        if index.exists():
            written = json.loads(index.read_text())
            chunks += written["chunks"]
            config = config or written["config"]
        clips += [[name, frames, fps, first + item] for name, frames, fps, item in record["clips"]]
        hashes.update(record["sha256"])
        skipped += record["skipped"]
        first += record["items"]
    if not chunks:
        raise StreamError(f"no clip of '{split_dir.name}' could be written ({len(skipped)} skipped, see the warnings)")
    atomic_write_text(split_dir / "index.json", json.dumps({"chunks": chunks, "config": config}))
    atomic_write_text(split_dir / CLIPS_NAME, json.dumps({"format": FORMAT, "version": VERSION,
                                                          "encoding": settings.encoding, "clips": clips,
                                                          "sha256": hashes}))
    return skipped


def _load_or_make_plan(output: Path, sources: dict[str, list[ClipSource]], layout: str,
                       settings: StreamSettings, origin: dict) -> dict:
    """The plan of an earlier run (same input and settings required) or a new one, written to ``plan.json``."""
    path = output / PLAN_NAME
    if path.exists():
        plan = json.loads(path.read_text())
        if plan.get("origin") != json.loads(json.dumps(origin)):
            raise StreamError(f"'{output}' holds a dataset written from {plan.get('origin')}; to write {origin} "
                              "choose another --out folder")
        return plan
    if any(output.iterdir()):
        raise StreamError(f"'{output}' is not empty and holds no {PLAN_NAME}; choose an empty --out folder")
    for split, clips in sources.items():
        folders = [clip.name for clip in clips if clip.kind == "frames"]
        if settings.encoding == "mp4" and folders:
            raise StreamError(f"'{split}' has {len(folders)} frame folder(s) (e.g. '{folders[0]}'); encoding mp4 "
                              "stores video files as they are: use --encoding png or jpeg for frame folders")
    splits = {split: [[list(clip.__dict__.values()) for clip in part]
                      for part in plan_parts(clips, estimate_sizes(clips, settings), settings)]
              for split, clips in sources.items()}
    plan = {"origin": origin, "layout": layout, "splits": splits}
    atomic_write_text(path, json.dumps(plan))
    return plan


def convert_tar_shards(index_path: PathLike, output_dir: PathLike, workers: int = 1, chunk_bytes: int =
                       DEFAULT_CHUNK_BYTES, progress: Optional[Callable[[int], None]] = None) -> dict:
    """Rewrite a dataset of the former tar shards (``index.json`` with ``"format": "dagan-shards"``) as a streaming
    dataset: the stored frame bytes are copied as they are, so samples stay the same. Local indexes only."""
    path = Path(index_path)
    path = path / "index.json" if path.is_dir() else path
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise StreamError(f"tar-shard index '{path}' could not be read ({error}); give the index.json of the old "
                          "shards folder") from error
    if not isinstance(index, dict) or index.get("format") != "dagan-shards":
        raise StreamError(f"'{path}' is not a tar-shard index (no \"format\": \"dagan-shards\")")
    kind = "tar-video" if index["encoding"] == "mp4" else "tar-frames"
    sources: dict[str, list[ClipSource]] = {}
    for shard in index["shards"]:
        shard_path = str((path.parent / shard["path"]).resolve())
        sources.setdefault(shard["split"], []).extend(
            ClipSource(name, shard_path, kind, int(frames), int(offset), int(size))
            for name, frames, offset, size in shard["clips"])
    settings = StreamSettings(index["encoding"], index.get("jpeg_quality") or 95, chunk_bytes)
    return write_stream(sources, index.get("layout", "splits"), output_dir, settings, workers, progress,
                        {"shards": str(path.resolve()), "settings": settings.__dict__})


# Reading.


@dataclass(frozen=True)
class Timeouts:
    """Bounds on every request to a store, from the environment (read when a store is opened):
    ``DAGAN_STREAM_CONNECT_TIMEOUT`` (seconds, default 10), ``DAGAN_STREAM_TIMEOUT`` (seconds a request may wait
    for data, default 60) and ``DAGAN_STREAM_RETRIES`` (retries after a failed or timed-out request, default 3).
    A stalled store therefore fails a read after about (retries + 1) x (connect + read timeout) plus backoff."""

    connect: float
    read: float
    retries: int

    @staticmethod
    def from_environment() -> "Timeouts":
        values = {}
        for name, variable, default, kind in (("connect", "DAGAN_STREAM_CONNECT_TIMEOUT", "10", float),
                                              ("read", "DAGAN_STREAM_TIMEOUT", "60", float),
                                              ("retries", "DAGAN_STREAM_RETRIES", "3", int)):
            text = os.environ.get(variable, default)
            try:
                values[name] = kind(text)
            except ValueError:
                raise StreamError(f"{variable}={text!r} is not a number; set it to e.g. {default}") from None
            if values[name] < 0 or (name != "retries" and values[name] == 0):
                raise StreamError(f"{variable}={text!r} must be {'>= 0' if name == 'retries' else '> 0'}")
        return Timeouts(**values)


def storage_options(root: str) -> dict:
    """litdata's ``storage_options`` for a root: for s3://, a botocore config with the bounded timeouts and retries
    of :class:`Timeouts` (litdata's own default retries an S3 request up to 1,000 times)."""
    if urllib.parse.urlparse(str(root)).scheme != "s3":
        return {}
    return {"config": _botocore_config(Timeouts.from_environment())}


def _botocore_config(timeouts: Timeouts):
    import botocore.config

    return botocore.config.Config(connect_timeout=timeouts.connect, read_timeout=timeouts.read,
                                  retries={"total_max_attempts": timeouts.retries + 1, "mode": "standard"})


_S3_CLIENTS: dict = {}


def _s3_client():
    """A boto3 S3 client with the bounded timeouts (credentials and ``AWS_ENDPOINT_URL`` from the environment),
    made once per process and setting (making one takes about 0.5 s)."""
    import boto3

    timeouts = Timeouts.from_environment()
    key = (os.getpid(), timeouts, *(os.environ.get(name) for name in (
        "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONFIG_FILE", "AWS_DEFAULT_REGION")))
    if key not in _S3_CLIENTS:
        _S3_CLIENTS[key] = boto3.session.Session().client("s3", config=_botocore_config(timeouts))
    return _S3_CLIENTS[key]


def _register_http() -> None:
    """Set up litdata's backends once per process: the request timeout of its S3 client (obstore), plain-HTTP
    S3-compatible endpoints (``AWS_ENDPOINT_URL=http://...``, e.g. a MinIO on the local network), and a read-only
    backend for ``http(s)://`` roots (litdata has s3/gs/azure backends, none for plain HTTP)."""
    from litdata.streaming import downloader

    timeouts = Timeouts.from_environment()
    options = {**downloader._OBSTORE_CLIENT_OPTIONS, "timeout": f"{timeouts.read:g}s",
               "connect_timeout": f"{timeouts.connect:g}s"}
    if os.environ.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        options["allow_http"] = "true"
    downloader._OBSTORE_CLIENT_OPTIONS = options
    if "https://" in downloader._DOWNLOADERS:
        return

    class BoundedGCSDownloader(downloader.GCPDownloader):
        """litdata's gs:// backend, its ranged reads bounded by :class:`Timeouts` (google-cloud-storage's own
        defaults: 60 s a request, retried for up to 120 s)."""

        def download_bytes(self, remote_filepath: str, offset: int, length: int, local_chunkpath: str) -> bytes:
            from google.cloud.storage.retry import DEFAULT_RETRY

            parsed = urllib.parse.urlparse(remote_filepath)
            timeouts = Timeouts.from_environment()
            blob = self._get_client().bucket(parsed.netloc).blob(parsed.path.lstrip("/"))
            retry = DEFAULT_RETRY.with_timeout((timeouts.retries + 1) * (timeouts.connect + timeouts.read))
            return blob.download_as_bytes(start=offset, end=offset + length - 1, timeout=_gcs_timeout(), retry=retry)

    downloader.register_downloader("gs://", BoundedGCSDownloader, overwrite=True)

    class HTTPDownloader(downloader.Downloader):
        def __init__(self, remote_dir, cache_dir, chunks, storage_options=None, **kwargs):
            super().__init__(remote_dir, cache_dir, chunks, storage_options)

        def download_file(self, remote_filepath: str, local_filepath: str) -> None:
            if os.path.exists(local_filepath):
                return
            Path(local_filepath).parent.mkdir(parents=True, exist_ok=True)
            data = _http_get(urllib.request.Request(remote_filepath))
            temporary = f"{local_filepath}.{os.getpid()}.partial"
            Path(temporary).write_bytes(data)
            os.replace(temporary, local_filepath)

        def download_bytes(self, remote_filepath: str, offset: int, length: int, local_chunkpath: str) -> bytes:
            byte_range = f"bytes={offset}-{offset + length - 1}"
            request = urllib.request.Request(remote_filepath, headers={"Range": byte_range})
            data = _http_get(request, offset, length)
            if len(data) != length:
                raise OSError(f"'{remote_filepath}' is truncated: {len(data)} of {length} bytes at offset {offset}")
            return data

    for prefix in ("http://", "https://"):
        downloader.register_downloader(prefix, HTTPDownloader, overwrite=True)


def _http_get(request: urllib.request.Request, offset: int = 0, length: Optional[int] = None) -> bytes:
    """The body of a GET (a range when ``length`` is given), each try bounded by :class:`Timeouts`."""
    timeouts = Timeouts.from_environment()
    for attempt in range(timeouts.retries + 1):
        try:
            with urllib.request.urlopen(request, timeout=timeouts.connect + timeouts.read) as response:
                if length is None or response.status == 206:
                    return response.read()
                return response.read(offset + length)[offset:]
        except (TimeoutError, ConnectionError, urllib.error.URLError) as error:
            if isinstance(error, urllib.error.HTTPError) and error.code < 500 or attempt == timeouts.retries:
                raise
            time.sleep(min(2.0, 0.1 * 2 ** attempt))
    raise AssertionError("unreachable")


def store_error(location: str, error: BaseException) -> StreamError:
    """One line for a store that cannot be reached or read, naming the likely fix."""
    text = f"{type(error).__name__}: {error}".splitlines()[0][:300]
    scheme = urllib.parse.urlparse(location).scheme
    hint = {"s3": "check the bucket and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (AWS_ENDPOINT_URL for MinIO and "
                  "other S3-compatible stores)",
            "gs": "check the bucket and GOOGLE_APPLICATION_CREDENTIALS (STORAGE_EMULATOR_HOST for an emulator)",
            "azure": "check the container and AZURE_STORAGE_CONNECTION_STRING"}.get(
        scheme, "check the path or URL (a dataset written by scripts/make_shards.py)")
    return StreamError(f"cannot read '{location}' ({text}); {hint}")


def remote_size(location: str) -> Optional[int]:
    """The size in bytes of a remote file from its metadata (S3 HEAD, GCS object metadata, HTTP HEAD), without
    reading it; None where the backend has no such probe here (azure://: checked after the download)."""
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme == "s3":
        return int(_s3_client().head_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["ContentLength"])
    if parsed.scheme == "gs":
        from google.cloud import storage

        blob = storage.Client().bucket(parsed.netloc).get_blob(parsed.path.lstrip("/"), timeout=_gcs_timeout())
        if blob is None:
            raise FileNotFoundError(f"no object '{location}'")
        return int(blob.size)
    if parsed.scheme in ("http", "https"):
        timeouts = Timeouts.from_environment()
        request = urllib.request.Request(location, method="HEAD")
        with urllib.request.urlopen(request, timeout=timeouts.connect + timeouts.read) as response:
            length = response.headers.get("Content-Length")
        return int(length) if length is not None else None
    return None


def _gcs_timeout() -> tuple[float, float]:
    timeouts = Timeouts.from_environment()
    return timeouts.connect, timeouts.read


def check_metadata_size(size: Optional[int], location: str) -> None:
    if size is not None and size > MAX_METADATA_BYTES:
        raise StreamError(f"'{location}' is {size} bytes, over the {MAX_METADATA_BYTES} allowed for dataset "
                          "metadata; it was not read (is this the dataset written by scripts/make_shards.py?)")


def read_metadata(folder: str, name: str, cache_dir: Optional[str] = None) -> dict:
    """A JSON file of a streaming dataset (local or through the stores' clients); its size is checked before it
    is read (a local stat, a remote HEAD or object metadata) and one over MAX_METADATA_BYTES is refused."""
    location = join(folder, name)
    try:
        if not is_remote(folder):
            check_metadata_size(Path(location).stat().st_size, location)
            return _parse_metadata(Path(location).read_bytes(), location)
        check_metadata_size(remote_size(location), location)
        data = _read_remote(folder, name, cache_dir)
        check_metadata_size(len(data), location)  # azure://, whose size is not probed
        return _parse_metadata(data, location)
    except StreamError:
        raise
    except Exception as error:  # the backends raise their own types (botocore, google, urllib)
        raise store_error(location, error) from error


def _read_remote(folder: str, name: str, cache_dir: Optional[str]) -> bytes:
    """A remote file, whole: S3 through boto3 with the bounded timeouts, the others through litdata's backends."""
    location = join(folder, name)
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme == "s3":
        response = _s3_client().get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
        with contextlib.closing(response["Body"]) as body:
            return body.read()
    _register_http()
    from litdata.streaming.downloader import get_downloader

    if cache_dir:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:
        local = Path(scratch) / name
        get_downloader(folder, scratch, []).download_file(location, str(local))
        return local.read_bytes()


def _parse_metadata(data: bytes, location: str) -> dict:
    try:
        return json.loads(data)
    except ValueError as error:
        raise StreamError(f"'{location}' is not valid JSON ({error}); write the dataset again") from error


INDEX_NAME = "index.json"
SAFE_FORMATS = ("bytes", "numpy", "no_header_numpy", "int", "float", "bool", "str")  # no pickle


def check_index(split_dir: str, cache_dir: Optional[str] = None) -> None:
    """litdata's ``index.json`` of a split, checked before litdata opens it: its size (as for all metadata) and
    that every stored field is of a plain type (bytes, arrays, numbers): litdata unpickles a field whose index
    says "pickle", so a tampered index could run code; such an index is refused."""
    index = read_metadata(split_dir, INDEX_NAME, cache_dir)
    formats = index.get("config", {}).get("data_format", []) if isinstance(index, dict) else None
    if not isinstance(formats, list) or not formats:
        raise StreamError(f"'{join(split_dir, INDEX_NAME)}' is not a litdata index; write the dataset again")
    unsafe = sorted({str(kind) for kind in formats if str(kind).split(":")[0] not in SAFE_FORMATS})
    if unsafe:
        raise StreamError(f"'{join(split_dir, INDEX_NAME)}' stores fields as {', '.join(unsafe)}, which could run code "
                          "when read; refusing it (write the dataset with scripts/make_shards.py)")


def open_engine(split_dir: str, cache_dir: Optional[str], max_cache_size: str):
    """litdata's ``StreamingDataset`` of a split (local or remote, the bounded timeouts for S3)."""
    _register_http()
    from litdata import StreamingDataset
    from litdata.streaming.resolver import Dir

    # litdata resolves its own cloud prefixes; an http(s) URL is handed over as a remote Dir.
    location = Dir(path=None, url=split_dir) if split_dir.startswith("http") else split_dir
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # litdata's advice on cache sizes for large clusters
        return StreamingDataset(location, cache_dir=cache_dir, max_cache_size=max_cache_size,
                                storage_options=storage_options(split_dir))


def read_record(engine, index: int, location: str, label: str) -> dict:
    """litdata item ``index``; MediaError for a broken item, StreamError for a store that cannot be read."""
    try:
        return engine[int(index)]
    except Exception as error:
        if is_store_failure(error):  # the store itself (credentials, endpoint, timeouts): not a broken sample
            raise store_error(location, error) from error
        if isinstance(error, (OSError, ValueError, KeyError, IndexError)):
            raise MediaError(f"{label}: {type(error).__name__}: {error}") from error
        raise store_error(location, error) from error


def is_store_failure(error: BaseException) -> bool:
    """Timeouts and failed connections (after the retries of :class:`Timeouts`) and errors of the store's client,
    as opposed to a broken item: a run stops on them rather than skip clips while the store is down."""
    if isinstance(error, (TimeoutError, ConnectionError, urllib.error.URLError)):
        return True
    module = type(error).__module__.split(".")[0]
    return module in ("botocore", "boto3", "urllib3", "requests", "google", "azure", "obstore")


def read_speech_item(engine, index: int, location: str, label: str):
    """``(AVItem, bytes read)`` of the speech item stored as litdata item ``index``: checked against its digest
    (MediaError: a damaged chunk) and then against the item schema, as a prepared file is."""
    from dagan.audio.data import AVItem, checked_item

    record = read_record(engine, index, location, label)
    size = sum(np.asarray(record[name]).nbytes for name in SPEECH_ARRAYS) + 16 + DIGEST_BYTES
    if speech_digest(record) != bytes(record["digest"]):
        raise MediaError(f"{label} is corrupt (its digest differs: a damaged chunk of '{location}'); check the "
                         "dataset with make_shards.py --verify")
    try:
        item = checked_item(label, AVItem(*(record[name] for name in SPEECH_ARRAYS), record["fps"],
                                          record["offset_frames"]))
    except ValueError as error:
        raise MediaError(str(error)) from None
    return item, size


def open_description(root: str, cache_dir: Optional[str], encodings: Sequence[str]) -> dict:
    """``dataset.json`` of a streaming dataset, whose encoding must be one of ``encodings``."""
    description = read_metadata(root, DATASET_NAME, cache_dir)
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise StreamError(f"'{join(root, DATASET_NAME)}' is not a dagan streaming dataset; write one with "
                          "scripts/make_shards.py")
    if description.get("encoding") not in encodings:
        kind = "speech items (make_shards.py --speech)" if "speech" in encodings else "frames or videos"
        raise StreamError(f"'{root}' holds {description.get('encoding')} data, not {kind}; give the dataset written "
                          "for this stage")
    return description


@dataclass(frozen=True)
class StreamItem(VideoItem):
    """A clip of a streaming dataset: ``first`` is the litdata index of its first frame (its video for mp4)."""

    first: int = 0
    fps: float = FALLBACK_FPS


class StreamStore(VideoStore):
    """The clips of one split of a streaming dataset, with the interface of :class:`VideoStore` (``items``,
    ``open_clip``, ``skipped``, ``mark_unusable``), so the pair and triplet datasets read it unchanged.

    Construction reads ``dataset.json`` and the split's ``clips.json``; frames are read when a sample needs them,
    one litdata item each. A frame whose digest differs (a corrupt chunk) or that cannot be decoded marks its clip
    unusable (skipped, counted, warned once), as a broken video is in a folder dataset. ``bytes_read`` counts the
    item bytes this process read.
    """

    def __init__(self, root: PathLike, split: Split = "train", frame_shape: Sequence[int] = (256, 256),
                 cache_bytes: int = DEFAULT_CACHE_BYTES, min_frames: int = 1, cache_dir: Optional[str] = None,
                 max_cache_size: str = DEFAULT_CACHE_SIZE) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.root, self.split = str(root).rstrip("/"), split
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self.min_frames = max(1, int(min_frames))
        self.cache_dir, self.max_cache_size = cache_dir or None, max_cache_size
        description = open_description(self.root, self.cache_dir, ("png", "jpeg", "mp4"))
        stored = "train" if description["layout"] == "flat" else split
        if stored not in description["splits"]:
            raise StreamError(f"'{self.root}' has no '{split}' split; write the dataset from a root with {split}/")
        self.layout, self.split_dir = "stream", join(self.root, stored)
        self.encoding = description["encoding"]
        self.skipped: list[tuple[str, str]] = []
        self._bad: dict[Path, str] = {}
        self.bytes_read = 0
        self._engine = None
        self._video_file: Optional[str] = None
        self.items = self._stream_items(read_metadata(self.split_dir, CLIPS_NAME, self.cache_dir))
        check_index(self.split_dir, self.cache_dir)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_engine": None, "_video_file": None}  # each DataLoader worker opens its own

    def _stream_items(self, table: dict) -> list[StreamItem]:
        kind = "video" if self.encoding == "mp4" else "frames"
        items = [StreamItem(name, Path(self.split_dir) / name, kind, int(frames), int(first), float(fps))
                 for name, frames, fps, first in table["clips"] if frames >= self.min_frames]
        if len(items) < len(table["clips"]):
            warnings.warn(f"skipping {len(table['clips']) - len(items)} clip(s) of '{self.split_dir}' with fewer than "
                          f"{self.min_frames} frames", stacklevel=3)
        if not items:
            raise StreamError(f"'{self.split_dir}' has no usable clip; write the dataset again (make_shards.py)")
        return sorted(items, key=lambda item: natural_sort_key(Path(item.name)))  # VideoStore's order

    def engine(self):
        """litdata's ``StreamingDataset`` of the split, opened once per process."""
        if self._engine is None:
            self._engine = open_engine(self.split_dir, self.cache_dir, self.max_cache_size)
        return self._engine

    def fetch(self, index: int, label: str) -> bytes:
        """The stored bytes of litdata item ``index``, checked against its digest."""
        record = read_record(self.engine(), index, self.split_dir, label)
        data = bytes(record["frame"])
        self.bytes_read += len(data) + DIGEST_BYTES
        if frame_digest(data) != bytes(record["digest"]):
            raise MediaError(f"{label} is corrupt (its digest differs: a damaged chunk of '{self.split_dir}'); "
                             "check the dataset with make_shards.py --verify")
        return data

    def _open_item(self, item: StreamItem) -> Clip:
        if item.kind == "video":
            return self._open_video(item)
        return Clip(item.name, item.num_frames,
                    lambda index: decode_image_uint8(self.fetch(item.first + index, f"{item.name}[{index}]"),
                                                     f"{item.name}[{index}]"), self.frame_shape)

    def _open_video(self, item: StreamItem) -> Clip:
        """Fetch the video file (one item) and seek to the frames a sample needs; nothing is decoded whole."""
        if self._video_file and os.path.exists(self._video_file):
            os.remove(self._video_file)
        handle, self._video_file = tempfile.mkstemp(suffix=Path(item.name).suffix or ".mp4", dir=_scratch_dir())
        with os.fdopen(handle, "wb") as stream:
            stream.write(self.fetch(item.first, item.name))
        video = open_video(self._video_file)
        return Clip(item.name, item.num_frames or video.num_frames, video.read_frame, self.frame_shape)


def _scratch_dir() -> Optional[str]:
    """Where a fetched mp4 is put for ffmpeg: memory-backed /dev/shm when there is one."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


# Verification.


@dataclass
class VerifyReport:
    chunks: int = 0
    clips: int = 0
    frames_decoded: int = 0
    errors: list[str] = field(default_factory=list)


def verify_stream(root: str, decode: str = "ends", cache_dir: Optional[str] = None,
                  progress: Optional[Callable[[int], None]] = None) -> VerifyReport:
    """Check a streaming dataset, local or remote: every chunk's SHA-256 as recorded (each chunk read whole, once)
    and frames decoding (``decode``: "ends" = first and last frame of each clip, "all", or "none")."""
    report = VerifyReport()
    description = read_metadata(str(root), DATASET_NAME, cache_dir)
    for split in description.get("splits", []):
        folder = join(str(root), split)
        table = read_metadata(folder, CLIPS_NAME, cache_dir)
        fetch = chunk_fetcher(folder, cache_dir)
        for name, expected in table["sha256"].items():
            report.chunks += 1
            problem = _check_chunk(folder, name, expected, fetch)
            if problem:
                report.errors.append(problem)
            if progress:
                progress(1)
        if decode != "none" and description.get("encoding") == "speech":
            _check_speech_items(folder, table, cache_dir, report)
        elif decode != "none":
            _check_frames(StreamStore(root, split, cache_dir=cache_dir), decode, report)
    return report


def chunk_fetcher(folder: str, cache_dir: Optional[str]) -> Callable[[str, Path], None]:
    """``fetch(location, local_path)``: one litdata backend per split (one client, reused for every chunk)."""
    if not is_remote(folder):
        return lambda location, local: shutil.copyfile(location, local)
    _register_http()
    from litdata.streaming.downloader import get_downloader

    downloader = get_downloader(folder, cache_dir or tempfile.gettempdir(), [], storage_options(folder))
    return lambda location, local: downloader.download_file(location, str(local))


def _check_chunk(folder: str, name: str, expected: str, fetch: Callable[[str, Path], None]) -> Optional[str]:
    """None when the chunk's SHA-256 is the recorded one, else the problem (read whole, local or remote)."""
    location = join(folder, name)
    try:
        if is_remote(folder):
            with tempfile.TemporaryDirectory() as scratch:
                fetch(location, Path(scratch) / name)
                actual = file_sha256(Path(scratch) / name)
        else:
            actual = file_sha256(Path(location))
    except Exception as error:  # the backends raise their own types
        return f"{location}: {type(error).__name__}: {error}".splitlines()[0]
    return None if actual == expected else f"{location}: SHA-256 differs from clips.json (corrupted or rewritten)"


def _check_frames(store: StreamStore, decode: str, report: VerifyReport) -> None:
    for number, item in enumerate(store.items):
        report.clips += 1
        chosen = {"ends": sorted({0, item.num_frames - 1}), "all": range(item.num_frames)}[decode]
        try:
            clip = store.open_clip(number)
            for index in chosen:
                clip.read_frame(index)
                report.frames_decoded += 1
        except (MediaError, OSError, ValueError) as error:
            report.errors.append(f"{store.split_dir}: clip '{item.name}': {error}")


def _check_speech_items(folder: str, table: dict, cache_dir: Optional[str], report: VerifyReport) -> None:
    """Every speech item read, checked against its digest and the item schema (``frames_decoded`` counts items)."""
    check_index(folder, cache_dir)
    engine = open_engine(folder, cache_dir, DEFAULT_CACHE_SIZE)
    for name, _, _, first in table["clips"]:
        report.clips += 1
        try:
            read_speech_item(engine, first, folder, join(folder, name))
            report.frames_decoded += 1
        except (MediaError, OSError, ValueError) as error:
            report.errors.append(f"{folder}: item '{name}': {error}")
