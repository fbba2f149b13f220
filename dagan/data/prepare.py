"""Dataset preparation behind ``scripts/prepare_dataset.py``: a folder of raw videos (one subfolder per person)
becomes ``root/{train,test}/<identity>#<video>#<k>.mp4`` face clips, split by identity, in parallel and resumably.

Each raw video is cut into face tubes by :mod:`dagan.faces.tubes` (one clip per face and per shot); the run's state
(``.prepare_state.json``) records finished videos so a rerun skips them.
"""

from __future__ import annotations

import functools
import json
import os
import random
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

from tqdm import tqdm

from dagan.faces import FaceAnalyzer, NoFaceFound
from dagan.faces.tubes import CropSettings, TubesTooShort, build_analyzer, plan_video, write_clips
from dagan.io import VIDEO_SUFFIXES, MediaError, open_video
from dagan.io.files import atomic_write_text

__all__ = ["PrepareSummary", "RawVideo", "find_raw_videos", "prepare_dataset", "split_identities"]

PathLike = Union[str, os.PathLike]
RAW_VIDEO_SUFFIXES = tuple(suffix for suffix in VIDEO_SUFFIXES if suffix != ".gif")  # raw footage, not GIFs
STATE_FILE = ".prepare_state.json"



@dataclass(frozen=True)
class RawVideo:
    """A raw input video. relative: path under the raw dir (posix). identity/name: clip name parts."""

    path: Path
    relative: str
    identity: str
    name: str


@dataclass
class PrepareSummary:
    """What one ``prepare_dataset`` run did (counts of raw videos, except ``clips``)."""

    videos: int = 0
    clips: int = 0
    skipped: int = 0
    no_face: int = 0
    too_short: int = 0
    failed: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = (f"videos: {self.videos}, clips written: {self.clips}, skipped (already done): {self.skipped}, "
                f"no face: {self.no_face}, no tube > min_frames: {self.too_short}, failed: {len(self.failed)}")
        return text + "".join(f"\n  failed: {line}" for line in self.failed)


def _clean(part: str) -> str:
    """A name part without '#' (the identity separator) or path separators."""
    return part.replace("#", "_").replace("/", "_").replace(os.sep, "_")


