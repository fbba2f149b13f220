"""The animation pipeline shared by ``demo.py``, the web app and the evaluator.

    pipeline = DaGANPipeline.load("DaGAN_vox_adv_256.pth.tar", depth_checkpoint="depth_face_model")
    for frame in pipeline.animate(source_image, open_video("driving.mp4")):
        ...   # (256, 256, 3) uint8 frames, one per driving frame, produced lazily

Work on the source (disparity, keypoints, encoded features) is done once per source; driving frames are pulled
lazily from any iterable, processed ``batch_size`` at a time, and results are yielded one by one, so memory
stays bounded for videos of any length. Batching does not change the results (beyond float rounding).
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, NamedTuple, Optional

import numpy as np
import torch

from dagan.config import Config
from dagan.geometry import Keypoints, adapt_movement_scale, normalize_keypoints
from dagan.io.images import MediaError, resize_to_model, to_uint8
from dagan.model import DaGAN
from dagan.networks.generator import SourceFeatures
from dagan.runtime.backends import ExportedNetworks, TorchNetworks
from dagan.runtime.autotune import CANDIDATES, speed_settings, store_speed_settings
from dagan.runtime.cache import cached_export
from dagan.runtime.defaults import SpeedSettings

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class InferenceError(RuntimeError):
    """A problem with the request (device, precision, inputs); the message says what to do."""


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA, then MPS, then the CPU; asking for an absent accelerator is an error."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InferenceError("CUDA was asked for but no CUDA GPU is available to this torch build; use --device cpu")
    if device == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise InferenceError("MPS was asked for but is not available; use --device cpu")
    return torch.device(device)


class OneEuroFilter:
    """Speed-adaptive low-pass filter (Casiez et al., CHI 2012) for keypoint trajectories.

    x_hat_t = a x_t + (1 - a) x_hat_{t-1}, a = 1 / (1 + tau / T), tau = 1 / (2 pi f_c),
    f_c = min_cutoff + beta |dx_hat/dt|: slow motion is smoothed strongly (no jitter), fast motion barely (no lag).
    """

    def __init__(self, frequency: float, min_cutoff: float = 1.0, beta: float = 0.05, derivative_cutoff: float = 1.0):
        self.period = 1.0 / frequency
        self.min_cutoff, self.beta, self.derivative_cutoff = min_cutoff, beta, derivative_cutoff
        self.previous: Optional[torch.Tensor] = None
        self.previous_derivative: Optional[torch.Tensor] = None

    def _alpha(self, cutoff: torch.Tensor | float) -> torch.Tensor | float:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / self.period)

    def __call__(self, value: torch.Tensor) -> torch.Tensor:
        if self.previous is None:
            self.previous, self.previous_derivative = value, torch.zeros_like(value)
            return value
        derivative = (value - self.previous) / self.period
        alpha_derivative = self._alpha(self.derivative_cutoff)
        derivative = alpha_derivative * derivative + (1 - alpha_derivative) * self.previous_derivative
        alpha = self._alpha(self.min_cutoff + self.beta * derivative.abs())
        smoothed = alpha * value + (1 - alpha) * self.previous
        self.previous, self.previous_derivative = smoothed, derivative
        return smoothed


class KeypointSmoother:
    """One-Euro filtering of keypoint positions and Jacobians, frame after frame (one video at a time)."""

    def __init__(self, fps: float, min_cutoff: float = 1.0, beta: float = 0.05):
        self.value_filter = OneEuroFilter(fps, min_cutoff, beta)
        self.jacobian_filter = OneEuroFilter(fps, min_cutoff, beta)

    def __call__(self, kp: Keypoints) -> Keypoints:
        """kp: a batch of consecutive frames (B, K, ...); filtered in time order."""
        values, jacobians = [], []
        for index in range(kp.value.shape[0]):
            values.append(self.value_filter(kp.value[index]))
            if kp.jacobian is not None:
                jacobians.append(self.jacobian_filter(kp.jacobian[index]))
        return Keypoints(torch.stack(values), torch.stack(jacobians) if jacobians else None)


@dataclass
class SourceState:
    """Everything computed once per source image: image (1, 3, H, W), disparity (1, 1, H, W), keypoints,
    and the encoded generator features."""

    image: torch.Tensor
    disparity: torch.Tensor
    keypoints: Keypoints
    features: SourceFeatures


class AnimatedFrame(NamedTuple):
    """One result: the frame (H, W, 3) uint8, the transferred keypoints that drove it (batch of 1) and, when
    asked for, the visualisation panel row (uint8)."""

    frame: np.ndarray
    keypoints: Keypoints
    visualization: Optional[np.ndarray]


KeypointEdit = Callable[[Keypoints, Keypoints, float], Keypoints]


def chunks(iterable: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of ``size`` items (the last may be shorter), pulling items lazily."""
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class DaGANPipeline:
    """Inference wrapper around :class:`~dagan.model.DaGAN`: preprocessing, batching, relative motion, smoothing.

    Unset speed options take the measured fastest values for the device
    (:func:`~dagan.runtime.autotune.speed_settings`: this machine's auto-tune result when stored, else on a CPU
    batch 1, no ``channels_last``); batch norms
    are folded into a frozen copy of the networks (``model`` itself is left unchanged). ``compile=True`` runs the
    per-frame networks through ``torch.compile`` (inductor, weights frozen): a one-off compilation of about a
    minute, then faster frames. ``networks`` replaces the torch model by another backend's networks (see
    :mod:`dagan.runtime.backends`; :meth:`from_exported` builds one from exported ONNX graphs).
    """

    def __init__(self, model: Optional[DaGAN], device: str | torch.device = "auto", precision: str = "fp32",
                 batch_size: Optional[int] = None, channels_last: Optional[bool] = None, compile: bool = False,
                 fold_batch_norm: bool = True, cuda_graphs: bool = False, networks=None,
                 config: Optional[Config] = None):
        self.device = resolve_device(device) if isinstance(device, str) else device
        if precision not in PRECISIONS:
            raise InferenceError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision != "fp32" and self.device.type != "cuda":
            raise InferenceError(f"--precision {precision} needs a CUDA GPU; on {self.device.type} use fp32")
        self.config = config if config is not None else model.config
        defaults = speed_settings(self.device, self.config)  # auto-tuned on this machine, else the measured table
        batch_size = defaults.batch_size if batch_size is None else batch_size
        if batch_size < 1:
            raise InferenceError(f"batch_size must be >= 1, got {batch_size}")
        self.precision, self.batch_size = precision, batch_size
        if networks is None:
            channels_last = defaults.channels_last if channels_last is None else channels_last
            networks = TorchNetworks(model, self.device, channels_last=channels_last, compile=compile,
                                     fold_batch_norm=fold_batch_norm, cuda_graphs=cuda_graphs)
        self.networks = networks
        self.model = getattr(networks, "model", None)  # the frozen torch model (None for exported graphs)
        frame_shape = self.config.dataset_params.frame_shape
        self.image_size = (frame_shape[0], frame_shape[1])

    # Construction.
    @classmethod
    def load(cls, checkpoint: str, depth_checkpoint: Optional[str] = None, config: Config | str | None = None,
             **kwargs) -> "DaGANPipeline":
        """From our checkpoint (config inside) or the official release (main file + depth folder)."""
        from dagan.model import load_checkpoint_or_official

        return cls(load_checkpoint_or_official(checkpoint, depth_checkpoint, config), **kwargs)

    @classmethod
    def from_exported(cls, directory: str, backend: str = "onnxruntime", threads: Optional[int] = None,
                      batch_size: Optional[int] = None) -> "DaGANPipeline":
        """From graphs written by ``scripts/export_onnx.py``, run by ``backend`` (onnxruntime or openvino);
        no torch weights are loaded. Tensors between the graphs live on the CPU."""
        networks = ExportedNetworks(directory, backend, threads)
        return cls(None, device="cpu", batch_size=batch_size, networks=networks, config=networks.manifest.config)

    # Preprocessing.
    def to_tensor(self, images: list[np.ndarray]) -> torch.Tensor:
        """HxWx3 images (uint8, or float in [0, 1]) -> (B, 3, H, W) float32 on the device, resized to the
        model's resolution the way the reference demo does (skimage, anti-aliased) when they differ."""
        arrays = []
        for image in images:
            if image.dtype == np.uint8:
                image = image.astype(np.float32) / 255.0
            if tuple(image.shape[:2]) != self.image_size:
                image = resize_to_model(image, self.image_size)
            arrays.append(np.ascontiguousarray(image[..., :3], dtype=np.float32))
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(self.device)
        return batch.contiguous(memory_format=self.networks.memory_format)

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    # Source and driving work.
    @torch.no_grad()
    def prepare_source(self, source_image: np.ndarray) -> SourceState:
        """Disparity, keypoints and generator features of the source image (H, W, 3), computed once."""
        return self.source_state(self.to_tensor([source_image]))

    @torch.no_grad()
    def source_state(self, image: torch.Tensor) -> SourceState:
        """:meth:`prepare_source` for a source already on the model's device: image (1, 3, H, W) in [0, 1]."""
        image = image.contiguous(memory_format=self.networks.memory_format)
        with self.autocast():
            disparity = self.networks.depth(image)
            keypoints = self.networks.keypoints(image, disparity)
            features = self.networks.encode_source(image, disparity)
        return SourceState(image, disparity, _float(keypoints), features)

    @torch.no_grad()
    def driving_keypoints(self, frames: torch.Tensor) -> tuple[Keypoints, torch.Tensor]:
        """Keypoints and disparities of driving frames (B, 3, H, W)."""
        with self.autocast():
            disparity = self.networks.frame_depth(frames)
            keypoints = self.networks.frame_keypoints(frames, disparity)
        return _float(keypoints), disparity

    @torch.no_grad()
    def animate(self, source_image: np.ndarray, driving_frames: Iterable[np.ndarray], relative: bool = True,
                adapt_scale: bool = True, driving_initial: Optional[np.ndarray] = None,
                smooth: Optional[KeypointSmoother] = None, visualize: bool = False, edit: Optional[KeypointEdit] = None,
                keypoint_colors: Optional[np.ndarray] = None) -> Iterator[AnimatedFrame]:
        """Yield one :class:`AnimatedFrame` per driving frame, consuming ``driving_frames`` lazily.

        relative / adapt_scale: DaGAN's relative motion transfer (see :func:`~dagan.geometry.normalize_keypoints`),
        anchored at ``driving_initial`` (default: the first driving frame; ``find_best_frame`` picks a better one).
        smooth: a :class:`KeypointSmoother` applied to the driving keypoints before the transfer.
        edit: ``edit(kp_driving, anchor, movement_scale) -> kp_driving`` applied to the driving keypoints just
        before the transfer (a :class:`dagan.motion.MotionEditor`: pose and expression apart, regions, openness;
        it also records motion files); None transfers them as they are.
        keypoint_colors: (K, 3) uint8 colours of the keypoints in the ``visualize`` panels (e.g. their regions).
        """
        source = self.prepare_source(source_image)
        anchor: Optional[Keypoints] = None
        scale: Optional[float] = None
        if driving_initial is not None:
            anchor = self.driving_keypoints(self.to_tensor([driving_initial]))[0]
        for batch in chunks(driving_frames, self.batch_size):
            frames = self.to_tensor(batch)
            kp_driving, disparity = self.driving_keypoints(frames)
            if smooth is not None:
                kp_driving = smooth(kp_driving)
            if anchor is None:
                anchor = kp_driving.index(slice(0, 1))
            kp_norm, scale = self.transfer(source, kp_driving, anchor, relative, adapt_scale, scale, edit)
            output = self.generate(source, kp_norm, visualize)
            predictions = to_uint8_batch(output.prediction)
            for index, prediction in enumerate(predictions):
                one = slice(index, index + 1)
                panel = None
                if visualize:
                    from dagan.visualization import visualization_row

                    panel = visualization_row(source, frames[index], output.prediction[index], disparity[index],
                                              kp_driving.index(one), kp_norm.index(one), keypoint_colors)
                yield AnimatedFrame(prediction, kp_norm.index(one), panel)

    @torch.no_grad()
    def animate_keypoints(self, source_image: np.ndarray, driving_keypoints: Iterable[Keypoints], anchor: Keypoints,
                          relative: bool = True, adapt_scale: bool = True,
                          edit: Optional[KeypointEdit] = None) -> Iterator[AnimatedFrame]:
        """:meth:`animate` from driving keypoints instead of frames (a motion file, speech): batches (B, K, ...) of
        driving keypoints and their anchor (1, K, ...). Batches of the sizes :meth:`animate` used give its frames
        bit for bit."""
        source = self.prepare_source(source_image)
        anchor = Keypoints(anchor.value.to(self.device),
                           None if anchor.jacobian is None else anchor.jacobian.to(self.device))
        scale: Optional[float] = None
        for kp_driving in driving_keypoints:
            kp_driving = Keypoints(kp_driving.value.to(self.device),
                                   None if kp_driving.jacobian is None else kp_driving.jacobian.to(self.device))
            kp_norm, scale = self.transfer(source, kp_driving, anchor, relative, adapt_scale, scale, edit)
            predictions = to_uint8_batch(self.generate(source, kp_norm).prediction)
            for index, prediction in enumerate(predictions):
                yield AnimatedFrame(prediction, kp_norm.index(slice(index, index + 1)), None)

    @staticmethod
    def transfer(source: SourceState, kp_driving: Keypoints, anchor: Keypoints, relative: bool = True,
                 adapt_scale: bool = True, scale: Optional[float] = None, edit: Optional[KeypointEdit] = None
                 ) -> tuple[Keypoints, Optional[float]]:
        """The source keypoints moved by the driving keypoints relative to ``anchor``, and the movement scale
        (computed on the first call, then passed back in). ``edit`` changes the driving keypoints first."""
        if relative and adapt_scale and scale is None:
            scale = adapt_movement_scale(source.keypoints, anchor)
        if edit is not None:
            kp_driving = edit(kp_driving, anchor, scale if (relative and adapt_scale) else 1.0)
        kp_norm = normalize_keypoints(source.keypoints, kp_driving, anchor, use_relative_movement=relative,
                                      use_relative_jacobian=relative, movement_scale=scale if adapt_scale else 1.0)
        return kp_norm, scale

    @torch.no_grad()
    def generate(self, source: SourceState, kp_norm: Keypoints, return_deformed: bool = False):
        """Render the prepared source with transferred keypoints (B, K, ...) -> GeneratorOutput."""
        batch = kp_norm.value.shape[0]
        with self.autocast():
            return self.networks.render(source.image.expand(batch, -1, -1, -1), source.keypoints, kp_norm,
                                        source.features.expand(batch), return_deformed=return_deformed)


