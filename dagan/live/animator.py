"""The animation side of the live loop: the source prepared once, the anchor, one driving crop at a time.

The source portrait's work (face crop, disparity, keypoints, encoded features) is done once, at construction.
Each driving crop then costs one pass of the driving networks (``driving_keypoints``) and one of the generator
(``generate``), at batch 1. Motion is relative (FOMM's relative motion transfer,
:func:`~dagan.geometry.normalize_keypoints`, through :meth:`~dagan.faces.animation.FaceAnimator.transfer`) to an
anchor: the first driving crop after start or after :meth:`LiveAnimator.reanchor`, which should show the user's
neutral face. With ``paste_back`` the animated crop is blended into the full source picture
(:class:`~dagan.faces.paste.PasteBack`).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from dagan.faces.alignment import CropTransform, warp_to_crop
from dagan.faces.animation import FaceAnimator, MotionOptions
from dagan.faces.paste import PasteBack
from dagan.faces.plans import FacePlan
from dagan.geometry import Keypoints
from dagan.inference import to_uint8_batch

__all__ = ["LiveAnimator"]


class LiveAnimator:
    """Animates one source face with live driving crops.

    pipeline: a :class:`~dagan.inference.DaGANPipeline` (any backend). picture: the source (H, W, 3) uint8.
    face: the source face's crop plan (:meth:`~dagan.faces.animation.FaceSession.picture_faces`); None = the whole
    picture is the face (resized to the model). paste_back: return the full picture with the face animated (needs
    ``face``), else the animated crop. smooth: an optional :class:`~dagan.inference.KeypointSmoother`. restorer: an
    optional crop restorer (a :class:`~dagan.faces.restore.FaceRestorer`, ``--restore``) applied to each animated
    crop before it is shown or pasted back.
    """

    def __init__(self, pipeline, picture: np.ndarray, face: Optional[FacePlan] = None,
                 motion: MotionOptions = MotionOptions(), paste_back: bool = False, smooth=None,
                 restorer: Optional[Callable[[np.ndarray], np.ndarray]] = None):
        if paste_back and face is None:
            raise ValueError("paste_back needs the source face's crop plan")
        self.pipeline, self.picture, self.smooth, self.restorer = pipeline, picture, smooth, restorer
        self.motion = FaceAnimator(pipeline, motion)  # the relative motion transfer, shared with the demo
        crop = picture if face is None else warp_to_crop(picture, face.transform)
        self.source_crop = crop if face is not None else None
        self.source = pipeline.prepare_source(crop)  # once per source
        self.paste = PasteBack(face.transform, picture.shape[:2], whole_picture=face.whole_picture) \
            if paste_back else None
        self.anchor: Optional[Keypoints] = None
        self.scale: Optional[float] = None

    @property
    def size(self) -> tuple[int, int]:
        """The model's (height, width): the size driving crops are cut to."""
        return self.pipeline.image_size

    def warm_up(self) -> None:
        """One untimed pass of the driving networks and the generator (first calls allocate and pick kernels), so
        that the first live frame is not late; the anchor is left unset."""
        crop = self.source_crop if self.source_crop is not None else self.picture
        kp_driving = self.pipeline.driving_keypoints(self.pipeline.to_tensor([crop]))[0]
        self.pipeline.generate(self.source, kp_driving)

    def reanchor(self) -> None:
        """Measure motion from the next driving crop on (it should show a neutral face)."""
        self.anchor, self.scale = None, None

    def driving_crop(self, frame: np.ndarray, transform: CropTransform) -> np.ndarray:
        """The driving crop (h, w, 3) uint8 of a camera frame; a whole-frame transform keeps the frame as it is
        (the pipeline resizes it like the offline demo)."""
        if _is_plain_resize(transform, frame.shape[:2]):
            return frame
        return warp_to_crop(frame, transform)

    def keypoints(self, crop: np.ndarray) -> Keypoints:
        """The driving keypoints (batch of 1) of one crop (smoothed when asked)."""
        kp_driving = self.pipeline.driving_keypoints(self.pipeline.to_tensor([crop]))[0]
        return self.smooth(kp_driving) if self.smooth is not None else kp_driving

    def render(self, kp_driving: Keypoints) -> np.ndarray:
        """The animated crop (h, w, 3) uint8; the first keypoints after start or a re-anchor become the anchor."""
        if self.anchor is None:
            self.anchor = kp_driving
            self.scale = self.motion.movement_scale(self.source.keypoints, kp_driving)
        kp_norm = self.motion.transfer(self.source.keypoints, kp_driving, self.anchor, self.scale)
        crop = to_uint8_batch(self.pipeline.generate(self.source, kp_norm).prediction)[0]
        return crop if self.restorer is None else self.restorer(crop)

    def compose(self, generated: np.ndarray) -> np.ndarray:
        """The result shown: the full picture with the face pasted back, or the crop itself."""
        if self.paste is None:
            return generated
        output = self.picture.copy()
        self.paste(output, generated)
        return output


def _is_plain_resize(transform: CropTransform, frame_size: tuple[int, int]) -> bool:
    from dagan.faces.alignment import resize_transform

    return np.array_equal(transform.matrix, resize_transform(frame_size, transform.size).matrix)
