"""Training augmentation shared by all frames of one sample (the reference's RandomFlip + ColorJitter).

The random choices are drawn once per sample (:func:`draw_augmentation`, from the sample's own
``numpy.random.Generator``) and then applied identically to every frame (:func:`apply_augmentation`):

1. Flip (``flip_param``): with probability 0.5 the clip is reversed in time (for a pair, source and
   driving swap) and the flip step stops there; otherwise, with probability 0.5, every frame is mirrored
   left-right. This is the reference's ``RandomFlip``.
2. Colour jitter (``jitter_param``): one factor per property for the whole clip, brightness, contrast and
   saturation uniform in ``[max(0, 1 - x), 1 + x]``, hue shift uniform in ``[-hue, hue]`` (in turns of the
   colour wheel), applied in a random order, as torchvision's ``ColorJitter`` that the reference runs
   through PIL. Here it runs in float32 torch (no uint8 round trip); results are clamped to [0, 1].

A draw always consumes the same amount of randomness whatever the parameters, so switching one
augmentation off does not change the others' draws.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from dagan.config import AugmentationParams

JITTER_OPERATIONS = ("brightness", "contrast", "saturation", "hue")
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")


@dataclass(frozen=True)
class AugmentationDraw:
    """The random choices for one sample.

    time_flip: reverse the frame order (then no horizontal flip).
    horizontal_flip: mirror every frame left-right.
    brightness, contrast, saturation: blend factors, 1.0 = unchanged.
    hue: hue shift in turns, 0.0 = unchanged.
    order: the order in which the four jitter operations are applied.
    """

    time_flip: bool = False
    horizontal_flip: bool = False
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0
    order: tuple[str, ...] = JITTER_OPERATIONS


NO_AUGMENTATION = AugmentationDraw()


def draw_augmentation(params: Optional[AugmentationParams], rng: np.random.Generator) -> AugmentationDraw:
    """Draw flips and jitter factors for one sample (always 7 numbers from ``rng``)."""
    time_uniform, horizontal_uniform = rng.random(2)
    brightness, contrast, saturation, hue = rng.random(4)
    order = tuple(JITTER_OPERATIONS[int(i)] for i in rng.permutation(len(JITTER_OPERATIONS)))
    if params is None:
        return NO_AUGMENTATION
    flip, jitter = params.flip_param, params.jitter_param
    time_flip = bool(flip.time_flip and time_uniform < 0.5)
    horizontal_flip = bool(not time_flip and flip.horizontal_flip and horizontal_uniform < 0.5)
    return AugmentationDraw(
        time_flip=time_flip,
        horizontal_flip=horizontal_flip,
        brightness=_factor(jitter.brightness, brightness),
        contrast=_factor(jitter.contrast, contrast),
        saturation=_factor(jitter.saturation, saturation),
        hue=float((2.0 * hue - 1.0) * jitter.hue),
        order=order,
    )


def _factor(strength: float, uniform: float) -> float:
    """Map a uniform [0, 1) number to a factor uniform in [max(0, 1 - strength), 1 + strength]."""
    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    return float(low + (high - low) * uniform)


def apply_augmentation(frames: torch.Tensor, draw: AugmentationDraw) -> torch.Tensor:
    """Apply one draw to all frames of a sample.

    Args:
        frames: ``(T, 3, H, W)`` float in [0, 1], in time order.
    Returns:
        ``(T, 3, H, W)`` in [0, 1]; reversed in time if ``draw.time_flip``.
    """
    if draw.time_flip:
        frames = frames.flip(0)
    elif draw.horizontal_flip:
        frames = frames.flip(-1)
    return color_jitter(frames, draw)


def color_jitter(images: torch.Tensor, draw: AugmentationDraw) -> torch.Tensor:
    """Brightness, contrast, saturation and hue adjustments in ``draw.order``; ``images``: ``(..., 3, H, W)``."""
    operations = {
        "brightness": lambda x: adjust_brightness(x, draw.brightness),
        "contrast": lambda x: adjust_contrast(x, draw.contrast),
        "saturation": lambda x: adjust_saturation(x, draw.saturation),
        "hue": lambda x: adjust_hue(x, draw.hue),
    }
    for name in draw.order:
        images = operations[name](images)
    return images


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma of ``(..., 3, H, W)`` images, ``(..., 1, H, W)``."""
    weights = images.new_tensor(LUMA_WEIGHTS).view(3, 1, 1)
    return (images * weights).sum(dim=-3, keepdim=True)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: float) -> torch.Tensor:
    """``factor * images + (1 - factor) * other``, clamped to [0, 1]."""
    return (factor * images + (1.0 - factor) * other).clamp(0.0, 1.0)


