"""Paste-back: an animated face crop warped into the full-resolution picture through a soft, feathered mask.

For a crop transform ``M`` (picture -> crop, :class:`~dagan.faces.alignment.CropTransform`) and a generated crop
``G``, the result is ``out = S + mask * (W(G) + c - S)`` on the crop's footprint in the picture, ``S`` elsewhere,
where ``S`` is the source picture, ``W`` warps the crop back with ``M^-1`` (bilinear), ``mask`` is
:func:`face_mask` warped the same way, and ``c`` is a per-channel colour offset that matches the seam: the mean
of ``S - W(G)`` over the mask's feathered band (where the two are blended), smoothed over time by an
exponential moving average so that it does not flicker. Pixels where the mask is 0 are the source's own.

All work is done on the footprint (the bounding box of the crop in the picture), so the cost does not grow with
the picture's size.
"""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np

from dagan.faces.alignment import CropTransform

__all__ = ["face_mask", "footprint", "PasteBack"]

MASK_RADII = (0.43, 0.47)  # semi-axes of the mask ellipse as fractions of the crop (width, height)
MASK_FEATHER = 0.25  # width of the soft edge, in units of the ellipse's normalised radius
SEAM_BAND = (0.05, 0.95)  # mask values that count as "the seam" for colour matching
COLOUR_MOMENTUM = 0.8  # weight of the previous colour offset in the moving average


@functools.lru_cache(maxsize=8)
def face_mask(size: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 in [0, 1]: 1 inside an ellipse centred in the crop, falling smoothly (smoothstep) to 0 at
    its feathered edge, 0 at the crop's border. size: (height, width)."""
    height, width = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    radius = np.hypot((x - (width - 1) / 2) / (MASK_RADII[0] * width),
                      (y - (height - 1) / 2) / (MASK_RADII[1] * height))  # 1 on the ellipse
    ramp = np.clip((1.0 - radius) / MASK_FEATHER, 0.0, 1.0)
    mask = (ramp * ramp * (3.0 - 2.0 * ramp)).astype(np.float32)
    mask.setflags(write=False)
    return mask


def footprint(transform: CropTransform, picture_size: tuple[int, int]) -> Optional[tuple[int, int, int, int]]:
    """The crop's bounding box ``(x0, y0, x1, y1)`` (x1/y1 exclusive) in a picture of (height, width), clipped to
    it; ``None`` when they do not meet."""
    corners = transform.crop_corners()
    x0, y0 = np.floor(corners.min(axis=0)).astype(int)
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, picture_size[1]), min(y1, picture_size[0])
    if x1 <= x0 or y1 <= y0:
        return None
    return int(x0), int(y0), int(x1), int(y1)


class PasteBack:
    """Pastes generated crops of one face into pictures (one per frame) through the warped mask.

    transform: the face's crop. picture_size: (height, width) of the pictures. whole_picture: the crop is the
    whole picture (an input that already was a face crop): the mask is 1 everywhere, so the result is the
    generated crop resized to the picture. Build one per face (and, for a video source whose crop moves, one per
    frame with the colour offset carried over: see :meth:`moved`).
    """

    def __init__(self, transform: CropTransform, picture_size: tuple[int, int],
                 colour_offset: Optional[np.ndarray] = None, whole_picture: bool = False):
        import cv2

        self.transform, self.picture_size, self.whole_picture = transform, picture_size, whole_picture
        self.region = footprint(transform, picture_size)
        self.colour_offset = colour_offset  # (3,) float32, picture minus generated on the seam
        if self.region is None:
            return
        x0, y0, x1, y1 = self.region
        to_region = transform.inverse.copy()
        to_region[:, 2] -= (x0, y0)  # crop -> footprint pixels
        self.matrix = to_region
        self.size = (x1 - x0, y1 - y0)  # (width, height) for cv2
        if whole_picture:
            mask = np.ones((y1 - y0, x1 - x0), np.float32)
        else:
            mask = cv2.warpAffine(face_mask(transform.size), to_region, self.size, flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        self.mask = mask[..., None]  # (h, w, 1)
        self.seam = (mask > SEAM_BAND[0]) & (mask < SEAM_BAND[1])  # (h, w) bool

    def moved(self, transform: CropTransform) -> "PasteBack":
        """A paste-back for the same face at a new crop, keeping the colour matching's running offset."""
        return PasteBack(transform, self.picture_size, self.colour_offset, self.whole_picture)

    def warp(self, generated: np.ndarray) -> np.ndarray:
        """The generated crop (h, w, 3) uint8 warped onto the footprint: (fh, fw, 3) float32."""
        import cv2

        return cv2.warpAffine(generated, self.matrix, self.size, flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE).astype(np.float32)

    def __call__(self, output: np.ndarray, generated: np.ndarray, picture: Optional[np.ndarray] = None) -> None:
        """Blend ``generated`` (crop-sized (h, w, 3) uint8) into ``output`` (H, W, 3) uint8, in place.

        picture: the background to blend over (default: ``output`` itself, e.g. a copy of the source picture).
        """
        if self.region is None:
            return
        x0, y0, x1, y1 = self.region
        background = (output if picture is None else picture)[y0:y1, x0:x1].astype(np.float32)
        warped = self.warp(generated)
        self.update_colour(background, warped)
        blended = background + self.mask * (warped + self.colour_offset - background)
        output[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)

    def update_colour(self, background: np.ndarray, warped: np.ndarray) -> None:
        """Move the running colour offset towards this frame's mean seam difference (background - warped)."""
        if not self.seam.any():
            current = np.zeros(3, np.float32)
        else:
            current = (background[self.seam] - warped[self.seam]).mean(axis=0)
        if self.colour_offset is None:
            self.colour_offset = current
        else:
            self.colour_offset = COLOUR_MOMENTUM * self.colour_offset + (1 - COLOUR_MOMENTUM) * current
