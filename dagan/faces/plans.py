"""Crop plans: which faces of a picture to animate, and where the face is in each frame of a video.

- A picture (:func:`plan_picture_faces`): every face is detected, the chosen ones (``"largest"``, ``"all"`` or
  the N largest) each get a :class:`FacePlan` with its VoxCeleb-like :class:`~dagan.faces.alignment.CropTransform`.
  A picture that already is a face crop (the planned crop covers about the whole picture, as in VoxCeleb) is
  left as it is: its plan is a plain resize.
- A video (:func:`plan_video_crops`): ``"fixed"`` (driving default) detects the face on a few frames spread over
  the clip and keeps one crop, the median of theirs, for the whole clip (a jittering crop would add jittering
  motion); ``"track"`` detects every ``detect_every``-th frame, interpolates in between and smooths the crop
  parameters with a centred moving average. Detection never runs on every frame unless ``detect_every=1``.

Crops are :class:`~dagan.faces.alignment.CropBox` es (centre, side, angle): they average and interpolate.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

import numpy as np
from tqdm import tqdm

from dagan.faces.alignment import CropBox, CropTransform, Framing, crop_box_from_landmarks, resize_transform
from dagan.faces.detection import Box, FaceAnalyzer, NoFaceFound

__all__ = [
    "FacePlan",
    "VideoCrops",
    "SMALL_FACE_PX",
    "parse_face_selection",
    "plan_picture_faces",
    "plan_video_crops",
    "is_face_crop",
    "interpolated_and_smoothed",
]

SMALL_FACE_PX = 64  # faces whose detector box is narrower than this give poor results (warned about)
FACE_CROP_COVERAGE = 0.8  # a planned crop this large (side / shorter picture side) means "already a crop"
DEFAULT_SAMPLES = 12  # frames sampled over a clip for a fixed crop
FaceSelection = Union[str, int]  # "largest", "all" or a count


@dataclass(frozen=True)
class FacePlan:
    """One face to animate: its crop, detector box and landmarks (picture pixels; ``None`` for a whole-picture
    plan), and whether the picture was left as it is (already a face crop)."""

    transform: CropTransform
    box: Optional[Box]
    landmarks: Optional[np.ndarray]
    whole_picture: bool = False


def parse_face_selection(text: str) -> FaceSelection:
    """``--faces``: ``largest``, ``all`` or a positive count N (the N largest faces)."""
    if text in ("largest", "all"):
        return text
    try:
        count = int(text)
    except ValueError:
        raise ValueError(f"--faces must be largest, all or a number, got {text!r}") from None
    if count < 1:
        raise ValueError(f"--faces must be at least 1, got {count}")
    return count


def is_face_crop(picture_size: tuple[int, int], crop: CropBox) -> bool:
    """Whether a picture of ``(height, width)`` already is a face crop: about square and the planned crop
    about as large as the picture."""
    height, width = picture_size
    return 0.75 <= width / height <= 1.34 and crop.side >= FACE_CROP_COVERAGE * min(height, width)


def plan_picture_faces(picture: np.ndarray, analyzer: FaceAnalyzer, size: tuple[int, int],
                       framing: Framing = Framing(), faces: FaceSelection = "largest",
                       name: str = "the picture",
                       no_face_hint: str = "or --crop none to animate the whole picture as it is",
                       ) -> tuple[list[FacePlan], int]:
    """The faces of ``picture`` (H, W, 3) to animate, largest first, and how many faces were found.

    size: the model's (height, width). When nothing is found, or when more than the largest face is asked for,
    small faces are searched for too (dlib HOG upsampled once: faces from ~40 px, ~4x the time).
    Raises NoFaceFound naming ``name``, ending with ``no_face_hint`` (demo.py's ``--crop none``).
    Warns when a chosen face is smaller than :data:`SMALL_FACE_PX`.
    """
    boxes = analyzer.detect(picture)
    if not boxes or faces != "largest":  # every face asked for: small ones too
        boxes = _merged(boxes, _detect_upsampled(analyzer, picture))
    if not boxes:
        raise NoFaceFound(f"no face found in {name}; use a photo with a roughly frontal face, {no_face_hint}")
    count = len(boxes) if faces == "all" else 1 if faces == "largest" else min(int(faces), len(boxes))
    plans = []
    for box in boxes[:count]:
        if box.width < SMALL_FACE_PX:
            warnings.warn(f"the face at ({box.x0:.0f}, {box.y0:.0f}) in {name} is only {box.width:.0f} px wide; "
                          f"faces under {SMALL_FACE_PX} px give blurry results (use a larger photo)", stacklevel=2)
        landmarks = analyzer.landmarks(picture, box)
        crop = crop_box_from_landmarks(landmarks, framing)
        if len(boxes) == 1 and is_face_crop(picture.shape[:2], crop):
            plans.append(FacePlan(resize_transform(picture.shape[:2], size), box, landmarks, whole_picture=True))
        else:
            plans.append(FacePlan(crop.transform(size), box, landmarks))
    return plans, len(boxes)


def _merged(boxes: list[Box], more: list[Box]) -> list[Box]:
    """``boxes`` plus the boxes of ``more`` that overlap none of them, largest first."""
    from dagan.faces.tubes import box_iou

    extra = [box for box in more if all(box_iou(box, kept) < 0.3 for kept in boxes)]
    return sorted(boxes + extra, key=lambda box: box.area, reverse=True)


def _detect_upsampled(analyzer: FaceAnalyzer, picture: np.ndarray) -> list[Box]:
    """A second search for small faces: dlib's HOG upsampled once (finds faces from ~40 px; ~4x slower)."""
    if analyzer.backend != "dlib" or analyzer.upsample > 0:
        return []
    analyzer.upsample = 1
    try:
        return analyzer.detect(picture)
    finally:
        analyzer.upsample = 0


# Videos.

@dataclass(frozen=True)
class VideoCrops:
    """The crop of every frame of one video: ``boxes[t]`` for frame t (the last repeats past the end), or the
    whole frame (``boxes`` is None: the video already is a face crop)."""

    boxes: Optional[Sequence[CropBox]]
    frame_size: tuple[int, int]  # (height, width)

    def transform(self, index: int, size: tuple[int, int]) -> CropTransform:
        if self.boxes is None:
            return resize_transform(self.frame_size, size)
        return self.boxes[min(index, len(self.boxes) - 1)].transform(size)


def _largest_face_crop(frame: np.ndarray, analyzer: FaceAnalyzer, framing: Framing) -> Optional[CropBox]:
    boxes = analyzer.detect(frame)
    if not boxes:
        return None
    return crop_box_from_landmarks(analyzer.landmarks(frame, boxes[0]), framing)


def _inside_frame(crop: CropBox, frame_size: tuple[int, int]) -> CropBox:
    """An unrotated crop shrunk to fit the frame and shifted inside it (no repeated border pixels)."""
    height, width = frame_size
    side = min(crop.side, height, width)
    center_x = min(max(crop.center_x, side / 2 - 0.5), width - 0.5 - side / 2)
    center_y = min(max(crop.center_y, side / 2 - 0.5), height - 0.5 - side / 2)
    return CropBox(center_x, center_y, side, 0.0)


def plan_video_crops(frames: Iterable[np.ndarray], num_frames: Optional[int], frame_size: tuple[int, int],
                     analyzer: FaceAnalyzer, framing: Framing = Framing(rotate=False), mode: str = "fixed",
                     detect_every: int = 3, fps: float = 25.0, name: str = "the video",
                     samples: int = DEFAULT_SAMPLES) -> VideoCrops:
    """Plan the crops of a video (see the module docstring). frame_size: (height, width).

    mode: ``"fixed"`` (one crop, median over ``samples`` frames spread over the clip) or ``"track"``.
    Raises NoFaceFound when no sampled frame has a face.
    """
    if mode not in ("fixed", "track"):
        raise ValueError(f"the video crop must be fixed or track, got {mode!r}")
    if detect_every < 1:
        raise ValueError(f"detect_every must be >= 1, got {detect_every}")
    total = num_frames or 0
    stride = detect_every if mode == "track" else max(1, total // samples) if total else detect_every
    found, last = _detect_every(frames, num_frames, analyzer, framing, stride,
                                None if mode == "track" else stride * samples)
    if not found:
        raise NoFaceFound(f"no face found in the sampled frames of {name}; use a clip of one face seen roughly from "
                          "the front, or --driving_crop none")
    crop = CropBox(*np.median(np.array(list(found.values())), axis=0))
    if is_face_crop(frame_size, crop):  # the video already is a face crop (as VoxCeleb clips are)
        return VideoCrops(None, frame_size)
    if mode == "fixed":
        return VideoCrops([_inside_frame(crop, frame_size)], frame_size)
    boxes = interpolated_and_smoothed(found, last + 1, fps)
    if not framing.rotate:  # upright crops stay inside the frame (no repeated border pixels)
        boxes = [_inside_frame(box, frame_size) for box in boxes]
    return VideoCrops(boxes, frame_size)


def _detect_every(frames: Iterable[np.ndarray], num_frames: Optional[int], analyzer: FaceAnalyzer, framing: Framing,
                  stride: int, stop: Optional[int]) -> tuple[dict[int, CropBox], int]:
    """The largest face's crop on every ``stride``-th frame (frame index -> crop) and the last frame index read;
    reading ends at frame ``stop`` (the rest of the video is not decoded) or at the end."""
    found: dict[int, CropBox] = {}
    last = -1
    iterator = iter(frames)
    read = min(stop, num_frames) if stop is not None and num_frames else stop or num_frames
    progress = tqdm(total=-(-read // stride) if read else None, desc="finding faces", unit="frame", leave=False)
    try:  # the bar counts the frames searched for a face (every stride-th), not the frames decoded between them
        for index, frame in enumerate(iterator):
            if stop is not None and index >= stop:
                break
            last = index
            if index % stride == 0:
                crop = _largest_face_crop(frame, analyzer, framing)
                progress.update()
                if crop is not None:
                    found[index] = crop
    finally:
        progress.close()
        getattr(iterator, "close", lambda: None)()
    return found, last


def interpolated_and_smoothed(found: dict[int, CropBox], count: int, fps: float) -> list[CropBox]:
    """Crop parameters for frames 0..count-1: linear interpolation between detections (held at the ends), then a
    centred moving average over about half a second."""
    indices = np.array(sorted(found))
    values = np.array([found[index] for index in indices])  # (N, 4)
    values[:, 3] = np.unwrap(values[:, 3])
    frames = np.arange(count)
    series = np.stack([np.interp(frames, indices, values[:, k]) for k in range(4)], axis=1)  # (count, 4)
    window = max(1, int(round(fps / 2)) | 1)  # odd
    if window > 1 and count > 1:
        padded = np.pad(series, ((window // 2, window // 2), (0, 0)), mode="edge")
        kernel = np.ones(window) / window
        series = np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(4)], axis=1)
    return [CropBox(*row) for row in series]
