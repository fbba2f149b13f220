"""Face crops for training data and demo inputs: face tubes in videos, one face box in an image.

This is the reference ``crop-video.py`` (FOMM / DaGAN) turned into a library that also *writes* the
clips (with their audio) instead of only printing ffmpeg commands, plus a single-image crop (dataset preparation,
which cuts raw videos into these clips, is :mod:`dagan.data.prepare`).

Face tubes (reference, ``crop-video.py``):

1. Detect faces on every frame (:meth:`dagan.faces.FaceAnalyzer.detect`; frames whose longer side
   exceeds ``detect_max_side`` = 640 px are shrunk for detection and the boxes scaled back).
2. A tube survives while the IoU between its **initial** box and some detection of the current frame
   exceeds ``iou_with_initial`` (0.25). Each detection joins the surviving tube whose initial box it
   overlaps most (above the threshold); the tube's box is the union of all its detections. A detection
   that joins no tube starts a new one. A frame without a matching detection ends the tube (a cut, the
   face turning away, or a missed detection: no gap is bridged, as in the reference).
3. A tube that ends, or is still open at the end of the video, is kept when it spans more than
   ``min_frames`` frames. Its union box is enlarged by ``increase`` per side with the aspect-preserving
   rule of :func:`enlarge_box` (a tall or wide box becomes about square) and clamped to the frame.

Each kept tube is one clip (:class:`CropPlan`): several faces give one clip each, a cut gives one clip
per shot. Frames ``[start_frame, end_frame)`` are cropped to the box and resized to ``image_shape``.

Differences from the reference: the IoU is computed on continuous coordinates (the reference adds 1
pixel to each side length); ``end_frame`` is exclusive and includes the tube's last detected frame
(the reference's ``-t (last - first) / fps`` drops it), and "more than ``min_frames``" counts the
frames of the tube, ``last - first + 1``; the crop is resized with Pillow's bicubic filter (ffmpeg's
``scale`` default is bicubic too).

Conventions: frames are ``(H, W, 3)`` uint8 RGB; boxes are pixels ``(x0, y0, x1, y1)`` with x to the
right and y down; ``image_shape`` is ``(height, width)`` of the output; times are seconds.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np
from PIL import Image
from tqdm import tqdm

from dagan.faces import Box, FaceAnalyzer, NoFaceFound, get_face_analyzer
from dagan.io import (
    FrameDirectoryWriter,
    MediaError,
    VideoSource,
    VideoWriter,
    ffmpeg_executable,
    is_image_file,
    open_video,
)

__all__ = [
    "CropPlan",
    "CropSettings",
    "NoFaceFound",
    "TubesTooShort",
    "Tube",
    "TubeTracker",
    "box_iou",
    "box_union",
    "enlarge_box",
    "track_tubes",
    "plan_crops",
    "detect_faces",
    "plan_video",
    "crop_frame",
    "write_clips",
    "crop_video",
    "image_crop_box",
    "crop_image",
    "is_image_path",
    "parse_image_shape",
    "add_crop_arguments",
    "crop_settings",
    "build_analyzer",
]

PathLike = Union[str, os.PathLike]
PixelBox = tuple[int, int, int, int]  # (x0, y0, x1, y1) integer pixels, x1/y1 exclusive


class TubesTooShort(NoFaceFound):
    """Faces were found, but no face tube lasts more than ``min_frames`` frames."""


@dataclass(frozen=True)
class CropSettings:
    """The knobs of the crop (reference ``crop-video.py`` defaults).

    image_shape: ``(height, width)`` of the output frames in pixels.
    iou_with_initial: a tube continues while a detection overlaps its first box by more than this IoU.
    min_frames: tubes spanning this many frames or fewer are dropped.
    increase: enlargement of the union box per side, as a fraction of its width/height.
    detect_max_side: frames whose longer side exceeds this (px) are shrunk for detection only.
    """

    image_shape: tuple[int, int] = (256, 256)
    iou_with_initial: float = 0.25
    min_frames: int = 150
    increase: float = 0.1
    detect_max_side: int = 640

    def __post_init__(self) -> None:
        if len(self.image_shape) != 2 or min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be two positive sizes (height, width), got {self.image_shape}")
        if not 0.0 <= self.iou_with_initial < 1.0:
            raise ValueError(f"iou_with_initial must be in [0, 1), got {self.iou_with_initial}")
        if self.min_frames < 0:
            raise ValueError(f"min_frames must be >= 0, got {self.min_frames}")
        if self.increase < 0:
            raise ValueError(f"increase must be >= 0, got {self.increase}")


def parse_image_shape(text: str) -> tuple[int, int]:
    """Parse a command-line size: ``"256,256"`` -> ``(256, 256)`` = (height, width)."""
    try:
        height, width = (int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"expected HEIGHT,WIDTH such as 256,256, got {text!r}") from None
    if min(height, width) < 1:
        raise ValueError(f"sizes must be positive, got {text!r}")
    return height, width


def add_crop_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options of :class:`CropSettings` and the face backend, shared by the crop scripts."""
    defaults = CropSettings()
    parser.add_argument("--image_shape", type=parse_image_shape, default=defaults.image_shape, metavar="H,W",
                        help="output HEIGHT,WIDTH (256,256)")
    parser.add_argument("--iou_with_initial", type=float, default=defaults.iou_with_initial,
                        help="a tube continues while a detection overlaps its first box by more than this IoU")
    parser.add_argument("--min_frames", type=int, default=defaults.min_frames,
                        help="drop face tubes of this many frames or fewer (150: ~6 s at 25 fps)")
    parser.add_argument("--increase", type=float, default=defaults.increase,
                        help="box enlargement per side (fraction)")
    parser.add_argument("--backend", choices=("auto", "dlib", "face_alignment"), default="auto",
                        help="face detector backend (auto: dlib if installed, else face_alignment)")


