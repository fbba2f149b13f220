"""Faces: detection and 68 landmarks, head pose, crop transforms, paste-back, and animating faces in photos.

One file per concept:

- :mod:`~dagan.faces.detection`: :class:`FaceAnalyzer` (dlib / face_alignment backends), :class:`Box`;
- :mod:`~dagan.faces.pose`: head pose from landmarks;
- :mod:`~dagan.faces.landmarks`: landmark normalisation and the best-frame search;
- :mod:`~dagan.faces.alignment`: the VoxCeleb-like similarity crop of a face (:class:`CropTransform`);
- :mod:`~dagan.faces.plans`: which faces to animate in a picture, and the crops of a driving or source video;
- :mod:`~dagan.faces.paste`: the feathered mask and the colour-matched paste-back into the full picture;
- :mod:`~dagan.faces.animation`: animating every chosen face of a photo or video with one driving video;
- :mod:`~dagan.faces.restore`: optional face restoration of the animated crops (the user's ONNX models), stabilised
  over time.

The names that existed when this was one module (``dagan/faces.py``) are importable from here.
"""

from dagan.faces.detection import (
    DEFAULT_MIN_SCORE,
    FAN_2D_FILE,
    S3FD_FILE,
    Box,
    FaceAnalyzer,
    HeadPose,
    MissingFaceBackend,
    NoFaceFound,
    as_uint8_rgb,
    face_alignment_weight_paths,
    get_face_analyzer,
)
from dagan.faces.landmarks import best_aligned_frame, find_best_frame, normalized_landmarks
from dagan.faces.pose import CANONICAL_FACE_3D, camera_matrix, head_pose_from_landmarks, rotation_from_head_pose

__all__ = [
    "Box",
    "HeadPose",
    "best_aligned_frame",
    "FaceAnalyzer",
    "MissingFaceBackend",
    "NoFaceFound",
    "get_face_analyzer",
    "as_uint8_rgb",
    "head_pose_from_landmarks",
    "camera_matrix",
    "rotation_from_head_pose",
    "normalized_landmarks",
    "find_best_frame",
    "face_alignment_weight_paths",
    "CANONICAL_FACE_3D",
    "DEFAULT_MIN_SCORE",
]
