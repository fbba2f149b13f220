"""Pictures for people: keypoints drawn on frames, disparity maps as grey images, side-by-side rows."""
from __future__ import annotations

import colorsys
from typing import Optional

import numpy as np
import torch

from dagan.geometry import Keypoints, resize


def keypoint_colors(num_kp: int) -> np.ndarray:
    """Distinct colours (K, 3) uint8 spread over the hue circle (like the reference's gist_rainbow)."""
    return np.array([[int(255 * c) for c in colorsys.hsv_to_rgb(k / max(num_kp, 1), 1.0, 1.0)]
                     for k in range(num_kp)], dtype=np.uint8)


def to_image(tensor: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (1, H, W) in [0, 1] -> (H, W, 3) uint8."""
    array = tensor.detach().float().clamp(0, 1).cpu().numpy()
    if array.shape[0] == 1:
        array = np.repeat(array, 3, axis=0)
    return np.round(array.transpose(1, 2, 0) * 255).astype(np.uint8)


def disparity_image(disparity: torch.Tensor, size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """Disparity (1, h, w) as a grey image, near = bright, stretched to its own min..max; resized to ``size``
    (H, W) when given (a grown model's disparity is at the released size)."""
    low, high = disparity.min(), disparity.max()
    if size is not None:
        disparity = resize(disparity[None], size)[0]
    return to_image((disparity - low) / (high - low).clamp_min(1e-8))


def draw_keypoints(image: np.ndarray, value: torch.Tensor, radius: int = 3,
                   colors: Optional[np.ndarray] = None) -> np.ndarray:
    """Draw keypoints (K, 2) in normalised (x, y) as filled discs on a copy of image (H, W, 3) uint8, in ``colors``
    (K, 3) uint8 (default: :func:`keypoint_colors`)."""
    out = image.copy()
    height, width = out.shape[:2]
    rows, columns = np.mgrid[0:height, 0:width]
    colors = keypoint_colors(value.shape[0]) if colors is None else colors
    for color, (x, y) in zip(colors, value.detach().float().cpu().numpy()):
        column, row = (x + 1) / 2 * (width - 1), (y + 1) / 2 * (height - 1)
        out[(rows - row) ** 2 + (columns - column) ** 2 <= radius ** 2] = color
    return out


def visualization_row(source, driving: torch.Tensor, prediction: torch.Tensor, driving_disparity: torch.Tensor,
                      kp_driving: Keypoints, kp_norm: Keypoints, colors: Optional[np.ndarray] = None) -> np.ndarray:
    """[source + its keypoints | driving + its keypoints | result + transferred keypoints | source depth |
    driving depth] as one (H, 5W, 3) uint8 image. ``source`` is a :class:`~dagan.inference.SourceState`;
    ``colors`` (K, 3) uint8 colour the keypoints (e.g. by face region), else one hue each."""
    panels = [draw_keypoints(to_image(source.image[0]), source.keypoints.value[0], colors=colors),
              draw_keypoints(to_image(driving), kp_driving.value[0], colors=colors),
              draw_keypoints(to_image(prediction), kp_norm.value[0], colors=colors),
              disparity_image(source.disparity[0], tuple(driving.shape[-2:])),
              disparity_image(driving_disparity, tuple(driving.shape[-2:]))]
    return np.concatenate(panels, axis=1)


def training_grid(source: torch.Tensor, driving: torch.Tensor, prediction: torch.Tensor,
                  disparity_source: torch.Tensor, disparity_driving: torch.Tensor, kp_source: Keypoints,
                  kp_driving: Keypoints, max_rows: int = 4) -> np.ndarray:
    """One row per sample: source + keypoints | driving + keypoints | prediction + driving keypoints |
    source disparity | driving disparity. Tensors are batches (B, C, H, W); returns (rows*H, 5W, 3) uint8."""
    rows = []
    for index in range(min(max_rows, source.shape[0])):
        rows.append(np.concatenate([
            draw_keypoints(to_image(source[index]), kp_source.value[index]),
            draw_keypoints(to_image(driving[index]), kp_driving.value[index]),
            draw_keypoints(to_image(prediction[index]), kp_driving.value[index]),
            disparity_image(disparity_source[index], tuple(source.shape[2:])),
            disparity_image(disparity_driving[index], tuple(source.shape[2:]))], axis=1))
    return np.concatenate(rows, axis=0)