def crop_settings(args: argparse.Namespace) -> CropSettings:
    """The :class:`CropSettings` of options added by :func:`add_crop_arguments`."""
    return CropSettings(image_shape=args.image_shape, iou_with_initial=args.iou_with_initial,
                        min_frames=args.min_frames, increase=args.increase)


# Box geometry.


def box_iou(first: Box, second: Box) -> float:
    """Intersection over union of two boxes (continuous pixel coordinates), in [0, 1]."""
    width = min(first.x1, second.x1) - max(first.x0, second.x0)
    height = min(first.y1, second.y1) - max(first.y0, second.y0)
    intersection = max(width, 0.0) * max(height, 0.0)
    union = first.area + second.area - intersection
    return intersection / union if union > 0 else 0.0


def box_union(first: Box, second: Box) -> Box:
    """The smallest box holding both (score of ``first`` kept)."""
    return Box(min(first.x0, second.x0), min(first.y0, second.y0),
               max(first.x1, second.x1), max(first.y1, second.y1), first.score)


def _enlarged(box: Box, increase: float) -> tuple[float, float, float, float]:
    """The reference's aspect-preserving enlargement, unclamped, as floats ``(x0, y0, x1, y1)``.

    ``width_inc = max(increase, ((1 + 2 increase) h - w) / (2 w))`` and the mirror rule for the height:
    each side grows by at least ``increase`` of its length, and the shorter side grows up to
    ``(1 + 2 increase)`` times the longer one, so the result is about square.
    """
    width, height = box.width, box.height
    if width <= 0 or height <= 0:
        raise ValueError(f"cannot enlarge an empty box {box}")
    width_increase = max(increase, ((1 + 2 * increase) * height - width) / (2 * width))
    height_increase = max(increase, ((1 + 2 * increase) * width - height) / (2 * height))
    return (box.x0 - width_increase * width, box.y0 - height_increase * height,
            box.x1 + width_increase * width, box.y1 + height_increase * height)


def enlarge_box(box: Box, increase: float, frame_size: tuple[int, int]) -> PixelBox:
    """Enlarge a tube box as the reference does and clamp it to the frame.

    box: the union of a tube's detections (pixels). increase: fraction per side (0.1).
    frame_size: ``(width, height)`` of the video in pixels.
    Returns integer ``(x0, y0, x1, y1)`` (truncated with ``int`` as the reference does, then clamped to
    ``[0, width] x [0, height]``); the crop is ``frame[y0:y1, x0:x1]``.
    """
    width, height = frame_size
    x0, y0, x1, y1 = (int(value) for value in _enlarged(box, increase))
    return max(0, x0), max(0, y0), min(x1, width), min(y1, height)


# Tubes.


@dataclass
class Tube:
    """One face followed over consecutive frames.

    initial: the first detection (the IoU test always compares with it). box: union of all detections.
    start: first frame index. last: last frame index with a matching detection (inclusive).
    """

    initial: Box
    box: Box
    start: int
    last: int

    @property
    def num_frames(self) -> int:
        """Frames spanned, ``last - start + 1``."""
        return self.last - self.start + 1


