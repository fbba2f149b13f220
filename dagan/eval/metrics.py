"""Pixel metrics (L1, SSIM, PSNR), the metric catalogue and per-frame accumulation.

Images: ``(H, W, 3)`` RGB, ``uint8`` in [0, 255] or floating point in [0, 1]; both images of a pair must have
the same shape. Every metric works on values in [0, 1] (uint8 is divided by 255):

- ``l1``: mean absolute difference over pixels and channels (FOMM's reconstruction loss), in [0, 1].
- ``ssim``: ``skimage.metrics.structural_similarity(generated, reference, channel_axis=-1, data_range=1.0)``
  (scikit-image defaults otherwise: 7x7 uniform window, K1 = 0.01, K2 = 0.03), 1 for identical images.
- ``psnr``: ``skimage.metrics.peak_signal_noise_ratio(reference, generated, data_range=1.0)`` in dB. Identical
  images give ``inf`` (no cap); an item or summary mean that includes such a frame is ``inf`` too, and JSON
  files write it as the string ``"inf"``.

A video's value is the mean of its frames' values, and a summary's value is the mean over all frames of all
items (FOMM averages its reconstruction loss over frames the same way). PRMSE is the exception: it is the root
of the mean squared angle error over the frames (see :mod:`dagan.eval.face_metrics`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

__all__ = [
    "METRICS",
    "METRIC_NAMES",
    "MetricSpec",
    "MetricTotal",
    "as_float_image",
    "l1_distance",
    "psnr",
    "ssim",
]


@dataclass(frozen=True)
class MetricSpec:
    """What a metric compares and how it is reported.

    name: the ``--metrics`` name. needs: ``"reference"`` (the real frame: ground truth, or the driving frame)
    or ``"source"`` (the source image). ground_truth: needs a pixel-aligned real frame (not defined for
    cross-identity animation). higher_is_better: the direction of improvement. unit: for the table.
    root_mean_square: the value is ``sqrt(mean(per-frame values))`` (per-frame values are squared errors).
    """

    name: str
    description: str
    needs: str
    ground_truth: bool
    higher_is_better: bool
    unit: str = ""
    root_mean_square: bool = False


METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in (
    MetricSpec("l1", "mean absolute pixel difference in [0, 1]", "reference", True, False),
    MetricSpec("ssim", "structural similarity (scikit-image, data_range 1)", "reference", True, True),
    MetricSpec("psnr", "peak signal-to-noise ratio (scikit-image, data_range 1)", "reference", True, True, "dB"),
    MetricSpec("lpips", "learned perceptual image patch similarity", "reference", True, False),
    MetricSpec("akd", "average 68-landmark distance to the reference", "reference", False, False, "px"),
    MetricSpec("aed", "identity-embedding L2 distance to the reference", "reference", False, False),
    MetricSpec("csim", "identity-embedding cosine similarity to the source", "source", False, True),
    MetricSpec("prmse", "RMSE of head pose (pitch, yaw, roll) against the reference", "reference", False, False,
               "deg", root_mean_square=True),
)}
METRIC_NAMES: tuple[str, ...] = tuple(METRICS)


@dataclass
class MetricTotal:
    """Running sum of one metric's per-frame values.

    count: frames with a value; skipped: frames without one (no face found). ``value`` is the mean, or the root
    of the mean for root-mean-square metrics, or ``None`` when no frame had a value.
    """

    root_mean_square: bool = False
    total: float = 0.0
    count: int = 0
    skipped: int = 0

    def add(self, value: Optional[float]) -> None:
        """Add one frame's value; ``None`` counts the frame as skipped."""
        if value is None:
            self.skipped += 1
        else:
            self.total += float(value)
            self.count += 1

    def merge(self, other: "MetricTotal") -> None:
        self.total += other.total
        self.count += other.count
        self.skipped += other.skipped

    @property
    def value(self) -> Optional[float]:
        if self.count == 0:
            return None
        mean = self.total / self.count
        return math.sqrt(mean) if self.root_mean_square else mean


def as_float_image(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 in [0, 255] or float in [0, 1] -> float64 in [0, 1] (other dtypes: ValueError)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float64)
    raise ValueError(f"expected a uint8 or float image, got dtype {image.dtype}")


def _pair(generated: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    generated, reference = as_float_image(generated), as_float_image(reference)
    if generated.shape != reference.shape:
        raise ValueError(f"images differ in size: generated {generated.shape}, reference {reference.shape}")
    return generated, reference


def l1_distance(generated: np.ndarray, reference: np.ndarray) -> float:
    """Mean absolute difference of two images, in [0, 1] (0 for identical images)."""
    generated, reference = _pair(generated, reference)
    return float(np.abs(generated - reference).mean())


def ssim(generated: np.ndarray, reference: np.ndarray) -> float:
    """scikit-image's SSIM over the three channels (``channel_axis=-1, data_range=1.0``); 1 for identical images."""
    generated, reference = _pair(generated, reference)
    return float(structural_similarity(generated, reference, channel_axis=-1, data_range=1.0))


def psnr(generated: np.ndarray, reference: np.ndarray) -> float:
    """scikit-image's PSNR in dB (``data_range=1.0``); ``inf`` for identical images (no cap)."""
    generated, reference = _pair(generated, reference)
    if not np.any(generated != reference):
        return math.inf  # skimage would divide by zero (and warn) to get the same value
    return float(peak_signal_noise_ratio(reference, generated, data_range=1.0))


PIXEL_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "l1": l1_distance, "ssim": ssim, "psnr": psnr}
PIXEL_BACKENDS = {"l1": "numpy", "ssim": "skimage", "psnr": "skimage"}