def adjust_brightness(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Multiply by ``factor`` (blend with black); ``images``: ``(..., 3, H, W)`` in [0, 1]."""
    if factor == 1.0:
        return images
    return (images * factor).clamp(0.0, 1.0)


def adjust_contrast(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the image's mean grey level (one mean per image, as PIL); ``(..., 3, H, W)``."""
    if factor == 1.0:
        return images
    mean = grayscale(images).mean(dim=(-3, -2, -1), keepdim=True)  # (..., 1, 1, 1)
    return _blend(images, mean, factor)


def adjust_saturation(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the greyscale image; ``(..., 3, H, W)``."""
    if factor == 1.0:
        return images
    return _blend(images, grayscale(images), factor)


def adjust_hue(images: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate the hue by ``shift`` turns (in HSV space); ``(..., 3, H, W)`` in [0, 1]."""
    if shift == 0.0:
        return images
    hue, saturation, value = rgb_to_hsv(images).unbind(dim=-3)
    hue = torch.remainder(hue + shift, 1.0)
    return hsv_to_rgb(torch.stack([hue, saturation, value], dim=-3)).clamp(0.0, 1.0)


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """``(..., 3, H, W)`` RGB in [0, 1] -> HSV with hue in [0, 1) turns, same shape."""
    red, green, blue = images.unbind(dim=-3)
    maximum, minimum = images.amax(dim=-3), images.amin(dim=-3)
    delta = maximum - minimum
    saturation = torch.where(maximum > 0, delta / maximum.clamp_min(1e-12), torch.zeros_like(delta))
    safe_delta = torch.where(delta > 0, delta, torch.ones_like(delta))
    red_c, green_c, blue_c = ((maximum - channel) / safe_delta for channel in (red, green, blue))
    hue = torch.where(maximum == red, blue_c - green_c,
                      torch.where(maximum == green, 2.0 + red_c - blue_c, 4.0 + green_c - red_c))
    hue = torch.where(delta > 0, torch.remainder(hue / 6.0, 1.0), torch.zeros_like(hue))
    return torch.stack([hue, saturation, maximum], dim=-3)


def hsv_to_rgb(images: torch.Tensor) -> torch.Tensor:
    """``(..., 3, H, W)`` HSV (hue in turns) -> RGB, same shape."""
    hue, saturation, value = images.unbind(dim=-3)
    sector = torch.floor(hue * 6.0)
    fraction = hue * 6.0 - sector
    sector = torch.remainder(sector, 6).long().unsqueeze(-3)  # (..., 1, H, W)
    p = value * (1.0 - saturation)
    q = value * (1.0 - saturation * fraction)
    t = value * (1.0 - saturation * (1.0 - fraction))
    candidates = torch.stack([  # (..., 6, H, W) per channel: the sector's (r, g, b)
        torch.stack([value, q, p, p, t, value], dim=-3),
        torch.stack([t, value, value, q, p, p], dim=-3),
        torch.stack([p, p, t, value, value, q], dim=-3),
    ], dim=-4)  # (..., 3, 6, H, W)
    index = sector.unsqueeze(-4).expand(*candidates.shape[:-3], 1, *candidates.shape[-2:])  # (..., 3, 1, H, W)
    return candidates.gather(-3, index).squeeze(-3)  # (..., 3, H, W)