class TubeTracker:
    """The reference's tube bookkeeping, fed one frame's detections at a time.

    ``update(index, boxes)`` returns the tubes that ended at this frame; ``finish()`` returns the tubes
    still open at the end of the video. Pure logic: no detector, no I/O.
    """

    def __init__(self, iou_with_initial: float = 0.25) -> None:
        self.iou_with_initial = float(iou_with_initial)
        self.open: list[Tube] = []

    def update(self, index: int, boxes: Sequence[Box]) -> list[Tube]:
        """Process frame ``index`` with its detections; returns the tubes that ended (no match here)."""
        surviving, ended = [], []
        for tube in self.open:
            best = max((box_iou(tube.initial, box) for box in boxes), default=0.0)
            (surviving if best > self.iou_with_initial else ended).append(tube)
        self.open = surviving
        for box in boxes:
            tube = self._best_match(box)
            if tube is None:
                self.open.append(Tube(initial=box, box=box, start=index, last=index))
            else:
                tube.box, tube.last = box_union(tube.box, box), index
        return ended

    def finish(self) -> list[Tube]:
        """Close and return the tubes still open (the video ended)."""
        ended, self.open = self.open, []
        return ended

    def _best_match(self, box: Box) -> Optional[Tube]:
        best_tube, best_iou = None, self.iou_with_initial
        for tube in self.open:
            iou = box_iou(tube.initial, box)
            if iou > best_iou:
                best_tube, best_iou = tube, iou
        return best_tube


def track_tubes(boxes_per_frame: Iterable[Sequence[Box]], iou_with_initial: float = 0.25) -> list[Tube]:
    """All face tubes of a video, short ones included, ordered by start frame.

    boxes_per_frame: the detections of frame 0, 1, ... (an empty sequence for a frame without faces).
    """
    tracker = TubeTracker(iou_with_initial)
    tubes: list[Tube] = []
    for index, boxes in enumerate(boxes_per_frame):
        tubes += tracker.update(index, boxes)
    tubes += tracker.finish()
    return sorted(tubes, key=lambda tube: (tube.start, tube.box.x0))


# Plans.


@dataclass(frozen=True)
class CropPlan:
    """One output clip: frames ``[start_frame, end_frame)`` cropped to ``box`` and resized.

    box: integer ``(x0, y0, x1, y1)`` in the source frame (x1/y1 exclusive). fps: source frame rate.
    image_shape: ``(height, width)`` of the output frames.
    """

    start_frame: int
    end_frame: int
    box: PixelBox
    fps: float
    image_shape: tuple[int, int] = (256, 256)

    @property
    def num_frames(self) -> int:
        return self.end_frame - self.start_frame

    @property
    def start_seconds(self) -> float:
        return self.start_frame / self.fps

    @property
    def duration_seconds(self) -> float:
        return self.num_frames / self.fps

    def ffmpeg_command(self, inp: PathLike, out: PathLike = "crop.mp4") -> str:
        """The equivalent command, in the reference's format (``crop=w:h:x:y, scale=W:H``)."""
        x0, y0, x1, y1 = self.box
        height, width = self.image_shape
        return (f"ffmpeg -i {shlex.quote(os.fspath(inp))} -ss {self.start_seconds:.6g} "
                f"-t {self.duration_seconds:.6g} -filter:v \"crop={x1 - x0}:{y1 - y0}:{x0}:{y0}, "
                f"scale={width}:{height}\" {shlex.quote(os.fspath(out))}")


def plan_crops(tubes: Iterable[Tube], fps: float, frame_size: tuple[int, int],
               settings: CropSettings = CropSettings()) -> list[CropPlan]:
    """Keep the tubes longer than ``settings.min_frames`` and turn each into a :class:`CropPlan`.

    fps: frames per second of the video. frame_size: ``(width, height)`` in pixels.
    """
    return [
        CropPlan(start_frame=tube.start, end_frame=tube.last + 1,
                 box=enlarge_box(tube.box, settings.increase, frame_size), fps=float(fps),
                 image_shape=tuple(settings.image_shape))
        for tube in tubes
        if tube.num_frames > settings.min_frames
    ]


# Videos.


def detect_faces(video: VideoSource, analyzer: FaceAnalyzer, progress: bool = True) -> Iterator[list[Box]]:
    """Yield the detections of each frame of ``video`` (boxes in full-frame pixels), with a tqdm bar."""
    frames = tqdm(video, total=video.num_frames, desc="detecting faces", unit="frame", disable=not progress,
                  leave=False)
    for frame in frames:
        yield analyzer.detect(frame)


