"""Head pose from 68 landmarks: a generic 3-D face, pinhole intrinsics and ``cv2.solvePnP``.

Conventions as in :mod:`dagan.faces.detection`: points are ``(x, y)`` pixels, angles degrees.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class HeadPose(NamedTuple):
    """Head rotation in degrees (see :func:`head_pose_from_landmarks` for the signs)."""

    pitch: float
    yaw: float
    roll: float


__all__ = ["HeadPose", "CANONICAL_FACE_3D", "camera_matrix", "rotation_from_head_pose", "head_pose_from_landmarks"]

# A generic adult face in millimetres for 12 stable points of the 68-point iBUG layout (no jaw
# contour, no eyebrows, no inner lips: those move with expression or slide along the silhouette).
# Axes: x towards the subject's left (image right for a frontal face), y down, z away from the
# camera, so a frontal face has zero rotation in OpenCV's camera frame. Origin: midway between the
# inner eye corners.
# Widths and heights are rounded adult means (sexes pooled) from facial anthropometry (L. G. Farkas,
# "Anthropometry of the Head and Face", 2nd ed., 1994): intercanthal en-en 32, biocular ex-ex 90,
# mouth ch-ch 50, nasion-subnasale 53, subnasale-stomion 22, stomion-gnathion 48 mm; the nostril
# points (31, 35) sit inside alare (al-al 35), at about 28 mm apart. Depths are our own rounded
# profile estimates (nasal tip ~30 mm in front of the inner eye corners, outer eye corners ~10 mm
# behind them, nasion, subnasale and alar base in between, mouth corners and chin at about the depth
# of the inner eye corners); they agree within ~12 mm with MediaPipe's canonical face scaled to the
# same intercanthal width. Depth errors mostly scale the recovered angles, they do not flip signs.
CANONICAL_FACE_3D: dict[int, tuple[float, float, float]] = {
    27: (0.0, -8.0, -12.0),    # top of the nose bridge (near soft-tissue nasion)
    30: (0.0, 34.0, -30.0),    # nose tip (pronasale)
    31: (-14.0, 41.0, -12.0),  # right nostril base (subject's right)
    33: (0.0, 44.0, -15.0),    # subnasale
    35: (14.0, 41.0, -12.0),   # left nostril base
    36: (-45.0, -2.0, 10.0),   # right eye outer corner (exocanthion)
    39: (-16.0, 0.0, 0.0),     # right eye inner corner (endocanthion)
    42: (16.0, 0.0, 0.0),      # left eye inner corner
    45: (45.0, -2.0, 10.0),    # left eye outer corner
    48: (-25.0, 66.0, 0.0),    # right mouth corner (cheilion)
    54: (25.0, 66.0, 0.0),     # left mouth corner
    8: (0.0, 115.0, 0.0),      # chin (menton / gnathion)
}


def camera_matrix(image_size: tuple[int, int]) -> np.ndarray:
    """``(3, 3)`` pinhole intrinsics: focal length = image width, principal point at the centre.

    image_size: ``(width, height)`` in pixels.
    """
    width, height = image_size
    return np.array([[width, 0.0, width / 2.0], [0.0, width, height / 2.0], [0.0, 0.0, 1.0]])


def rotation_from_head_pose(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """``(3, 3)`` rotation (face model frame -> camera frame) for a pose in degrees.

    The inverse of the decomposition in :func:`head_pose_from_landmarks`:
    ``R = Rx(-pitch) @ Ry(-yaw) @ Rz(roll)`` in OpenCV's camera axes (x right, y down, z forward).
    """
    a, b, c = np.radians([-pitch, -yaw, roll])
    rot_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rot_y = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rot_z = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rot_x @ rot_y @ rot_z


def head_pose_from_landmarks(landmarks: np.ndarray, image_size: tuple[int, int]) -> HeadPose:
    """Head pose from 68 landmarks with ``cv2.solvePnP`` against :data:`CANONICAL_FACE_3D`.

    landmarks: ``(68, 2)`` ``(x, y)`` pixels. image_size: ``(width, height)``.
    Returns degrees, 0 for a face looking straight into the camera:

    - pitch > 0: the subject looks up (chin raised);
    - yaw > 0: the subject turns to their own left (nose moves to the image right in an
      unmirrored photo);
    - roll > 0: the head tilts towards the subject's left shoulder (clockwise in the image).

    Mirroring the image flips the signs of yaw and roll and keeps pitch. The rotation is decomposed
    as ``R = Rx(-pitch) @ Ry(-yaw) @ Rz(roll)`` (see :func:`rotation_from_head_pose`).
    """
    import cv2

    indices = list(CANONICAL_FACE_3D)
    object_points = np.array([CANONICAL_FACE_3D[i] for i in indices], dtype=np.float64)  # (12, 3)
    image_points = np.asarray(landmarks, dtype=np.float64)[indices]  # (12, 2)
    ok, rotation_vector, _ = cv2.solvePnP(object_points, image_points, camera_matrix(image_size), None,
                                          flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        raise RuntimeError("cv2.solvePnP failed on these landmarks")
    rotation, _ = cv2.Rodrigues(rotation_vector)  # (3, 1) -> (3, 3)
    a = np.arctan2(-rotation[1, 2], rotation[2, 2])
    b = np.arcsin(np.clip(rotation[0, 2], -1.0, 1.0))
    c = np.arctan2(-rotation[0, 1], rotation[0, 0])
    pitch, yaw, roll = np.degrees([-a, -b, c])
    return HeadPose(float(pitch), float(yaw), float(roll))
