"""Face metrics: AKD, AED, CSIM and PRMSE, on top of :class:`dagan.faces.FaceAnalyzer`.

Per frame (images ``(H, W, 3)``, uint8 or float in [0, 1]; the largest face of each image is used):

- AKD (average keypoint distance, FOMM): mean over the 68 landmarks of the L2 distance in pixels between the
  generated frame's landmarks and the reference's. The papers use FAN (``--backend face_alignment``); the dlib
  predictor gives the same 68-point layout with different errors, so its numbers are close to but not the same
  as FAN's.
- AED (average Euclidean distance, FOMM): L2 distance between the identity embeddings of the generated frame and
  the reference (driving) frame.
- CSIM: cosine similarity between the identity embeddings of the source image and the generated frame.
- PRMSE: root mean square error over frames and the three angles (pitch, yaw, roll) in degrees between the head
  pose of the generated frame and that of the reference; poses come from the landmarks with ``cv2.solvePnP``
  (:func:`dagan.faces.head_pose_from_landmarks`).

A frame where either image has no detected face gives no value: it is counted as skipped and left out of the
mean. Identity embeddings are dlib's 128-d ResNet descriptor for every backend: a stand-in for the papers'
networks (OpenFace for FOMM's AED, ArcFace for DaGAN's CSIM), whose weights cannot be had offline. AED and CSIM
computed here are therefore **not comparable with the papers' tables**; compare methods with each other only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

from dagan.eval.metrics import MetricTotal
from dagan.faces import FaceAnalyzer, HeadPose, as_uint8_rgb, head_pose_from_landmarks

__all__ = [
    "FACE_METRICS",
    "IDENTITY_NOTE",
    "FaceMeasurement",
    "FaceMeasurer",
    "face_metric_backends",
    "head_pose",
    "identity_distance",
    "identity_similarity",
    "landmark_distance",
    "pose_squared_error",
    "score_faces",
]

FACE_METRICS = ("akd", "aed", "csim", "prmse")
IDENTITY_BACKEND = "dlib ResNet identity (stand-in for the papers' networks)"
IDENTITY_NOTE = ("AED and CSIM use dlib's 128-d face-recognition ResNet as a stand-in for the papers' identity "
                 "networks (OpenFace / ArcFace): their numbers are not comparable with the papers' tables.")


@dataclass(frozen=True)
class FaceMeasurement:
    """What one image gives: ``(68, 2)`` landmarks in pixels, the ``(128,)`` identity embedding and the head pose
    (degrees); each ``None`` when there is no face (or it was not asked for)."""

    landmarks: Optional[np.ndarray] = None
    embedding: Optional[np.ndarray] = None
    pose: Optional[HeadPose] = None


class FaceMeasurer:
    """Measure faces once per image for all face metrics (one detection per image).

    analyzer: the face backend. embeddings / poses: compute them (skip the cost when no metric needs them).
    """

    def __init__(self, analyzer: FaceAnalyzer, embeddings: bool = True, poses: bool = True) -> None:
        self.analyzer = analyzer
        self.embeddings = embeddings
        self.poses = poses

    def measure(self, image: np.ndarray) -> FaceMeasurement:
        """Landmarks (in the pixels of ``image``), identity embedding and head pose of the largest face.

        Frames smaller than :data:`MIN_ANALYSIS_SIDE` (e.g. 64x64 outputs of small models) are enlarged by an
        integer factor (bicubic) for the face backend, which misses faces that small; landmarks are scaled back.
        """
        image = as_uint8_rgb(image)
        factor = upscale_factor(image)
        analysed = enlarge(image, factor)
        boxes = self.analyzer.detect(analysed)
        if not boxes:
            return FaceMeasurement()
        landmarks = self.analyzer.landmarks(analysed, boxes[0])
        if landmarks is None:
            return FaceMeasurement()
        embedding = self.analyzer.identity_embedding(analysed, boxes[0]) if self.embeddings else None
        height, width = analysed.shape[:2]
        pose = head_pose_from_landmarks(landmarks, (width, height)) if self.poses else None
        return FaceMeasurement(landmarks / factor, embedding, pose)


MIN_ANALYSIS_SIDE = 192  # pixels; dlib's HOG detector needs faces of about 80 px


def upscale_factor(image: np.ndarray) -> int:
    """Smallest integer factor that brings the shorter side of ``image`` to :data:`MIN_ANALYSIS_SIDE`."""
    return max(1, -(-MIN_ANALYSIS_SIDE // min(image.shape[:2])))


def enlarge(image: np.ndarray, factor: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (factor H, factor W, 3) uint8, bicubic; the identity for factor 1."""
    if factor == 1:
        return image
    from PIL import Image

    height, width = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((width * factor, height * factor), Image.BICUBIC))