def plan_video(video: VideoSource, analyzer: FaceAnalyzer, settings: CropSettings = CropSettings(),
               progress: bool = True) -> list[CropPlan]:
    """Detect, track and plan the clips of one video.

    Raises:
        NoFaceFound: no face in any frame (message ``no face found in <path>; ...``).
        TubesTooShort: faces found, but no tube spans more than ``settings.min_frames`` frames.
    """
    tubes = track_tubes(detect_faces(video, analyzer, progress), settings.iou_with_initial)
    if not tubes:
        raise NoFaceFound(
            f"no face found in {video.path}; the detector ({analyzer.backend}/{analyzer.detector}) needs a "
            "roughly frontal face at least ~80 px tall after shrinking to "
            f"{analyzer.detect_max_side} px; try --backend face_alignment or a closer shot"
        )
    plans = plan_crops(tubes, video.fps, video.size, settings)
    if not plans:
        longest = max(tube.num_frames for tube in tubes)
        raise TubesTooShort(
            f"no face tube in {video.path} lasts more than min_frames={settings.min_frames} frames "
            f"(found {len(tubes)} tube(s), the longest {longest} frames = {longest / video.fps:.2f} s); "
            "lower --min_frames"
        )
    return plans


def crop_frame(frame: np.ndarray, box: PixelBox, image_shape: tuple[int, int]) -> np.ndarray:
    """``frame[y0:y1, x0:x1]`` resized to ``image_shape`` = (height, width): (H, W, 3) uint8 -> uint8."""
    x0, y0, x1, y1 = box
    height, width = image_shape
    crop = Image.fromarray(np.ascontiguousarray(frame[y0:y1, x0:x1]))
    return np.asarray(crop.resize((width, height), Image.Resampling.BICUBIC))


def cut_audio(source: PathLike, plan: CropPlan, destination: PathLike) -> Path:
    """Write the audio of ``source`` over the plan's time range to ``destination`` (16-bit PCM WAV).

    The range is ``[start_frame / fps, end_frame / fps)`` seconds (ffmpeg's accurate input seeking).
    """
    command = [ffmpeg_executable(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
               "-ss", f"{plan.start_seconds:.6f}", "-t", f"{plan.duration_seconds:.6f}",
               "-i", "file:" + os.path.abspath(source), "-map", "0:a:0", "-vn", "-c:a", "pcm_s16le",
               "file:" + os.path.abspath(destination)]
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True)
    if result.returncode != 0:
        reason = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise MediaError(f"could not cut the audio of '{source}' ({reason[-1] if reason else 'ffmpeg failed'})")
    return Path(destination)


ClipWriter = Union[VideoWriter, FrameDirectoryWriter]


def _open_clip_writer(path: Path, plan: CropPlan, audio: Optional[Path], source: Path) -> ClipWriter:
    """An MP4 writer for a ``.mp4`` path, else a PNG frame-folder writer (no audio)."""
    if path.suffix.lower() == ".mp4":
        return VideoWriter(path, plan.fps, audio_from=audio, protected_paths=[source])
    return FrameDirectoryWriter(path, protected_paths=[source])


def write_clips(video: VideoSource, plans: Sequence[CropPlan], outputs: Sequence[PathLike],
                keep_audio: bool = True, progress: bool = True) -> list[Path]:
    """Write every plan's clip in one decoding pass over ``video``.

    outputs: one path per plan: ``*.mp4`` (H.264, with the audio of the clip's time range when
    ``keep_audio`` and the source has audio) or any other path for a folder of PNG frames.
    Each output appears atomically (writers stage under a temporary name); on an error no partial
    clip is left. Returns the written paths.
    """
    if len(plans) != len(outputs):
        raise ValueError(f"got {len(plans)} plans but {len(outputs)} output paths")
    outputs = [Path(path) for path in outputs]
    end = max((plan.end_frame for plan in plans), default=0)
    with tempfile.TemporaryDirectory(prefix="dagan-crop-") as scratch:
        audio = [cut_audio(video.path, plan, Path(scratch) / f"{k}.wav")
                 if keep_audio and video.has_audio and outputs[k].suffix.lower() == ".mp4" else None
                 for k, plan in enumerate(plans)]
        writers: dict[int, ClipWriter] = {}
        frames = iter(video)
        try:
            for index, frame in enumerate(tqdm(frames, total=end, desc="writing clips", unit="frame",
                                               disable=not progress, leave=False)):
                if index >= end:
                    break
                _write_frame(index, frame, plans, outputs, audio, writers, video.path)
            for writer in writers.values():  # the video was shorter than planned: keep what we have
                writer.close()
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        finally:
            getattr(frames, "close", lambda: None)()
    return outputs