def find_raw_videos(raw_dir: PathLike) -> list[RawVideo]:
    """The video files under ``raw_dir`` (recursively, hidden entries skipped), in sorted order.

    Raises MediaError when ``raw_dir`` is missing or two files would give the same clip names.

    Identity: a file in a subfolder belongs to the identity named by its top-level folder under
    ``raw_dir`` (``raw/<person>/.../clip.mp4``); a file directly in ``raw_dir`` is its own identity (its
    stem). Name: the path below the identity folder without suffix, folders joined with ``_``.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise MediaError(f"raw video folder '{raw_dir}' does not exist or is not a folder")
    videos = []
    for path in sorted(raw_dir.rglob("*")):
        relative = path.relative_to(raw_dir)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if path.suffix.lower() not in RAW_VIDEO_SUFFIXES:
            continue
        parts = relative.with_suffix("").parts
        name = "_".join(parts[1:]) if len(parts) > 1 else parts[0]  # parts[0]: folder, or the file's stem
        videos.append(RawVideo(path, relative.as_posix(), _clean(parts[0]), _clean(name)))
    seen: dict[tuple[str, str], str] = {}
    for video in videos:  # a/x.mp4 and a/x.mov would write the same clips
        other = seen.setdefault((video.identity, video.name), video.relative)
        if other != video.relative:
            raise MediaError(f"'{other}' and '{video.relative}' in '{raw_dir}' give the same clip names "
                             f"({video.identity}#{video.name}#k); rename one of them")
    return videos


def split_identities(identities: Iterable[str], test_fraction: float, seed: int,
                     assigned: Optional[dict[str, str]] = None) -> dict[str, str]:
    """Map each identity to ``"train"`` or ``"test"``; all clips of an identity share its split.

    Identities already in ``assigned`` keep their split (so a resumed run with new files never moves
    finished clips); the new ones are shuffled with ``random.Random(seed)`` (sorted first, so the result
    does not depend on the input order) and fill the test split up to ``round(test_fraction * total)``
    identities, at least one when ``test_fraction > 0`` and there are two or more identities.
    """
    assigned = dict(assigned or {})
    every = sorted(set(identities) | set(assigned))
    new = [identity for identity in every if identity not in assigned]
    random.Random(seed).shuffle(new)
    target = round(test_fraction * len(every))
    if test_fraction > 0 and len(every) >= 2:
        target = min(max(target, 1), len(every) - 1)
    test_count = sum(split == "test" for split in assigned.values())
    for identity in new:
        assigned[identity] = "test" if test_count < target else "train"
        test_count += assigned[identity] == "test"
    return assigned


@dataclass(frozen=True)
class _Job:
    video: RawVideo
    outputs_stem: str  # ROOT/<split>/<identity>#<name>, "#<k>[.mp4]" appended per clip
    settings: CropSettings
    file_format: str
    backend: str
    keep_audio: bool


@functools.lru_cache(maxsize=2)
def _analyzer_for_worker(backend: str, detect_max_side: int) -> FaceAnalyzer:
    """One analyzer per process and backend (models load once per worker, not once per video)."""
    return build_analyzer(backend, cpu=True, detect_max_side=detect_max_side)


def _process_video(job: _Job) -> dict:
    """Crop one raw video into its clips (runs in a worker). Returns a state entry for the video."""
    analyzer = _analyzer_for_worker(job.backend, job.settings.detect_max_side)
    try:
        video = open_video(job.video.path)
        plans = plan_video(video, analyzer, job.settings, progress=False)
    except TubesTooShort as error:
        return {"status": "too_short", "clips": [], "message": str(error)}
    except NoFaceFound as error:
        return {"status": "no_face", "clips": [], "message": str(error)}
    suffix = ".mp4" if job.file_format == "mp4" else ""
    outputs = [Path(f"{job.outputs_stem}#{k}{suffix}") for k in range(len(plans))]
    write_clips(video, plans, outputs, keep_audio=job.keep_audio, progress=False)
    return {"status": "done", "clips": [str(path) for path in outputs]}


def _load_state(root: Path, settings: dict) -> dict:
    path = root / STATE_FILE
    if not path.exists():
        return {"settings": settings, "splits": {}, "videos": {}}
    state = json.loads(path.read_text())
    if state.get("settings") != settings:
        raise ValueError(
            f"'{root}' was prepared with other settings ({state.get('settings')}); use a new --out folder, "
            f"or delete {path} and the clips to start over"
        )
    return state


def _save_state(root: Path, state: dict) -> None:
    """Write the state file atomically."""
    atomic_write_text(root / STATE_FILE, json.dumps(state, indent=1, sort_keys=True))


def _is_finished(entry: Optional[dict], root: Path) -> bool:
    """A video whose state entry says it is done and whose clips all exist (or that had no usable face)."""
    if entry is None:
        return False
    return entry["status"] in ("no_face", "too_short") or (
        entry["status"] == "done" and all((root / clip).exists() for clip in entry["clips"]))


def prepare_dataset(raw_dir: PathLike, root: PathLike, file_format: str = "mp4", test_fraction: float = 0.1,
                    workers: int = 1, settings: CropSettings = CropSettings(), seed: int = 0,
                    backend: str = "auto", keep_audio: bool = True, progress: bool = True,
                    log: Callable[[str], None] = tqdm.write) -> PrepareSummary:
    """Crop every raw video of ``raw_dir`` into ``root/{train,test}/<identity>#<name>#<k>[.mp4]``.

    file_format: ``"mp4"`` (H.264 clips with audio) or ``"png"`` (one folder of PNG frames per clip).
    Resumable: ``root/.prepare_state.json`` records finished videos (and the identity splits); a rerun
    skips them. Each clip is written atomically; a video interrupted mid-way is redone.
    workers: processes (``ProcessPoolExecutor``); 1 runs in this process. Each worker loads its own
    analyzer (on the CPU). log: receives one line per video without a usable face.
    """
    if file_format not in ("mp4", "png"):
        raise ValueError(f"format must be 'mp4' or 'png', got {file_format!r}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    videos = find_raw_videos(raw_dir)
    if not videos:
        raise MediaError(f"no video files ({', '.join(RAW_VIDEO_SUFFIXES)}) under '{raw_dir}'")
    state = _load_state(root, {**asdict(settings), "image_shape": list(settings.image_shape),
                               "format": file_format, "test_fraction": test_fraction, "seed": seed,
                               "keep_audio": keep_audio})
    state["splits"] = split_identities((video.identity for video in videos), test_fraction, seed, state["splits"])
    summary = PrepareSummary(videos=len(videos))
    jobs = []
    for video in videos:
        if _is_finished(state["videos"].get(video.relative), root):
            summary.skipped += 1
            continue
        split_dir = root / state["splits"][video.identity]
        split_dir.mkdir(exist_ok=True)
        jobs.append(_Job(video, str(split_dir / f"{video.identity}#{video.name}"), settings, file_format,
                         backend, keep_audio))
    _save_state(root, state)
    for job, entry in _run_jobs(jobs, workers, progress, summary):
        if entry["status"] == "done":
            entry["clips"] = [Path(clip).relative_to(root).as_posix() for clip in entry["clips"]]
            summary.clips += len(entry["clips"])
        else:
            summary.no_face += entry["status"] == "no_face"
            summary.too_short += entry["status"] == "too_short"
            log(entry["message"])
        state["videos"][job.video.relative] = entry
        _save_state(root, state)
    return summary


def _run_jobs(jobs: Sequence[_Job], workers: int, progress: bool,
              summary: PrepareSummary) -> Iterator[tuple[_Job, dict]]:
    """Yield ``(job, state entry)`` as videos finish; a video that fails (unreadable file, encoder
    error) is reported in ``summary.failed`` and not recorded, so the next run retries it."""
    bar = tqdm(total=len(jobs), desc="videos", unit="video", disable=not progress)
    pool: Optional[ProcessPoolExecutor] = None
    try:
        if workers <= 1 or len(jobs) <= 1:
            results = ((job, _guarded(lambda job=job: _process_video(job))) for job in jobs)
        else:
            pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)))
            futures = {pool.submit(_process_video, job): job for job in jobs}
            results = ((futures[future], _guarded(future.result)) for future in as_completed(futures))
        for job, (entry, error) in results:
            bar.update()
            if error is not None:
                summary.failed.append(f"{job.video.relative}: {error}")
            else:
                yield job, entry
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _guarded(call: Callable[[], dict]) -> tuple[Optional[dict], Optional[str]]:
    """``(result, None)`` or ``(None, one-line error)``: one bad video must not stop the whole run."""
    try:
        return call(), None
    except Exception as error:  # noqa: BLE001 - reported per video in the summary
        return None, f"{type(error).__name__}: {error}".splitlines()[0]
