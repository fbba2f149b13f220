"""Evaluation protocols: compare files, reconstruct the test split from a checkpoint, animate frame pairs.

Three entry points, all returning an :class:`EvaluationReport` (per-item rows, pooled summary, table):

- :func:`evaluate_files`: generated vs reference videos (files, frame folders, or folders of such items paired
  by name), optionally against a source image for CSIM.
- :func:`evaluate_reconstruction`: FOMM's reconstruction protocol. Every test video ``root/test/<video>`` is
  animated from its own first frame with absolute keypoints (``relative=False``) and compared with its real
  frames at the model's resolution.
- :func:`evaluate_pairs`: DaGAN's same-/cross-identity protocol on a CSV of (source, driving) frame pairs (format
  in :func:`read_pairs`). Same-identity pairs use absolute keypoints and every metric against the driving frame;
  cross-identity pairs use relative motion with scale adaptation and only the metrics without ground truth
  (AKD, AED and PRMSE against the driving frame, CSIM against the source).

The scorer, per-item results and the report are :mod:`dagan.eval.scoring`.
"""
from __future__ import annotations

import contextlib
import csv
import functools
import itertools
import os
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional

import numpy as np
from tqdm import tqdm

from dagan.eval.scoring import EvaluationReport, FrameScorer, ItemResult, fit_frame, score_stream
from dagan.eval.metrics import METRICS
from dagan.io import (MediaError, is_image_file, is_video_file, open_video, read_image_uint8, resize_to_model,
                      to_uint8)

if TYPE_CHECKING:
    from dagan.inference import DaGANPipeline

__all__ = [
    "FramePair",
    "FrameRef",
    "ItemPaths",
    "evaluate_files",
    "evaluate_pairs",
    "evaluate_reconstruction",
    "pair_items",
    "read_pairs",
]

SAME, CROSS = "same-identity", "cross-identity"
DEFAULT_FPS = 25.0  # frame rate of saved videos made from frame folders


# Sharing the items of a protocol between processes (torchrun), resumably.

@dataclass(frozen=True)
class Share:
    """Which items this process evaluates, and where finished items are kept.

    rank / world: this process takes the items i with i % world == rank (``torchrun``'s RANK and WORLD_SIZE; no
    process group needed). items_dir: one JSON file per finished item (``000012.json``); an item with a file is
    not evaluated again (a rerun resumes), and a process that finds every item done after evaluating some writes the
    report (ranks that finish together write the same report, atomically); when every item was done before, rank 0
    alone writes it.
    """

    rank: int = 0
    world: int = 1
    items_dir: Optional[Path] = None
    model: str = ""  # what identifies the model (e.g. its checkpoint's path, size and time): items of another
    #                  model in items_dir are refused


def run_items(count: int, evaluate: Callable[[int], "ItemResult | str"], settings: dict[str, Any],
              share: Share = Share(), desc: str = "items", progress: bool = True) -> Optional[list["ItemResult | str"]]:
    """``evaluate(i)`` for this process's items (an :class:`ItemResult`, or a string: why item i was skipped);
    all ``count`` results in order once every item is done, else None (another process finishes them)."""
    import json

    from dagan.io.files import atomic_write_text

    mine = range(share.rank, count, share.world)
    bar = tqdm(mine, desc=desc, unit=desc.rstrip("s"), disable=not progress, dynamic_ncols=True)
    if share.items_dir is None:
        if share.world != 1:
            raise ValueError("items shared between processes need a folder for them (Share.items_dir)")
        return [evaluate(index) for index in bar]
    folder = Path(share.items_dir)
    check_item_settings(folder, {**settings, "model": share.model})
    evaluated = False
    for index in bar:
        path = folder / f"{index:06d}.json"
        if not path.exists():
            outcome = evaluate(index)
            data = {"skipped": outcome} if isinstance(outcome, str) else {"item": outcome.to_json()}
            atomic_write_text(path, json.dumps(data) + "\n")
            evaluated = True
    paths = [folder / f"{index:06d}.json" for index in range(count)]
    if not all(path.exists() for path in paths):
        return None
    if not evaluated and share.rank != 0:  # a rerun with every item done: rank 0 alone writes the report
        return None
    loaded = [json.loads(path.read_text(encoding="utf-8")) for path in paths]
    return [data["skipped"] if "skipped" in data else ItemResult.from_json(data["item"]) for data in loaded]


