"""Landmark normalisation and the best-frame search (DaGAN/FOMM demo.py's ``find_best_frame``)."""

from __future__ import annotations

from typing import Iterable

import numpy as np
from scipy.spatial import ConvexHull

from dagan.faces.detection import FaceAnalyzer, NoFaceFound, get_face_analyzer
from dagan.io.images import to_uint8

__all__ = ["normalized_landmarks", "find_best_frame", "best_aligned_frame"]

def normalized_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """Landmarks with the centroid removed, divided by sqrt(area of their convex hull).

    landmarks: ``(68, 2)`` (any ``(N, 2)``, N >= 3 not collinear). Returns ``(N, 2)`` float64,
    invariant to translation and uniform scaling (as ``normalize_kp`` in DaGAN's demo).
    """
    points = np.asarray(landmarks, dtype=np.float64)
    points = points - points.mean(axis=0, keepdims=True)
    return points / np.sqrt(ConvexHull(points).volume)  # in 2-D, .volume is the area


def find_best_frame(source_image: np.ndarray, driving_frames: Iterable[np.ndarray] | np.ndarray,
                    analyzer: FaceAnalyzer | None = None) -> int:
    """Index of the driving frame whose face shape is closest to the source's.

    source_image: ``(H, W, 3)``; driving_frames: ``(T, H, W, 3)`` array or a sequence of frames
    (uint8 or float [0, 1]). The distance is the sum of squared differences of
    :func:`normalized_landmarks`. Frames without a face are skipped.

    Raises:
        NoFaceFound: no face in the source image or in any driving frame.
    """
    analyzer = analyzer or get_face_analyzer()
    source_points = analyzer.landmarks(source_image)
    if source_points is None:
        raise NoFaceFound("find_best_frame: no face found in the source image")
    source_normalized = normalized_landmarks(source_points)
    best_index, best_distance = -1, np.inf
    for index, frame in enumerate(driving_frames):
        points = analyzer.landmarks(frame)
        if points is None:
            continue
        distance = float(((normalized_landmarks(points) - source_normalized) ** 2).sum())
        if distance < best_distance:
            best_index, best_distance = index, distance
    if best_index < 0:
        raise NoFaceFound("find_best_frame: no face found in any driving frame")
    return best_index


def best_aligned_frame(source_image: np.ndarray, driving_frames: Iterable[np.ndarray], analyzer=None) -> int:
    """Index of the driving frame whose face is best aligned with the source: 68 landmarks normalised by
    centroid and sqrt(convex-hull area), smallest squared difference (the reference demo's find_best_frame).

    Frames are searched at their own resolution (normalised landmarks do not depend on it, and a small model
    resolution may be too small for the face detector). Needs the ``[faces]`` extra.
    """
    return find_best_frame(to_uint8(source_image) if source_image.dtype != np.uint8 else source_image,
                           iter(driving_frames), analyzer or get_face_analyzer("auto"))
