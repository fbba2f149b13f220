"""The VoxCeleb-like crop of one face: a similarity transform from the picture to the model's square input.

A crop is a :class:`CropTransform`: a ``(2, 3)`` affine matrix ``M`` mapping picture pixels to crop pixels,
``[u, v]^T = M [x, y, 1]^T`` (pixel centres, x right, y down, as everywhere in :mod:`dagan.faces`). For the
crops planned from landmarks ``M`` is a similarity (uniform scale, optional in-plane rotation, translation); a
picture that already is a face crop gets a plain resize. The paste-back (:mod:`dagan.faces.paste`) uses the
same matrix backwards.

Framing (:func:`crop_box_from_landmarks`), on the 68-point iBUG layout: with ``e`` the mean of the two eye centres,
``m`` the mean of the mouth corners, the face size is ``s = max(2 |eye_right - eye_left|, 1.8 |m - e|)`` (the
two terms agree for a frontal face; the larger one survives a profile or a tilt); the crop is a square of side
``side = crop_scale * s`` centred at ``(e + m) / 2 + crop_offset_y * side * d``, with ``d`` the face's own
downward axis (perpendicular to the eye line): a positive offset moves the crop towards the chin, so the face
sits higher in it; a negative one shows more hair. The defaults (``crop_scale`` 2.2, ``crop_offset_y`` -0.1)
give VoxCeleb's framing (checked against the bundled sample portrait, a VoxCeleb-style crop): the face about 45%
of the crop width, the whole hair and a little of the neck visible. The angle, when kept, is that of the eye line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = [
    "Framing",
    "CropTransform",
    "CropBox",
    "crop_box_from_landmarks",
    "crop_box_from_points",
    "resize_transform",
    "warp_to_crop",
    "face_size",
]

# iBUG 68-point index ranges (0-based): right eye of the subject 36-41, left eye 42-47, mouth corners 48, 54.
RIGHT_EYE = slice(36, 42)
LEFT_EYE = slice(42, 48)
MOUTH_CORNERS = (48, 54)


@dataclass(frozen=True)
class Framing:
    """How a face is framed in the model's input (see the module docstring).

    crop_scale: crop side / face size (larger = more background around the face).
    crop_offset_y: shift of the crop centre along the face's vertical axis, as a fraction of the crop side
        (negative moves the crop up, i.e. the face lower in the crop).
    rotate: keep the face upright by following the eye line (an in-plane rotation of the crop).
    """

    crop_scale: float = 2.2
    crop_offset_y: float = -0.1
    rotate: bool = True

    def __post_init__(self) -> None:
        if not 0.5 <= self.crop_scale <= 10.0:
            raise ValueError(f"crop_scale must be in [0.5, 10], got {self.crop_scale}")
        if not -0.5 <= self.crop_offset_y <= 0.5:
            raise ValueError(f"crop_offset_y must be in [-0.5, 0.5], got {self.crop_offset_y}")


@dataclass(frozen=True)
class CropTransform:
    """Picture -> crop: ``matrix`` (2, 3) float64 maps picture pixels to crop pixels; ``size`` is the crop's
    ``(height, width)``."""

    matrix: np.ndarray
    size: tuple[int, int]

    @property
    def inverse(self) -> np.ndarray:
        """(2, 3) crop -> picture."""
        full = np.vstack([self.matrix, [0.0, 0.0, 1.0]])  # (3, 3)
        return np.linalg.inv(full)[:2]

    @property
    def scale(self) -> float:
        """Crop pixels per picture pixel (geometric mean of the two axes)."""
        return float(math.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))

    def crop_corners(self) -> np.ndarray:
        """(4, 2) the crop's corners in picture pixels (top-left, top-right, bottom-right, bottom-left)."""
        height, width = self.size
        corners = np.array([[-0.5, -0.5], [width - 0.5, -0.5], [width - 0.5, height - 0.5], [-0.5, height - 0.5]])
        return apply(self.inverse, corners)

    def to_picture(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) crop pixels -> picture pixels."""
        return apply(self.inverse, points)

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) picture pixels -> crop pixels."""
        return apply(self.matrix, points)


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to (N, 2) points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def eyes_and_mouth(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The right eye's centre, the left eye's centre and the mouth corners' midpoint (x, y) of (68, 2) landmarks
    (the subject's right eye is on the picture's left)."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    return (landmarks[RIGHT_EYE].mean(axis=0), landmarks[LEFT_EYE].mean(axis=0),
            landmarks[list(MOUTH_CORNERS)].mean(axis=0))


def face_size(landmarks: np.ndarray) -> float:
    """The face size ``s`` of the module docstring, in pixels. landmarks: (68, 2)."""
    return _face_size(*eyes_and_mouth(landmarks))


def _face_size(eye_right: np.ndarray, eye_left: np.ndarray, mouth: np.ndarray) -> float:
    eyes = (eye_right + eye_left) / 2
    return float(max(2.0 * np.linalg.norm(eye_left - eye_right), 1.8 * np.linalg.norm(mouth - eyes)))