def _write_frame(index: int, frame: np.ndarray, plans: Sequence[CropPlan], outputs: Sequence[Path],
                 audio: Sequence[Optional[Path]], writers: dict[int, ClipWriter], source: Path) -> None:
    """Send frame ``index`` to every clip that covers it; open and close writers at clip bounds."""
    for k, plan in enumerate(plans):
        if not plan.start_frame <= index < plan.end_frame:
            continue
        if k not in writers:
            writers[k] = _open_clip_writer(outputs[k], plan, audio[k], source)
        writers[k].write(crop_frame(frame, plan.box, plan.image_shape))
        if index == plan.end_frame - 1:
            writers.pop(k).close()


def crop_video(inp: PathLike, out_dir: PathLike, analyzer: FaceAnalyzer,
               settings: CropSettings = CropSettings(), keep_audio: bool = True, write: bool = True,
               progress: bool = True) -> tuple[list[CropPlan], list[Path]]:
    """Crop every face tube of a video into ``out_dir/<stem>_<k>.mp4`` (k = 0, 1, ... by start frame).

    write: False only plans (for printing the ffmpeg commands). Returns ``(plans, output paths)``.
    Raises NoFaceFound / TubesTooShort (see :func:`plan_video`) and MediaError.
    """
    video = open_video(inp)
    plans = plan_video(video, analyzer, settings, progress)
    stem = Path(inp).stem
    outputs = [Path(out_dir) / f"{stem}_{k}.mp4" for k in range(len(plans))]
    if write:
        write_clips(video, plans, outputs, keep_audio=keep_audio, progress=progress)
    return plans, outputs


# Images.


def is_image_path(path: PathLike) -> bool:
    """True for a file with an image suffix (png, jpg, jpeg, bmp, webp)."""
    path = Path(path)
    return path.is_file() and is_image_file(path)


def image_crop_box(box: Box, image_size: tuple[int, int], increase: float = 0.1,
                   image_shape: tuple[int, int] = (256, 256)) -> PixelBox:
    """The crop of a single image around one face: enlarged as a tube box, with the output's aspect.

    The box is enlarged with the reference rule (:func:`enlarge_box`, unclamped), grown to the aspect
    ratio of ``image_shape`` = (height, width) around its centre, shrunk (keeping the aspect) if it is
    larger than the image, and shifted inside the image, so no resize distorts the face.
    image_size: ``(width, height)``. Returns integer ``(x0, y0, x1, y1)``.
    """
    image_width, image_height = image_size
    x0, y0, x1, y1 = _enlarged(box, increase)
    aspect = image_shape[1] / image_shape[0]  # width / height
    height = max(y1 - y0, (x1 - x0) / aspect)
    height = min(height, image_height, image_width / aspect)
    width = height * aspect
    center_x, center_y = (x0 + x1) / 2, (y0 + y1) / 2
    left = min(max(center_x - width / 2, 0.0), image_width - width)
    top = min(max(center_y - height / 2, 0.0), image_height - height)
    return round(left), round(top), round(left + width), round(top + height)


def crop_image(image: np.ndarray, analyzer: FaceAnalyzer, image_shape: tuple[int, int] = (256, 256),
               increase: float = 0.1, source: str = "the image") -> np.ndarray:
    """Crop a single source image around its largest face.

    image: ``(H, W, 3)`` uint8 (or float in [0, 1]). Returns ``image_shape`` = (height, width) ``(h, w, 3)``
    uint8. Raises NoFaceFound (``no face found in <source>; ...``) when the image has no face.
    """
    from dagan.faces import as_uint8_rgb

    image = as_uint8_rgb(image)
    boxes = analyzer.detect(image)
    if not boxes:
        raise NoFaceFound(f"no face found in {source}; use a photo with a roughly frontal face at least "
                          "~80 px tall (after shrinking to 640 px), or try --backend face_alignment")
    height, width = image.shape[:2]
    return crop_frame(image, image_crop_box(boxes[0], (width, height), increase, image_shape), image_shape)


def build_analyzer(backend: str = "auto", cpu: bool = True, detect_max_side: int = 640) -> FaceAnalyzer:
    """The face analyzer for cropping. cpu=False uses CUDA for face_alignment when torch sees a GPU
    (dlib always runs on the CPU). Raises MissingFaceBackend with install instructions."""
    device = "cpu"
    if not cpu and backend != "dlib":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return get_face_analyzer(backend, device=device, detect_max_side=detect_max_side)