def check_item_settings(folder: Path, settings: dict[str, Any]) -> None:
    """The items of ``folder`` belong to an evaluation with these ``settings`` (written on first use): a folder of
    another evaluation is refused, not mixed in."""
    import json

    from dagan.io.files import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "settings.json"
    text = json.dumps(settings, sort_keys=True, default=str)
    if not path.exists():
        atomic_write_text(path, text + "\n")
    elif path.read_text(encoding="utf-8").strip() != text:
        raise ValueError(f"{folder} holds the items of an evaluation with other settings or inputs; give --output "
                         "another path (or delete that folder to start again)")


# Protocol 1: files.

@dataclass(frozen=True)
class ItemPaths:
    """One item of the file protocol: generated and reference videos (file or frame folder), optional source."""

    name: str
    generated: Path
    reference: Path
    source: Optional[Path] = None


def is_collection(path: Path) -> bool:
    """A folder of items (video files or frame folders), as opposed to a folder of frames or a file."""
    return path.is_dir() and any(not child.name.startswith(".") and (child.is_dir() or (child.is_file() and is_video_file(child)))
                                 for child in path.iterdir())


def _collection_entries(path: Path, images: bool = False) -> dict[str, Path]:
    """``{stem: path}`` of the video files and frame folders (and image files if ``images``) in a folder."""
    entries = {}
    for child in sorted(path.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_dir() or (child.is_file() and (is_video_file(child) or (images and is_image_file(child)))):
            entries.setdefault(child.stem if child.is_file() else child.name, child)
    return entries


def pair_items(generated: str | os.PathLike, reference: str | os.PathLike,
               source: Optional[str | os.PathLike] = None) -> tuple[list[ItemPaths], list[str]]:
    """Pair generated and reference items (and sources) by name; returns the items and notes on unpaired names.

    Each path is a video file, a folder of frames, or a folder of such items. Folders of items are paired by
    name (file stem or folder name). ``source``: one image/video/frame folder for every item, or, with folders of
    items, a folder of images/videos/frame folders paired by name too.
    """
    generated, reference = Path(generated), Path(reference)
    source = Path(source) if source is not None else None
    for path in (generated, reference, source):
        if path is not None and not path.exists():
            raise MediaError(f"'{path}' does not exist; give a video file, a folder of frames or a folder of items")
    if not is_collection(generated):
        if is_collection(reference):
            raise MediaError(f"'{generated}' is one video but '{reference}' is a folder of videos; give the same kind")
        return [ItemPaths(generated.stem if generated.is_file() else generated.name, generated, reference, source)], []
    if not is_collection(reference):
        raise MediaError(f"'{generated}' is a folder of videos but '{reference}' is not; give the same kind")
    generated_items, reference_items = _collection_entries(generated), _collection_entries(reference)
    sources = _collection_entries(source, images=True) if source is not None and source.is_dir() else None
    items, notes = [], []
    for name in sorted(set(generated_items) | set(reference_items)):
        if name not in generated_items or name not in reference_items:
            notes.append(f"'{name}' is only in {'generated' if name in generated_items else 'reference'}: skipped")
            continue
        item_source = source if sources is None else sources.get(name)
        if source is not None and item_source is None:
            notes.append(f"'{name}' has no source in '{source}': csim skipped for it")
        items.append(ItemPaths(name, generated_items[name], reference_items[name], item_source))
    if not items:
        raise MediaError(f"no item names are shared by '{generated}' and '{reference}'; items are paired by name")
    return items, notes


def read_first_frame(path: Path) -> np.ndarray:
    """An image file, or the first frame of a video file or frame folder, as ``(H, W, 3)`` uint8."""
    if path.is_file() and is_image_file(path):
        return read_image_uint8(path)
    return next(iter(open_video(path)))


def evaluate_item(scorer: FrameScorer, item: ItemPaths, progress: bool = True) -> ItemResult:
    """Compare one generated video with its reference frame by frame (the first min(n, m) frames)."""
    result = ItemResult.empty(item.name, scorer.metrics)
    generated, reference = open_video(item.generated), open_video(item.reference)
    if generated.num_frames != reference.num_frames:
        result.notes.append(f"frame counts differ (generated {generated.num_frames}, reference "
                            f"{reference.num_frames}): compared the first {_min_count(generated, reference)}")
    if generated.size != reference.size:
        result.notes.append(f"reference resized from {reference.size[0]}x{reference.size[1]} to the generated "
                            f"{generated.size[0]}x{generated.size[1]}")
    if "csim" in scorer.metrics and not scorer.set_source(read_first_frame(item.source) if item.source else None,
                                                          key=str(item.source)):
        result.notes.append("no source face (no source, or no face in it): csim skipped")
    shape = (generated.size[1], generated.size[0])
    pairs = ((frame, fit_frame(real, shape)) for frame, real in zip(generated, reference))
    return score_stream(scorer, result, pairs, _min_count(generated, reference), progress)


def _min_count(first: Any, second: Any) -> Optional[int]:
    counts = [count for count in (first.num_frames, second.num_frames) if count is not None]
    return min(counts) if counts else None


def evaluate_files(scorer: FrameScorer, generated: str | os.PathLike, reference: str | os.PathLike,
                   source: Optional[str | os.PathLike] = None, progress: bool = True,
                   share: Share = Share()) -> Optional[EvaluationReport]:
    """Evaluate generated videos against references (and a source); see :func:`pair_items` for the layouts.
    ``share``: this process's part of the items (:class:`Share`); None when another process writes the report.
    Kept items belong to these inputs only: a changed file under them (size or time) makes the folder refused."""
    items, notes = pair_items(generated, reference, source)
    report = EvaluationReport("files", scorer.metrics, scorer.backends, notes=notes, settings={
        "generated": os.fspath(generated), "reference": os.fspath(reference),
        "source": None if source is None else os.fspath(source), **scorer.settings()})
    kept = {**report.settings, "inputs": files_fingerprint(items)} if share.items_dir is not None else {}
    outcomes = run_items(len(items), lambda index: evaluate_item(scorer, items[index], progress), kept, share,
                         "items", progress and len(items) > 1)
    if outcomes is None:
        return None
    report.items = list(outcomes)
    return report


def files_fingerprint(items: Iterable[ItemPaths]) -> str:
    """SHA-256 of the name, size and modification time of every file the items read (generated, reference and
    source; each file, or each file in a frame folder)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted({path for item in items for path in (item.generated, item.reference, item.source) if path}):
        files = sorted(child for child in path.rglob("*") if child.is_file()) if path.is_dir() else [path]
        for file in files:
            stat = file.stat()
            digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


# Protocol 2: reconstruction from a checkpoint.

def _tapped_stream(frames: Iterable[tuple[np.ndarray, np.ndarray]], pending: deque) -> Iterator[np.ndarray]:
    """Yield the model input of each ``(model_input, real_uint8)`` pair and remember the real frame."""
    for model_input, real in frames:
        pending.append(real)
        yield model_input


def animate_and_score(pipeline: "DaGANPipeline", scorer: FrameScorer, result: ItemResult,
                      frames: Iterable[tuple[np.ndarray, np.ndarray]], total: Optional[int], writer: Any = None,
                      progress: bool = True, **animate_options: Any) -> ItemResult:
    """Animate the first frame with all frames (``(model_input float, real uint8)`` pairs) and score each output
    against its real frame; generated frames go to ``writer`` when given."""
    frames = iter(frames)
    first_input, first_real = next(frames)
    if not scorer.set_source(first_real, key=("first frame", result.name)) and "csim" in scorer.metrics:
        result.notes.append("no face in the first frame (the source): csim skipped")
    pending: deque = deque()
    stream = _tapped_stream(itertools.chain([(first_input, first_real)], frames), pending)

    def generated_pairs() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for animated in pipeline.animate(first_input, stream, **animate_options):
            if writer is not None:
                writer.write(animated.frame)
            yield animated.frame, pending.popleft()

    return score_stream(scorer, result, generated_pairs(), total, progress)


def evaluate_reconstruction(pipeline: "DaGANPipeline", scorer: FrameScorer, dataset_root: str | os.PathLike,
                            num_videos: Optional[int] = None, output_dir: Optional[str | os.PathLike] = None,
                            save_videos: bool = False, progress: bool = True,
                            share: Share = Share()) -> Optional[EvaluationReport]:
    """FOMM's reconstruction protocol on ``dataset_root/test/<video>`` (a flat folder of videos works too).
    ``share``: this process's part of the videos (:class:`Share`); None when another process writes the report.

    Each video is animated from its own first frame with absolute keypoints (``relative=False``); frames are
    resized to the model's resolution (anti-aliased, as in training) and each output is compared with the real
    frame. ``save_videos`` writes the outputs to ``output_dir/generated/<video>.mp4``.
    """
    from dagan.data.frames import VideoStore, resize_frame
    from dagan.io import VideoWriter, probe

    store = VideoStore(dataset_root, "test", frame_shape=pipeline.image_size)
    report = EvaluationReport("reconstruction", scorer.metrics, scorer.backends, settings={
        "dataset": os.fspath(dataset_root), "split_dir": os.fspath(store.split_dir), "num_videos": num_videos,
        "image_size": list(pipeline.image_size), "relative": False, "adapt_scale": False,
        "source": "first frame of each video", **scorer.settings()})
    items = store.items[:num_videos] if num_videos else store.items

    def evaluate(index: int) -> "ItemResult | str":
        item = items[index]
        try:
            clip = store.open_clip(index)
        except MediaError as error:
            return str(error)
        result = ItemResult.empty(Path(item.name).stem if item.kind == "video" else item.name, scorer.metrics)
        frames = _clip_frames(clip, resize_frame)
        with contextlib.ExitStack() as stack:
            writer = None
            if save_videos and output_dir is not None:
                fps = probe(item.path).fps if item.kind == "video" else DEFAULT_FPS
                path = Path(output_dir) / "generated" / f"{result.name}.mp4"
                path.parent.mkdir(parents=True, exist_ok=True)
                writer = stack.enter_context(VideoWriter(path, fps, protected_paths=[item.path]))
            return animate_and_score(pipeline, scorer, result, frames, clip.num_frames, writer, progress,
                                     relative=False, adapt_scale=False)

    outcomes = run_items(len(items), evaluate, report.settings, share, "videos", progress)
    if outcomes is None:
        return None
    report.items = [outcome for outcome in outcomes if isinstance(outcome, ItemResult)]
    skipped = [f"'{items[index].name}' skipped: {outcome}" for index, outcome in enumerate(outcomes)
               if isinstance(outcome, str)]
    report.notes += list(dict.fromkeys(skipped + [f"'{name}' skipped: {reason}" for name, reason in store.skipped]))
    return report


def _clip_frames(clip: Any, resize_frame: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(model input (H, W, 3) float32 in [0, 1], the same frame as uint8)`` for every frame of a clip, lazily."""
    for index in range(clip.num_frames):
        model_input = resize_frame(clip.read_frame(index), clip.frame_shape)
        yield model_input, to_uint8(model_input)


# Protocol 3: same- and cross-identity frame pairs.

@dataclass(frozen=True)
class FrameRef:
    """One frame named in the pairs CSV: an image file (``index`` None) or frame ``index`` of a video file or frame
    folder. ``text`` is the CSV cell."""

    path: Path
    index: Optional[int]
    text: str


@dataclass(frozen=True)
class FramePair:
    """One CSV row (``row`` 1 is the first after the header): source and driving frames, the frame anchoring
    relative motion (cross-identity pairs) and the mode (:data:`SAME` or :data:`CROSS`)."""

    row: int
    source: FrameRef
    driving: FrameRef
    anchor: Optional[FrameRef]
    mode: str


_MODES = {"same": SAME, "same-identity": SAME, "cross": CROSS, "cross-identity": CROSS}


def parse_frame_ref(text: str, base: Path, row: int, column: str) -> FrameRef:
    """``path/to/image.png`` or ``path/to/video.mp4:INDEX`` / ``path/to/frame_folder:INDEX`` (0-based), relative
    to ``base`` unless absolute."""
    text = text.strip()
    direct = base / text
    if direct.is_file() and is_image_file(direct):
        return FrameRef(direct, None, text)
    match = re.fullmatch(r"(.+):(\d+)", text)
    if match is not None and (base / match.group(1)).exists():
        return FrameRef(base / match.group(1), int(match.group(2)), text)
    raise ValueError(f"pairs CSV row {row}, column '{column}': {text!r} is neither an image file nor "
                     f"VIDEO:INDEX with an existing video file or frame folder (paths are relative to '{base}')")


def read_pairs(csv_path: str | os.PathLike, root: Optional[str | os.PathLike] = None) -> list[FramePair]:
    """Read a pairs CSV (a header row, then one pair per row).

    Columns: ``source`` and ``driving`` (required), ``driving_initial`` and ``mode`` (optional). Each frame is an
    image path or ``VIDEO:INDEX`` (a video file or frame folder and a 0-based frame index); relative paths are
    resolved against ``root`` (``--dataset``) or else the CSV's folder. ``mode`` is ``same`` or ``cross``; when
    empty, a pair is ``same`` if source and driving come from the same video, else ``cross``.
    ``driving_initial`` anchors relative motion (cross-identity); by default frame 0 of the driving video.
    """
    csv_path = Path(csv_path)
    base = Path(root) if root is not None else csv_path.parent
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"source", "driving"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"pairs CSV '{csv_path}' lacks the column(s) {', '.join(sorted(missing))}; "
                             "its header must be source,driving[,driving_initial][,mode]")
        pairs = [_read_pair(line, base, row) for row, line in enumerate(reader, start=1)]
    if not pairs:
        raise ValueError(f"pairs CSV '{csv_path}' has no rows")
    return pairs


