"""Optional face restoration of the animated crops, from the user's own ONNX models, stable over time.

The restoration models that face-swapping tools made popular (GFPGAN 1.4, CodeFormer, GPEN-BFR 256/512/1024,
RestoreFormer++) are single ONNX graphs that take one aligned face, (1, 3, S, S) RGB in [-1, 1], and return the
restored face the same way; CodeFormer also takes its fidelity ``weight`` (0 = the model's own face, 1 = closest to
the input). :data:`RESTORE_MODELS` is the one table of what each expects; :func:`detect_signature` reads a graph's
inputs and finds its row (or the user names it: ``demo.py --restore_model``). Nothing is downloaded: the user
points ``--restore`` at a file they have.

Per frame and face (:class:`FaceRestorer`):

1. Alignment. The animated crop frames the face as the model's crops do (:class:`~dagan.faces.alignment.Framing`),
   so the five points (eyes, nose, mouth corners) of a typical face sit at fixed places in it
   (:func:`crop_five_points`); one similarity maps them onto the restoration model's template
   (:data:`TEMPLATES`, FFHQ-512 for every model in the table). The same matrix serves every frame, which adds no
   jitter of its own.
2. Restoration in the template, and back into the crop.
3. Blending: ``crop + strength * mask * residual``, ``residual = restored - crop``, with ``mask`` the paste-back
   mask (:func:`~dagan.faces.paste.face_mask`) times the part of the crop the aligned square covers. Outside the
   paste-back mask nothing changes.
4. Stabilisation (:class:`TemporalStabilizer`): restorers run frame by frame invent slightly different details in
   each frame (hair, teeth, lips), which is the flicker users report. The residual is averaged over time, per pixel,
   with a weight on the previous residual that falls where the unrestored animation itself changes:
   ``residual_t = a * residual_{t-1} + (1 - a) * r_t``, ``a = momentum * exp(-|G * (crop_t - crop_{t-1})| / change)``
   (G: a small Gaussian blur, so that noise does not read as motion).
   Where the face moves the current frame's detail is used (no ghosting); where it holds still the restorer's
   frame-to-frame noise averages out. :func:`relative_flicker` measures the result.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from dagan.faces.alignment import Framing, crop_box_from_points
from dagan.faces.paste import face_mask

__all__ = ["RESTORE_MODELS", "TEMPLATES", "RestoreError", "RestoreSignature", "RestorationModel", "FaceRestorer",
           "TemporalStabilizer", "RestoreOptions", "detect_signature", "read_signature", "crop_five_points", "flicker",
           "relative_flicker"]

# Five points (x, y) as fractions of the template's side: right eye, left eye, nose tip, right and left mouth
# corners (the subject's right is the picture's left). FFHQ: the alignment of the FFHQ dataset at 512 pixels, which
# GFPGAN, CodeFormer, GPEN and RestoreFormer were trained on; ArcFace: the 112-pixel recognition template,
# widened to a 128-pixel square.
TEMPLATES = {
    "ffhq_512": np.array([[192.98, 239.95], [318.90, 240.19], [256.63, 314.02], [201.26, 371.41],
                          [313.09, 371.15]]) / 512.0,
    "arcface_128": (np.array([[38.29, 51.70], [73.53, 51.50], [56.03, 71.74], [41.55, 92.37], [70.73, 92.20]])
                    + [8.0, 0.0]) / 128.0,
}
VALUE_RANGES = {"-1..1": (-1.0, 1.0), "0..1": (0.0, 1.0)}
TORCH_WEIGHT_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")


class RestoreError(ValueError):
    """A restoration model that cannot be used; the message names what was expected."""


@dataclass(frozen=True)
class RestoreSignature:
    """What one restoration graph expects: input side ``size``, ``value_range`` (a key of :data:`VALUE_RANGES`, RGB
    channels first), alignment ``template`` (a key of :data:`TEMPLATES`) and the name of its fidelity input, if
    any."""

    name: str
    size: int
    value_range: str = "-1..1"
    template: str = "ffhq_512"
    fidelity_input: Optional[str] = None


# The one table of supported restoration models (ONNX graphs as face-swapping tools distribute them).
RESTORE_MODELS = {signature.name: signature for signature in (
    RestoreSignature("gfpgan_1.4", 512),
    RestoreSignature("codeformer", 512, fidelity_input="weight"),
    RestoreSignature("gpen_bfr_256", 256),
    RestoreSignature("gpen_bfr_512", 512),
    RestoreSignature("gpen_bfr_1024", 1024),
    RestoreSignature("restoreformer_plus_plus", 512),
)}
# What a graph's inputs detect to, when --restore_model does not name it: (side, has a fidelity input) -> model.
# GFPGAN 1.4, GPEN-BFR-512 and RestoreFormer++ take the same input and template, so any of them reads as GFPGAN.
DETECTED = {(512, False): "gfpgan_1.4", (512, True): "codeformer", (256, False): "gpen_bfr_256",
            (1024, False): "gpen_bfr_1024"}
EXPECTED = ("one float input (1, 3, S, S), RGB in [-1, 1], S = 256, 512 or 1024 (GFPGAN 1.4, GPEN-BFR, "
            "RestoreFormer++), plus a fidelity input of shape (1,) for CodeFormer")


@dataclass(frozen=True)
class GraphInput:
    """One input of an ONNX graph: name, element type (``float32``/``float64``/...) and dims (int or None)."""

    name: str
    dtype: str
    dims: tuple[Optional[int], ...]

    def describe(self) -> str:
        return f"{self.name} {self.dtype} ({', '.join('?' if dim is None else str(dim) for dim in self.dims)})"


def graph_inputs(path: str) -> list[GraphInput]:
    """The inputs of an ONNX file (initializers excluded), read without loading external weight files."""
    import onnx

    try:
        graph = onnx.load(path, load_external_data=False).graph
    except Exception as error:  # not an ONNX protobuf
        raise RestoreError(f"--restore {path!r} could not be read as an ONNX model ({type(error).__name__}); give "
                           "the .onnx file of a face restoration model") from None
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = []
    for value in graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else "unknown"
        dims = tuple(dim.dim_value if dim.HasField("dim_value") else None for dim in tensor.shape.dim)
        inputs.append(GraphInput(value.name, dtype, dims))
    return inputs


def _is_image(graph_input: GraphInput) -> bool:
    """An input (N, 3, S, S) of floats (N 1 or free; S fixed or free)."""
    dims = graph_input.dims
    return (graph_input.dtype.startswith("float") and len(dims) == 4 and dims[0] in (1, None) and dims[1] == 3
            and dims[2] == dims[3])


def detect_signature(path: str, inputs: Sequence[GraphInput], name: Optional[str] = None
                     ) -> tuple[RestoreSignature, GraphInput, Optional[GraphInput]]:
    """The table row of a graph (``name`` from ``--restore_model``, else detected), its image input and its
    fidelity input; :class:`RestoreError` (one line naming what was expected) when the graph does not fit."""
    images = [graph_input for graph_input in inputs if _is_image(graph_input)]
    others = [graph_input for graph_input in inputs if graph_input not in images]
    fidelity = others[0] if len(others) == 1 and len(others[0].dims) <= 1 else None
    found = ", ".join(graph_input.describe() for graph_input in inputs) or "none"
    if len(images) != 1 or (others and fidelity is None):
        raise RestoreError(f"--restore {path}: unsupported restoration graph (inputs: {found}); expected {EXPECTED}")
    side = images[0].dims[2]
    if name is None and side is None:
        raise RestoreError(f"--restore {path}: its input side is not fixed (inputs: {found}); name the model with "
                           f"--restore_model ({', '.join(RESTORE_MODELS)})")
    if name is None:
        name = DETECTED.get((side, fidelity is not None))
        if name is None:
            raise RestoreError(f"--restore {path}: unsupported restoration graph (inputs: {found}); expected "
                               f"{EXPECTED}")
    if name not in RESTORE_MODELS:
        raise RestoreError(f"--restore_model {name!r} is not in the table; use one of {', '.join(RESTORE_MODELS)}")
    signature = RESTORE_MODELS[name]
    if side not in (None, signature.size) or (signature.fidelity_input is not None) != (fidelity is not None):
        wanted = f"(1, 3, {signature.size}, {signature.size})" + (" and a fidelity input (1,)"
                                                                  if signature.fidelity_input else " only")
        raise RestoreError(f"--restore {path} does not look like {name} (inputs: {found}); {name} takes {wanted}; "
                           "drop --restore_model to detect it from the graph")
    return signature, images[0], fidelity


def read_signature(path: str, model: Optional[str] = None
                   ) -> tuple[RestoreSignature, GraphInput, Optional[GraphInput]]:
    """:func:`detect_signature` of the ONNX file at ``path``, with one-line errors for a missing file or PyTorch
    weights (cheap: no session is created)."""
    if not os.path.isfile(path):
        raise RestoreError(f"--restore {path!r} does not exist; give the .onnx file of a face restoration model "
                           f"({', '.join(RESTORE_MODELS)})")
    if path.lower().endswith(TORCH_WEIGHT_SUFFIXES):
        raise RestoreError(f"--restore {path!r} holds PyTorch weights, which are not run here (their loader, "
                           "spandrel, imports torchvision, which does not import with the CPU build of torch); "
                           "use the model's .onnx file")
    return detect_signature(path, graph_inputs(path), model)


def crop_five_points(size: tuple[int, int], framing: Framing = Framing()) -> np.ndarray:
    """(5, 2) pixel positions (x, y) of a typical face's five points in the model's crop of ``size`` (height,
    width) framed by ``framing``: the FFHQ template's face put through the crop rule of
    :func:`~dagan.faces.alignment.crop_box_from_points`."""
    points = TEMPLATES["ffhq_512"] * 512.0
    box = crop_box_from_points(points[0], points[1], points[3:5].mean(axis=0), framing)
    matrix = box.transform(size).matrix
    return points @ matrix[:, :2].T + matrix[:, 2]


class RestorationModel:
    """One restoration graph on ONNX Runtime or OpenVINO (the runners of :mod:`dagan.runtime.backends`):
    ``restore(aligned)`` maps an aligned face (S, S, 3) uint8 to the restored face (S, S, 3) float32 in [0, 255].

    runtime: ``onnxruntime`` or ``openvino``. model: a :data:`RESTORE_MODELS` name, or None to detect it.
    fidelity: CodeFormer's weight in [0, 1] (ignored by the others).
    """

    def __init__(self, path: str | os.PathLike, runtime: str = "onnxruntime", model: Optional[str] = None,
                 fidelity: float = 0.7, threads: Optional[int] = None):
        from dagan.runtime.backends import RUNNERS

        path = os.fspath(path)
        if runtime not in RUNNERS:
            raise RestoreError(f"restoration runs on {' or '.join(RUNNERS)}, not {runtime!r}")
        if not 0.0 <= fidelity <= 1.0:
            raise RestoreError(f"the restoration fidelity must be in [0, 1], got {fidelity}")
        self.path, self.runtime = path, runtime
        self.signature, self.image_input, self.fidelity_input = read_signature(path, model)
        self.fidelity = fidelity
        self.run = RUNNERS[runtime](path, threads or min(4, os.cpu_count() or 1))

    @property
    def size(self) -> int:
        return self.signature.size

    def describe(self) -> str:
        return f"{self.signature.name} ({self.size}x{self.size}) on {self.runtime}"

    def restore(self, aligned: np.ndarray) -> np.ndarray:
        """(S, S, 3) uint8 RGB -> (S, S, 3) float32 in [0, 255]."""
        low, high = VALUE_RANGES[self.signature.value_range]
        image = aligned.astype(np.float32).transpose(2, 0, 1)[None] / 255.0 * (high - low) + low  # (1, 3, S, S)
        feeds = {self.image_input.name: image.astype(self.image_input.dtype)}
        if self.fidelity_input is not None:
            shape = tuple(dim or 1 for dim in self.fidelity_input.dims)
            feeds[self.fidelity_input.name] = np.full(shape, self.fidelity, self.fidelity_input.dtype)
        output = np.asarray(self.run(feeds)[0], dtype=np.float32)[0]  # (3, S, S)
        return (np.clip(output, low, high) - low).transpose(1, 2, 0) * (255.0 / (high - low))


class TemporalStabilizer:
    """The recursive, change-gated average of restoration residuals (module docstring, step 4).

    momentum: weight of the previous residual where the crop does not change (0 = off). change: the crop change
    (grey levels, mean over channels, of the crops blurred with a Gaussian of ``blur`` pixels so that sensor noise
    does not count as motion) at which that weight has fallen to 1/e.
    """

    def __init__(self, momentum: float = 0.8, change: float = 4.0, blur: float = 1.5):
        self.momentum, self.change, self.blur = momentum, change, blur
        self.previous_crop: Optional[np.ndarray] = None
        self.previous_residual: Optional[np.ndarray] = None

    def __call__(self, crop: np.ndarray, residual: np.ndarray) -> np.ndarray:
        """crop: (h, w, 3) float32, the unrestored frame; residual: (h, w, 3) float32 -> stabilised residual."""
        import cv2

        smooth = cv2.GaussianBlur(crop, (0, 0), self.blur)  # sensor noise is not motion
        if self.previous_residual is not None and self.momentum > 0:
            changed = np.abs(smooth - self.previous_crop).mean(axis=2, keepdims=True)  # (h, w, 1)
            weight = self.momentum * np.exp(-changed / self.change)
            residual = weight * self.previous_residual + (1.0 - weight) * residual
        self.previous_crop, self.previous_residual = smooth, residual
        return residual


class FaceRestorer:
    """Restores the animated crops of one face, frame after frame (keep one per face: it holds the temporal state).

    model: a :class:`RestorationModel`. size: the crop's (height, width). strength: 0 (off) .. 1 (the restored
    face). stabilize: apply :class:`TemporalStabilizer`. framing: how the crops frame the face.
    """

    def __init__(self, model: RestorationModel, size: tuple[int, int], strength: float = 1.0,
                 stabilize: bool = True, framing: Framing = Framing()):
        import cv2

        if not 0.0 <= strength <= 1.0:
            raise RestoreError(f"--restore_strength must be in [0, 1], got {strength}")
        self.model, self.size = model, tuple(size)
        template = TEMPLATES[model.signature.template] * model.size
        self.to_template = cv2.estimateAffinePartial2D(crop_five_points(self.size, framing), template)[0]  # (2, 3)
        self.to_crop = cv2.invertAffineTransform(self.to_template)
        covered = self.back_to_crop(np.ones((model.size, model.size), np.float32), border=cv2.BORDER_CONSTANT)
        self.weight = (strength * face_mask(self.size) * covered)[..., None]  # (h, w, 1)
        self.stabilizer = TemporalStabilizer() if stabilize else None

    def back_to_crop(self, image: np.ndarray, border: int) -> np.ndarray:
        import cv2

        return cv2.warpAffine(image, self.to_crop, (self.size[1], self.size[0]), flags=cv2.INTER_LINEAR,
                              borderMode=border, borderValue=0)

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 animated crop -> the restored crop (h, w, 3) uint8, unchanged where the mask is 0."""
        import cv2

        aligned = cv2.warpAffine(crop, self.to_template, (self.model.size, self.model.size), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REFLECT)
        restored = self.back_to_crop(self.model.restore(aligned), border=cv2.BORDER_REPLICATE)
        original = crop.astype(np.float32)
        residual = restored - original
        if self.stabilizer is not None:
            residual = self.stabilizer(original, residual)
        blended = np.clip(np.rint(original + self.weight * residual), 0, 255).astype(np.uint8)
        return np.where(self.weight > 0, blended, crop)


