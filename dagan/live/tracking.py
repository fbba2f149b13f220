"""Following the driving face from frame to frame: detect once, then follow cheaply.

:class:`FaceTracker` runs the face detector only when it has no face (at start, or after losing it). While it
follows a face, each frame costs one landmark fit inside the previous frame's face box (dlib's shape predictor:
a few milliseconds), and every ``verify_every`` frames one detection inside a window around the face (twice the
face's size, shrunk so that the face is about 110 pixels wide) confirms that a face still is there; when it is
not, the face is lost (so a face that leaves is noticed within ``verify_every`` frames). The
crop comes from the landmarks by the VoxCeleb framing of :func:`~dagan.faces.alignment.crop_box_from_landmarks`
(upright, as for driving videos) and is smoothed over time by an exponential moving average of its centre and
side, so that detector jitter does not become head motion.

:class:`WholeFrameTracker` is for driving frames that already are face crops (``--driving_crop none``): the whole
frame is the model's input.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from dagan.faces.alignment import CropBox, CropTransform, Framing, crop_box_from_landmarks, resize_transform
from dagan.faces.detection import Box

__all__ = ["FaceTracker", "WholeFrameTracker"]

VERIFY_FACE_PX = 110  # the followed face's width in the confirming detection's window (dlib HOG finds ~80 px up)


class WholeFrameTracker:
    """The whole frame, resized to the model's input: always "found"."""

    detections = 0

    def __call__(self, frame: np.ndarray, size: tuple[int, int]) -> Optional[CropTransform]:
        return resize_transform(frame.shape[:2], size)

    def reset(self) -> None:
        pass


class FaceTracker:
    """The driving face's crop, frame after frame (module docstring).

    analyzer: a :class:`~dagan.faces.detection.FaceAnalyzer`. smoothing: weight of the previous crop in the moving
    average (0 = none). verify_every: frames between two confirmations that the followed face still is there.
    """

    def __init__(self, analyzer, framing: Framing = Framing(rotate=False), smoothing: float = 0.6,
                 verify_every: int = 3, window: float = 2.0):
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        if verify_every < 1:
            raise ValueError(f"verify_every must be >= 1, got {verify_every}")
        self.analyzer, self.framing, self.smoothing = analyzer, framing, smoothing
        self.verify_every, self.window = verify_every, window
        self.box: Optional[Box] = None  # the followed face's box (from the last landmarks); None = no face
        self.crop: Optional[CropBox] = None  # the smoothed crop
        self.frames_followed = 0
        self.detections = 0  # full-frame detections run (once per face found)

    def reset(self) -> None:
        """Forget the face: the next frame is searched whole."""
        self.box, self.crop, self.frames_followed = None, None, 0

    def __call__(self, frame: np.ndarray, size: tuple[int, int]) -> Optional[CropTransform]:
        """The crop of the face in ``frame`` (H, W, 3) uint8 for a model input of ``size`` = (height, width), or
        None when no face is in view (the tracker then searches the whole next frame)."""
        if self.box is None:
            self.detections += 1
            boxes = self.analyzer.detect(frame)
            if not boxes:
                return None
            self.box, self.crop, self.frames_followed = boxes[0], None, 0
        elif self.frames_followed % self.verify_every == 0 and not self._still_there(frame):
            self.reset()
            return None
        landmarks = self.analyzer.landmarks(frame, self.box)
        if landmarks is None:
            self.reset()
            return None
        self.frames_followed += 1
        self.box = _landmark_box(landmarks)
        self.crop = self._smoothed(crop_box_from_landmarks(landmarks, self.framing))
        return self.crop.transform(size)

    def _smoothed(self, crop: CropBox) -> CropBox:
        if self.crop is None or self.smoothing == 0.0:
            return crop
        keep = self.smoothing
        return CropBox(*(keep * old + (1 - keep) * new for old, new in zip(self.crop, crop)))

    def _still_there(self, frame: np.ndarray) -> bool:
        """Whether the detector finds a face in a window of ``window`` face sizes around the followed box."""
        height, width = frame.shape[:2]
        center_x, center_y = self.box.center
        half = self.window * max(self.box.width, self.box.height) / 2
        x0, y0 = int(max(center_x - half, 0)), int(max(center_y - half, 0))
        x1, y1 = int(min(center_x + half, width)), int(min(center_y + half, height))
        if x1 - x0 < 16 or y1 - y0 < 16:
            return False
        window = frame[y0:y1, x0:x1]
        factor = min(1.0, VERIFY_FACE_PX / max(self.box.width, 1.0))  # the face shrunk to about what HOG needs
        if factor < 1.0:
            import cv2

            size = (max(16, round(window.shape[1] * factor)), max(16, round(window.shape[0] * factor)))
            window = cv2.resize(window, size, interpolation=cv2.INTER_AREA)
        return bool(self.analyzer.detect(np.ascontiguousarray(window)))


def _landmark_box(landmarks: np.ndarray) -> Box:
    """A detector-like box around 68 landmarks: their extent, grown upwards to the forehead (a detector's box
    covers brows to chin), where the next frame's landmarks are fitted."""
    x0, y0 = landmarks.min(axis=0)
    x1, y1 = landmarks.max(axis=0)
    grow = 0.1 * (y1 - y0)
    return Box(float(x0), float(y0 - grow), float(x1), float(y1))