def _read_pair(line: dict[str, str], base: Path, row: int) -> FramePair:
    source = parse_frame_ref(line["source"] or "", base, row, "source")
    driving = parse_frame_ref(line["driving"] or "", base, row, "driving")
    mode_text = (line.get("mode") or "").strip().lower()
    if mode_text and mode_text not in _MODES:
        raise ValueError(f"pairs CSV row {row}: mode must be same or cross, got {mode_text!r}")
    same_video = source.index is not None and source.path == driving.path
    mode = _MODES[mode_text] if mode_text else (SAME if same_video else CROSS)
    anchor_text = (line.get("driving_initial") or "").strip()
    anchor = parse_frame_ref(anchor_text, base, row, "driving_initial") if anchor_text else None
    if mode == CROSS and anchor is None:
        if driving.index is None:
            raise ValueError(f"pairs CSV row {row}: the cross-identity driving frame {driving.text!r} is an image, "
                             "so relative motion has no anchor; add a driving_initial column (e.g. VIDEO:0)")
        anchor = FrameRef(driving.path, 0, driving.text.rsplit(":", 1)[0] + ":0")
    return FramePair(row, source, driving, anchor, mode)


class FrameReader:
    """Read the frames named by :class:`FrameRef` as ``(H, W, 3)`` uint8, keeping a few decoded videos."""

    def __init__(self, cached_videos: int = 4) -> None:
        self._decode = functools.lru_cache(maxsize=cached_videos)(lambda path: open_video(path).read_all())

    def read(self, ref: FrameRef) -> np.ndarray:
        if ref.index is None:
            return read_image_uint8(ref.path)
        if ref.path.is_dir():
            from dagan.data.frames import list_frame_files

            files = list_frame_files(ref.path)
            frame = read_image_uint8(files[ref.index]) if ref.index < len(files) else None
            count = len(files)
        else:
            frames = self._decode(ref.path)
            frame = frames[ref.index] if ref.index < len(frames) else None
            count = len(frames)
        if frame is None:
            raise MediaError(f"'{ref.text}': frame {ref.index} is out of range ('{ref.path}' has {count} frames)")
        return frame