@dataclass(frozen=True)
class RestoreOptions:
    """``demo.py --restore PATH [--restore_strength S] [--restore_model NAME] [--no-restore_stabilize]``."""

    path: str
    strength: float = 1.0
    model: Optional[str] = None
    stabilize: bool = True
    fidelity: float = 0.7
    runtime: str = "onnxruntime"

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength <= 1.0:
            raise RestoreError(f"--restore_strength must be in [0, 1], got {self.strength}")

    def check(self) -> RestoreSignature:
        """The model's table row, or :class:`RestoreError` (before anything slow is loaded)."""
        if not 0.0 <= self.fidelity <= 1.0:
            raise RestoreError(f"--restore_fidelity must be in [0, 1], got {self.fidelity}")
        return read_signature(self.path, self.model)[0]

    def load(self) -> RestorationModel:
        return RestorationModel(self.path, self.runtime, self.model, self.fidelity)


def flicker(frames: Sequence[np.ndarray], region: np.ndarray) -> float:
    """Mean absolute temporal difference (grey levels) of (h, w, 3) uint8 frames inside ``region`` ((h, w) bool)."""
    differences = [np.abs(after.astype(np.float32) - before.astype(np.float32))[region].mean()
                   for before, after in zip(frames[:-1], frames[1:])]
    return float(np.mean(differences))


def relative_flicker(frames: Sequence[np.ndarray], unrestored: Sequence[np.ndarray], region: np.ndarray) -> float:
    """The flicker of ``frames`` relative to the unrestored video's (1 = as steady as the animation itself)."""
    return flicker(frames, region) / max(flicker(unrestored, region), 1e-6)