def frame_at(driving_frames: Iterable[np.ndarray], index: int) -> np.ndarray:
    """Frame ``index`` of a re-iterable frame source (a VideoSource reads the video again)."""
    count = 0
    for count, frame in enumerate(driving_frames, start=1):
        if count - 1 == index:
            return frame
    raise MediaError(f"frame {index} is past the end of the driving video ({count} frames)")


def _float(keypoints: Keypoints) -> Keypoints:
    """Keypoints in float32 (matrix inverses and hull areas stay accurate under autocast)."""
    return Keypoints(keypoints.value.float(), None if keypoints.jacobian is None else keypoints.jacobian.float())


def to_uint8_batch(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8, rounded like ``skimage.img_as_ubyte``."""
    return to_uint8(images.float().permute(0, 2, 3, 1).cpu().numpy())


# Exported pipelines (the export cache is dagan.runtime.cache).
def exported_pipeline(model: DaGAN, backend: str, batch_size: Optional[int] = None):
    """A :class:`DaGANPipeline` running ``model``'s cached export on ``backend``."""
    return DaGANPipeline.from_exported(cached_export(model), backend, batch_size=batch_size)


def exported_pipeline_or_none(model: DaGAN, backend: str, batch_size: Optional[int] = None):
    """:func:`exported_pipeline`, or None (with a one-line warning) when ``model`` cannot run on ``backend``: what
    ``--backend auto`` does before falling back to torch."""
    try:
        return exported_pipeline(model, backend, batch_size=batch_size)
    except Exception as error:  # an export this model does not support: torch runs everything
        print(f"warning: could not run the model on {backend} ({str(error).splitlines()[0]}); running it on torch",
              file=sys.stderr)
        return None


# INT8 (NNCF post-training quantisation on OpenVINO; the mechanics are dagan.runtime.quantize).
MIN_INT8_PSNR = 35.0  # dB against the fp32 frames on held-out driving frames: below it the INT8 model is refused


def frame_psnr(reference: np.ndarray, frame: np.ndarray) -> float:
    """PSNR (dB) of one uint8 frame against another: 10 log10(255^2 / MSE); infinite when they are equal."""
    error = np.mean((reference.astype(np.float64) - frame.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0 ** 2 / error))


def int8_pipeline(model: DaGAN, source_image: np.ndarray, calibration_frames: list[np.ndarray],
                  held_out_frames: list[np.ndarray], min_psnr: float = MIN_INT8_PSNR,
                  graphs: Optional[tuple[str, ...]] = None) -> tuple["DaGANPipeline", float]:
    """``model``'s per-frame graphs quantised to INT8 with NNCF and run by OpenVINO (batch 1), and their mean PSNR
    (dB) against fp32 on ``held_out_frames``; :class:`InferenceError` (with the figure) below ``min_psnr``.

    Calibration records the inputs the graphs receive while the fp32 export animates ``source_image`` (H, W, 3)
    with ``calibration_frames``; the quantised folder is kept beside the cached export, one per calibration set.
    """
    import hashlib
    import os

    from dagan.runtime.quantize import QUANTISED_GRAPHS, quantize_export, recorded_feeds

    graphs = graphs or QUANTISED_GRAPHS

    directory = cached_export(model)
    fp32 = DaGANPipeline.from_exported(directory, "openvino", batch_size=1)
    digest = hashlib.sha256(",".join(graphs).encode() + source_image.tobytes())
    for frame in calibration_frames:
        digest.update(frame.tobytes())
    int8_directory = f"{directory}-int8-{digest.hexdigest()[:12]}"
    if not os.path.isdir(int8_directory):
        print(f"quantising to INT8 with NNCF on {len(calibration_frames)} frames, once, into {int8_directory} ...",
              file=sys.stderr)
        with recorded_feeds(fp32.networks) as feeds:
            for _ in fp32.animate(source_image, calibration_frames):
                pass
        quantize_export(directory, int8_directory, feeds, graphs)
    int8 = DaGANPipeline.from_exported(int8_directory, "openvino", batch_size=1)
    anchor = held_out_frames[0]
    pairs = zip(fp32.animate(source_image, held_out_frames, driving_initial=anchor),
                int8.animate(source_image, held_out_frames, driving_initial=anchor))
    psnr = float(np.mean([min(frame_psnr(full.frame, quantised.frame), 100.0) for full, quantised in pairs]))
    if psnr < min_psnr:
        raise InferenceError(f"the INT8 model is refused: {psnr:.1f} dB PSNR against fp32 on {len(held_out_frames)} "
                             f"held-out frames, under the {min_psnr:g} dB gate; run in fp32 (drop --precision int8) "
                             "or calibrate on frames closer to your input (--calibration)")
    return int8, psnr


# Auto-tune: time the speed settings on this machine (stored by dagan.runtime.autotune).
def candidate_pipeline(model, device: torch.device, candidate: SpeedSettings):
    """The pipeline that runs ``candidate`` (an exported one, from the export cache, for other backends)."""
    if candidate.backend != "torch":
        return exported_pipeline(model, candidate.backend, batch_size=candidate.batch_size)
    return DaGANPipeline(model, device=device, batch_size=candidate.batch_size, channels_last=candidate.channels_last)


@torch.no_grad()
def autotune(model, device: torch.device, repeats: int = 2, backends: tuple[str, ...] = ("torch",)
             ) -> SpeedSettings:
    """Time :data:`CANDIDATES` on ``model`` (best per-frame time of ``repeats`` calls after one warm-up), and batch
    1 on each other runtime in ``backends``, store the fastest for this machine and return it."""
    height, width = model.config.dataset_params.frame_shape[:2]
    images = torch.rand(3, 3, height, width, generator=torch.Generator().manual_seed(0))
    best: Optional[tuple[float, SpeedSettings]] = None
    candidates = CANDIDATES + tuple(SpeedSettings(1, False, backend=backend) for backend in backends
                                    if backend != "torch")
    for candidate in candidates:
        pipeline = candidate_pipeline(model, device, candidate)
        source = pipeline.source_state(images[:1].to(device).contiguous(memory_format=pipeline.networks.memory_format))
        frames = images[1:1 + candidate.batch_size].to(device).contiguous(memory_format=pipeline.networks.memory_format)

        def frame() -> None:
            keypoints, _ = pipeline.driving_keypoints(frames)
            pipeline.generate(source, normalize_keypoints(source.keypoints, keypoints, keypoints.index(slice(0, 1)),
                                                          use_relative_movement=True, use_relative_jacobian=True))
            if device.type == "cuda":
                torch.cuda.synchronize()
        frame()
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            frame()
            seconds.append((time.perf_counter() - start) / candidate.batch_size)
        if best is None or min(seconds) < best[0]:
            best = (min(seconds), candidate)
    store_speed_settings(device, model.config, best[1])
    return best[1]