class CropBox(NamedTuple):
    """A square crop in picture pixels: centre, side, and angle (radians, the square's x axis in the picture).
    Plain numbers, so that crops can be averaged and interpolated over time."""

    center_x: float
    center_y: float
    side: float
    angle: float = 0.0

    def transform(self, size: tuple[int, int]) -> CropTransform:
        """The picture -> crop transform for a crop of ``size`` = (height, width)."""
        return similarity(np.array([self.center_x, self.center_y]), self.side, self.angle, size)


def crop_box_from_landmarks(landmarks: np.ndarray, framing: Framing = Framing()) -> CropBox:
    """The VoxCeleb-like crop of one face (module docstring). landmarks: (68, 2) picture pixels."""
    return crop_box_from_points(*eyes_and_mouth(landmarks), framing)


def crop_box_from_points(eye_right: np.ndarray, eye_left: np.ndarray, mouth: np.ndarray,
                         framing: Framing = Framing()) -> CropBox:
    """:func:`crop_box_from_landmarks` from the two eye centres and the mouth centre (x, y) picture pixels."""
    delta = eye_left - eye_right
    angle = math.atan2(delta[1], delta[0]) if framing.rotate else 0.0  # the eye line vs the x axis
    down = np.array([-math.sin(angle), math.cos(angle)])  # the face's vertical axis, towards the chin
    side = framing.crop_scale * _face_size(eye_right, eye_left, mouth)
    center = ((eye_right + eye_left) / 2 + mouth) / 2 + framing.crop_offset_y * side * down
    return CropBox(float(center[0]), float(center[1]), float(side), angle)


def similarity(center: np.ndarray, side: float, angle: float, size: tuple[int, int]) -> CropTransform:
    """The crop of a square of ``side`` pixels centred at ``center`` (x, y), rotated by ``angle`` radians (the
    square's x axis in the picture), resized to ``size`` = (height, width) (non-square sizes stretch)."""
    height, width = size
    cosine, sine = math.cos(angle), math.sin(angle)
    rotation = np.array([[cosine, sine], [-sine, cosine]])  # picture axes -> square's axes
    scales = np.array([[width / side, 0.0], [0.0, height / side]])
    linear = scales @ rotation  # (2, 2)
    crop_center = np.array([(width - 1) / 2, (height - 1) / 2])
    offset = crop_center - linear @ np.asarray(center, dtype=np.float64)
    return CropTransform(np.hstack([linear, offset[:, None]]), (height, width))


def resize_transform(picture_size: tuple[int, int], size: tuple[int, int]) -> CropTransform:
    """The whole picture resized to the crop (for inputs that already are face crops).

    picture_size, size: ``(height, width)``. Pixel-centre aligned, as ``cv2.resize``.
    """
    scale_y, scale_x = size[0] / picture_size[0], size[1] / picture_size[1]
    matrix = np.array([[scale_x, 0.0, 0.5 * scale_x - 0.5], [0.0, scale_y, 0.5 * scale_y - 0.5]])
    return CropTransform(matrix, tuple(size))


def warp_to_crop(picture: np.ndarray, transform: CropTransform) -> np.ndarray:
    """Cut the crop out of the picture: (H, W, C) -> ``transform.size`` + (C,), same dtype.

    Shrinking by more than 1.5x first area-averages the region around the crop (anti-aliasing, like the resize
    of the reference demo), then warps the remainder; outside the picture the border pixels are repeated.
    """
    import cv2

    matrix = transform.matrix
    height, width = transform.size
    if transform.scale < 1 / 1.5:
        picture, matrix = _shrunk_region(picture, transform)
    return cv2.warpAffine(picture, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _shrunk_region(picture: np.ndarray, transform: CropTransform) -> tuple[np.ndarray, np.ndarray]:
    """The picture region under the crop, area-resized to about the crop's scale, and the matrix for it."""
    import cv2

    corners = transform.crop_corners()
    x0, y0 = np.floor(corners.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + 2
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, picture.shape[1]), min(y1, picture.shape[0])
    if x1 - x0 < 2 or y1 - y0 < 2:  # the crop lies outside the picture: nothing to shrink
        return picture, transform.matrix
    region = picture[y0:y1, x0:x1]
    factor = transform.scale
    new_size = (max(1, round((x1 - x0) * factor)), max(1, round((y1 - y0) * factor)))
    region = cv2.resize(region, new_size, interpolation=cv2.INTER_AREA)
    scale_x, scale_y = new_size[0] / (x1 - x0), new_size[1] / (y1 - y0)
    # region pixel (i, j) centre <- picture pixel ((i + 0.5) / scale_x - 0.5 + x0, ...)
    to_picture = np.array([[1 / scale_x, 0.0, 0.5 / scale_x - 0.5 + x0], [0.0, 1 / scale_y, 0.5 / scale_y - 0.5 + y0],
                           [0.0, 0.0, 1.0]])
    matrix = np.vstack([transform.matrix, [0.0, 0.0, 1.0]]) @ to_picture
    return region, matrix[:2]
