"""Animating the faces of a whole picture (or of every frame of a source video) with one driving video.

Built on :class:`~dagan.inference.DaGANPipeline`'s public steps: per face, the crop
(:func:`~dagan.faces.alignment.warp_to_crop`) goes through ``prepare_source`` once; the driving frames are cropped
(:class:`~dagan.faces.plans.VideoCrops`) and go through ``driving_keypoints`` once per batch, shared by every
face; each face's keypoints follow the driving motion (FOMM relative motion,
:func:`~dagan.geometry.normalize_keypoints`, with a motion strength) and ``generate`` renders its crop, which
:class:`~dagan.faces.paste.PasteBack` blends into a copy of the full picture. One pass over the driving video
animates every face.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from dagan.faces.alignment import warp_to_crop
from dagan.faces.paste import PasteBack
from dagan.faces.plans import FacePlan, VideoCrops
from dagan.geometry import Keypoints, adapt_movement_scale, normalize_keypoints

__all__ = ["MotionOptions", "FaceAnimator"]


@dataclass(frozen=True)
class MotionOptions:
    """How driving motion is transferred. relative / adapt_scale: as ``demo.py --relative --adapt_scale``.
    motion_scale: strength of the relative motion (0 = still, 1 = as driven; needs ``relative``)."""

    relative: bool = True
    adapt_scale: bool = True
    motion_scale: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.motion_scale <= 3.0:
            raise ValueError(f"motion_scale must be in [0, 3], got {self.motion_scale}")
        if self.motion_scale != 1.0 and not self.relative:
            raise ValueError("motion_scale scales relative motion: add --relative (or leave --motion_scale at 1)")


class FaceAnimator:
    """Animates chosen faces with a driving video, yielding full pictures (``paste_back``) or the first face's crop.

    pipeline: a :class:`~dagan.inference.DaGANPipeline`. smooth: an optional
    :class:`~dagan.inference.KeypointSmoother` for the driving keypoints.
    """

    def __init__(self, pipeline, motion: MotionOptions = MotionOptions(), smooth=None, paste_back: bool = True):
        self.pipeline, self.motion, self.smooth, self.paste_back = pipeline, motion, smooth, paste_back

    @property
    def size(self) -> tuple[int, int]:
        return self.pipeline.image_size

    def transfer(self, kp_source: Keypoints, kp_driving: Keypoints, anchor: Keypoints) -> Keypoints:
        """Source keypoints moved by the driving motion relative to ``anchor`` (batch of driving frames)."""
        scale = adapt_movement_scale(kp_source, anchor) if self.motion.relative and self.motion.adapt_scale else 1.0
        return normalize_keypoints(kp_source, kp_driving, anchor, use_relative_movement=self.motion.relative,
                                   use_relative_jacobian=self.motion.relative, movement_scale=scale,
                                   motion_strength=self.motion.motion_scale)

    def render(self, source, kp_norm: Keypoints) -> np.ndarray:
        """(B, h, w, 3) uint8 crops of one prepared source at the transferred keypoints."""
        from dagan.inference import to_uint8_batch

        return to_uint8_batch(self.pipeline.generate(source, kp_norm).prediction)

    def driving_batches(self, driving_frames: Iterable[np.ndarray], driving_crops: VideoCrops,
                        driving_initial: Optional[np.ndarray] = None) -> Iterator[tuple[Keypoints, Keypoints, int]]:
        """Yield ``(driving keypoints of a batch, anchor keypoints, batch length)``; the anchor is the cropped
        ``driving_initial`` (cropped like frame 0) or the first driving frame."""
        from dagan.inference import chunks

        pipeline = self.pipeline
        anchor = None
        if driving_initial is not None:
            crop = warp_to_crop(driving_initial, driving_crops.transform(0, self.size))
            anchor = pipeline.driving_keypoints(pipeline.to_tensor([crop]))[0]
        for batch in chunks(enumerate(driving_frames), pipeline.batch_size):
            crops = [warp_to_crop(frame, driving_crops.transform(index, self.size)) for index, frame in batch]
            kp_driving, _ = pipeline.driving_keypoints(pipeline.to_tensor(crops))
            if self.smooth is not None:
                kp_driving = self.smooth(kp_driving)
            if anchor is None:
                anchor = kp_driving.index(slice(0, 1))
            yield kp_driving, anchor, len(batch)

    def animate_picture(self, picture: np.ndarray, faces: Sequence[FacePlan], driving_frames: Iterable[np.ndarray],
                        driving_crops: VideoCrops, driving_initial: Optional[np.ndarray] = None) -> Iterator[np.ndarray]:
        """One frame per driving frame: picture (H, W, 3) uint8 with every face of ``faces`` animated (paste-back),
        or the first face's (h, w, 3) crop (no paste-back)."""
        if not faces:
            raise ValueError("no face to animate")
        faces = faces if self.paste_back else faces[:1]
        sources = [self.pipeline.prepare_source(warp_to_crop(picture, face.transform)) for face in faces]
        pastes = [PasteBack(face.transform, picture.shape[:2], whole_picture=face.whole_picture) for face in faces]
        for kp_driving, anchor, count in self.driving_batches(driving_frames, driving_crops, driving_initial):
            rendered = [self.render(source, self.transfer(source.keypoints, kp_driving, anchor)) for source in sources]
            for index in range(count):
                if not self.paste_back:
                    yield rendered[0][index]
                    continue
                output = picture.copy()
                for paste, crops in zip(pastes, rendered):
                    paste(output, crops[index])
                yield output

    def animate_video(self, source_frames: Iterable[np.ndarray], source_crops: VideoCrops,
                      driving_frames: Iterable[np.ndarray], driving_crops: VideoCrops) -> Iterator[np.ndarray]:
        """A source video animated frame by frame: source frame t, cropped by ``source_crops``, follows driving
        frame t's motion relative to driving frame 0 (movement scale from source frame 0). Stops at the shorter
        video. Yields full frames (paste-back) or crops."""
        pipeline = self.pipeline
        source_iterator = enumerate(source_frames)
        paste: Optional[PasteBack] = None
        scale: Optional[float] = None
        for kp_driving, anchor, count in self.driving_batches(driving_frames, driving_crops):
            for offset in range(count):
                item = next(source_iterator, None)
                if item is None:
                    return
                index, frame = item
                transform = source_crops.transform(index, self.size)
                source = pipeline.prepare_source(warp_to_crop(frame, transform))
                if scale is None:
                    scale = (adapt_movement_scale(source.keypoints, anchor)
                             if self.motion.relative and self.motion.adapt_scale else 1.0)
                kp_one = kp_driving.index(slice(offset, offset + 1))
                kp_norm = normalize_keypoints(source.keypoints, kp_one, anchor, use_relative_movement=self.motion.relative,
                                              use_relative_jacobian=self.motion.relative, movement_scale=scale,
                                              motion_strength=self.motion.motion_scale)
                crop = self.render(source, kp_norm)[0]
                if not self.paste_back:
                    yield crop
                    continue
                if paste is None:
                    paste = PasteBack(transform, frame.shape[:2], whole_picture=source_crops.boxes is None)
                else:
                    paste = paste.moved(transform)
                output = frame.copy()
                paste(output, crop)
                yield output