def evaluate_pairs(pipeline: "DaGANPipeline", scorer: FrameScorer, pairs_csv: str | os.PathLike,
                   root: Optional[str | os.PathLike] = None, output_dir: Optional[str | os.PathLike] = None,
                   save_frames: bool = False, progress: bool = True,
                   share: Share = Share()) -> Optional[EvaluationReport]:
    """DaGAN's same-/cross-identity evaluation on the frame pairs of a CSV (format: :func:`read_pairs`).
    ``share``: this process's part of the pairs (:class:`Share`); None when another process writes the report.

    Same-identity: absolute keypoints, every chosen metric against the driving frame. Cross-identity: relative
    motion with scale adaptation anchored at ``driving_initial``; only metrics without ground truth (AKD, AED,
    PRMSE against the driving frame, CSIM against the source). ``save_frames`` writes each output to
    ``output_dir/generated/pair<row>.png`` (``pair00001.png`` for the first row).
    """
    from dagan.io import write_png

    pairs, reader = read_pairs(pairs_csv, root), FrameReader()
    report = EvaluationReport("pairs", scorer.metrics, scorer.backends, settings={
        "pairs": os.fspath(pairs_csv), "root": None if root is None else os.fspath(root),
        "image_size": list(pipeline.image_size), SAME: {"relative": False, "adapt_scale": False},
        CROSS: {"relative": True, "adapt_scale": True}, **scorer.settings()})
    cross_metrics = [name for name in scorer.metrics if not METRICS[name].ground_truth]

    def evaluate(index: int) -> ItemResult:
        pair = pairs[index]
        size = pipeline.image_size
        source, driving = (resize_to_model(reader.read(ref), size) for ref in (pair.source, pair.driving))
        cross = pair.mode == CROSS
        anchor = resize_to_model(reader.read(pair.anchor), size) if cross and pair.anchor else None
        frame = next(iter(pipeline.animate(source, [driving], relative=cross, adapt_scale=cross,
                                           driving_initial=anchor))).frame
        result = ItemResult.empty(f"pair{pair.row:05d}", cross_metrics if cross else scorer.metrics, pair.mode)
        result.columns = {"source": pair.source.text, "driving": pair.driving.text,
                          "driving_initial": pair.anchor.text if cross and pair.anchor else ""}
        if {"csim"} & set(result.totals) and not scorer.set_source(to_uint8(source), key=pair.source.text):
            result.notes.append("no face in the source")
        result.add(scorer.score(frame, to_uint8(driving), list(result.totals)))
        if save_frames and output_dir is not None:
            (Path(output_dir) / "generated").mkdir(parents=True, exist_ok=True)
            write_png(Path(output_dir) / "generated" / f"{result.name}.png", frame)
        return result

    outcomes = run_items(len(pairs), evaluate, report.settings, share, "pairs", progress)
    if outcomes is None:
        return None
    report.items = list(outcomes)
    return report