def face_metric_backends(analyzer: FaceAnalyzer) -> dict[str, str]:
    """The backend name of each face metric for this analyzer."""
    if analyzer.backend == "face_alignment":
        landmarks, pose = "FAN 2DFAN4 68 landmarks (face_alignment)", "FAN landmarks + PnP"
    else:
        landmarks, pose = "dlib-68 landmarks", "dlib landmarks + PnP"
    return {"akd": landmarks, "aed": IDENTITY_BACKEND, "csim": IDENTITY_BACKEND, "prmse": pose}


# Per-frame values (None: a face is missing).

def landmark_distance(generated: Optional[np.ndarray], reference: Optional[np.ndarray]) -> Optional[float]:
    """AKD of one frame: mean L2 distance in pixels between two ``(68, 2)`` landmark sets."""
    if generated is None or reference is None:
        return None
    return float(np.linalg.norm(np.asarray(generated) - np.asarray(reference), axis=1).mean())


def identity_distance(generated: Optional[np.ndarray], reference: Optional[np.ndarray]) -> Optional[float]:
    """AED of one frame: L2 distance between two identity embeddings (dlib: < 0.6 means "same person")."""
    if generated is None or reference is None:
        return None
    return float(np.linalg.norm(np.asarray(generated) - np.asarray(reference)))


def identity_similarity(source: Optional[np.ndarray], generated: Optional[np.ndarray]) -> Optional[float]:
    """CSIM of one frame: cosine similarity of two identity embeddings, in [-1, 1] (1: same direction)."""
    if source is None or generated is None:
        return None
    source, generated = np.asarray(source, dtype=np.float64), np.asarray(generated, dtype=np.float64)
    return float(source @ generated / (np.linalg.norm(source) * np.linalg.norm(generated)))


def pose_squared_error(generated: Optional[HeadPose], reference: Optional[HeadPose]) -> Optional[float]:
    """Mean over (pitch, yaw, roll) of the squared angle differences, degrees^2 (PRMSE is the root of its mean)."""
    if generated is None or reference is None:
        return None
    difference = np.asarray(generated, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    return float((difference ** 2).mean())


def head_pose(analyzer: FaceAnalyzer, image: np.ndarray) -> Optional[HeadPose]:
    """Head pose (pitch, yaw, roll) in degrees of the largest face, as PRMSE measures it; ``None`` without a face."""
    return FaceMeasurer(analyzer, embeddings=False).measure(image).pose


def frame_face_values(generated: FaceMeasurement, reference: Optional[FaceMeasurement],
                      source: Optional[FaceMeasurement], metrics: Iterable[str]) -> dict[str, Optional[float]]:
    """Per-frame values of the requested face metrics from measured faces."""
    reference = reference or FaceMeasurement()
    source = source or FaceMeasurement()
    compute = {
        "akd": lambda: landmark_distance(generated.landmarks, reference.landmarks),
        "aed": lambda: identity_distance(generated.embedding, reference.embedding),
        "csim": lambda: identity_similarity(source.embedding, generated.embedding),
        "prmse": lambda: pose_squared_error(generated.pose, reference.pose),
    }
    return {name: compute[name]() for name in metrics}


def score_faces(analyzer: FaceAnalyzer, generated_frames: Iterable[np.ndarray],
                reference_frames: Optional[Iterable[np.ndarray]] = None, source: Optional[np.ndarray] = None,
                metrics: Iterable[str] = FACE_METRICS) -> dict[str, MetricTotal]:
    """Face metrics of a sequence of generated frames against reference frames (paired in order) and/or a source.

    Returns one :class:`~dagan.eval.metrics.MetricTotal` per metric (``.value``, ``.count``, ``.skipped``).
    """
    metrics = list(metrics)
    measurer = FaceMeasurer(analyzer, embeddings=bool({"aed", "csim"} & set(metrics)), poses="prmse" in metrics)
    source_face = measurer.measure(source) if source is not None else None
    totals = {name: MetricTotal(root_mean_square=name == "prmse") for name in metrics}
    references = iter(reference_frames) if reference_frames is not None else None
    for generated in generated_frames:
        reference = next(references) if references is not None else None
        reference_face = measurer.measure(reference) if reference is not None else None
        values = frame_face_values(measurer.measure(generated), reference_face, source_face, metrics)
        for name, value in values.items():
            totals[name].add(value)
    return totals
