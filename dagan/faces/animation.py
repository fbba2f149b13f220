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

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, NamedTuple, Optional, Sequence

import numpy as np

from dagan.faces.alignment import CropBox, Framing, resize_transform, warp_to_crop
from dagan.faces.paste import PasteBack
from dagan.faces.restore import FaceRestorer, RestoreOptions
from dagan.faces.plans import FacePlan, FaceSelection, VideoCrops, plan_picture_faces, plan_video_crops
from dagan.geometry import Keypoints, adapt_movement_scale, normalize_keypoints
from dagan.inference import AnimatedFrame
from dagan.motion import Motion, MotionControl, MotionEditor, motion_editor

if TYPE_CHECKING:
    import torch

__all__ = ["MotionOptions", "FaceOptions", "FaceAnimator", "FaceSession", "fit_picture", "PHOTO_DETECT_MAX_SIDE"]

PHOTO_DETECT_MAX_SIDE = 1280  # photos are searched for faces at up to this size (small faces in big photos)


class DrivingBatch(NamedTuple):
    """Cropped driving frames (B, 3, h, w) on the model's device, their keypoints and disparities (B, 1, h, w),
    and the keypoints of the anchor frame (batch of 1) that relative motion is measured from. A motion file's
    batches have keypoints only (frames and disparity None)."""

    frames: Optional["torch.Tensor"]
    keypoints: Keypoints
    disparity: Optional["torch.Tensor"]
    anchor: Keypoints

    def __len__(self) -> int:
        return int(self.keypoints.value.shape[0])


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
    :class:`~dagan.inference.KeypointSmoother` for the driving keypoints. control: the motion edits
    (:class:`dagan.motion.MotionControl`), made per face by a :class:`dagan.motion.MotionEditor`; analyzer: the
    face analyzer its regions and openness targets need; recorder: a :class:`dagan.motion.MotionRecorder` that
    sees the driving keypoints (``--save_motion``). What the user should be told goes to ``messages``. restorer:
    an optional callable that makes one :class:`~dagan.faces.restore.FaceRestorer` per face (restoration of the
    animated crops before paste-back).
    """

    def __init__(self, pipeline, motion: MotionOptions = MotionOptions(), smooth=None, paste_back: bool = True,
                 control: MotionControl = MotionControl(), analyzer=None, recorder=None,
                 messages: Optional[list[str]] = None,
                 restorer: Optional[Callable[[], Callable[[np.ndarray], np.ndarray]]] = None):
        self.pipeline, self.motion, self.smooth, self.paste_back = pipeline, motion, smooth, paste_back
        self.control, self.analyzer, self.recorder = control, analyzer, recorder
        self.messages = messages if messages is not None else []
        self.restorer = restorer

    def restorers(self, count: int) -> list[Callable[[np.ndarray], np.ndarray]]:
        """One crop restorer per face (the identity without restoration)."""
        return [self.restorer() if self.restorer is not None else (lambda crop: crop) for _ in range(count)]

    def editors(self, sources: list, visualize: bool = False) -> list[MotionEditor]:
        """One motion editor per prepared source face (the first one records the motion)."""
        editors = []
        for index, source in enumerate(sources):
            editor = motion_editor(self.pipeline, None, self.control, self.analyzer,
                                   self.recorder if index == 0 else None, source=source,
                                   show_regions=visualize and index == 0)
            prefix = f"face {index + 1}: " if len(sources) > 1 else ""
            self.messages.extend(prefix + line for line in editor.report)
            editors.append(editor)
        return editors

    @property
    def size(self) -> tuple[int, int]:
        return self.pipeline.image_size

    def movement_scale(self, kp_source: Keypoints, anchor: Keypoints) -> float:
        """DaGAN's movement scale (source / driving keypoint hull areas) when adapting, else 1."""
        return adapt_movement_scale(kp_source, anchor) if self.motion.relative and self.motion.adapt_scale else 1.0

    def transfer(self, kp_source: Keypoints, kp_driving: Keypoints, anchor: Keypoints,
                 scale: Optional[float] = None, edit: Optional[MotionEditor] = None) -> Keypoints:
        """Source keypoints moved by the driving motion relative to ``anchor`` (batch of driving frames); ``edit``
        changes the driving keypoints first."""
        scale = self.movement_scale(kp_source, anchor) if scale is None else scale
        if edit is not None:
            kp_driving = edit(kp_driving, anchor, scale)
        return normalize_keypoints(kp_source, kp_driving, anchor, use_relative_movement=self.motion.relative,
                                   use_relative_jacobian=self.motion.relative, movement_scale=scale,
                                   motion_strength=self.motion.motion_scale)

    def render(self, source, kp_norm: Keypoints):
        """The generator's prediction (B, 3, h, w) in [0, 1] for one prepared source at the transferred keypoints."""
        return self.pipeline.generate(source, kp_norm).prediction

    def driving_batches(self, driving_frames: Iterable[np.ndarray], driving_crops: VideoCrops,
                        driving_initial: Optional[np.ndarray] = None) -> Iterator[DrivingBatch]:
        """The cropped driving frames, batch by batch, with their keypoints; the anchor is the cropped
        ``driving_initial`` (cropped like frame 0) or the first driving frame."""
        from dagan.inference import chunks

        pipeline = self.pipeline
        anchor = None
        if driving_initial is not None:
            crop = warp_to_crop(driving_initial, driving_crops.transform(0, self.size))
            anchor = pipeline.driving_keypoints(pipeline.to_tensor([crop]))[0]
        for batch in chunks(enumerate(driving_frames), pipeline.batch_size):
            frames = pipeline.to_tensor([warp_to_crop(frame, driving_crops.transform(index, self.size))
                                         for index, frame in batch])
            kp_driving, disparity = pipeline.driving_keypoints(frames)
            if self.smooth is not None:
                kp_driving = self.smooth(kp_driving)
            if anchor is None:
                anchor = kp_driving.index(slice(0, 1))
            yield DrivingBatch(frames, kp_driving, disparity, anchor)

    def motion_batches(self, motion: Motion) -> Iterator[DrivingBatch]:
        """A motion file's keypoints, batch by batch as :meth:`driving_batches` reads a video."""
        device = self.pipeline.device
        anchor = Keypoints(motion.anchor.value.to(device),
                           None if motion.anchor.jacobian is None else motion.anchor.jacobian.to(device))
        for keypoints in motion.batches(self.pipeline.batch_size, device):
            yield DrivingBatch(None, keypoints, None, anchor)

    def animate_picture(self, picture: np.ndarray, faces: Sequence[FacePlan], driving_frames: Iterable[np.ndarray],
                        driving_crops: Optional[VideoCrops], driving_initial: Optional[np.ndarray] = None,
                        visualize: bool = False, batches: Optional[Iterable[DrivingBatch]] = None,
                        anchor_at_source: bool = False) -> Iterator[AnimatedFrame]:
        """One :class:`~dagan.inference.AnimatedFrame` per driving frame: the picture (H, W, 3) uint8 with every
        face of ``faces`` animated (paste-back), or the first face's (h, w, 3) crop (no paste-back); keypoints and
        the visualisation panels (``visualize``) are those of the first face. ``batches`` replaces the driving
        video (a motion file's :meth:`motion_batches`); ``anchor_at_source`` measures each face's motion from the
        face itself (a driving image: the source's face -> the photo's)."""
        from dagan.inference import to_uint8_batch

        if not faces:
            raise ValueError("no face to animate")
        faces = faces if self.paste_back else faces[:1]
        sources = [self.pipeline.prepare_source(warp_to_crop(picture, face.transform)) for face in faces]
        editors = self.editors(sources, visualize)
        pastes = [PasteBack(face.transform, picture.shape[:2], whole_picture=face.whole_picture) for face in faces]
        restorers = self.restorers(len(faces))
        if batches is None:
            batches = self.driving_batches(driving_frames, driving_crops, driving_initial)
        for batch in batches:
            kp_norms = [self.transfer(source.keypoints, batch.keypoints,
                                      source.keypoints if anchor_at_source else batch.anchor, edit=editor)
                        for source, editor in zip(sources, editors)]
            predictions = [self.render(source, kp_norm) for source, kp_norm in zip(sources, kp_norms)]
            rendered = [to_uint8_batch(prediction) for prediction in predictions]
            for index in range(len(batch)):
                one = slice(index, index + 1)
                panel = None
                if visualize and batch.frames is not None:
                    panel = self.panel(sources[0], batch, predictions[0], kp_norms[0], index, editors[0].colors)
                crops = [restore(face_crops[index]) for restore, face_crops in zip(restorers, rendered)]
                if not self.paste_back:
                    yield AnimatedFrame(crops[0], kp_norms[0].index(one), panel)
                    continue
                output = picture.copy()
                for paste, crop in zip(pastes, crops):
                    paste(output, crop)
                yield AnimatedFrame(output, kp_norms[0].index(one), panel)

    @staticmethod
    def panel(source, batch: DrivingBatch, prediction, kp_norm: Keypoints, index: int,
              colors: Optional[np.ndarray] = None) -> np.ndarray:
        """The visualisation row of frame ``index`` of a batch (see :func:`dagan.visualization.visualization_row`);
        ``colors``: the keypoints' region colours."""
        from dagan.visualization import visualization_row

        one = slice(index, index + 1)
        return visualization_row(source, batch.frames[index], prediction[index], batch.disparity[index],
                                 batch.keypoints.index(one), kp_norm.index(one), colors)

    def animate_video(self, source_frames: Iterable[np.ndarray], source_crops: VideoCrops,
                      driving_frames: Iterable[np.ndarray], driving_crops: Optional[VideoCrops],
                      batches: Optional[Iterable[DrivingBatch]] = None,
                      still_driver: bool = False) -> Iterator[AnimatedFrame]:
        """A source video animated frame by frame: source frame t, cropped by ``source_crops``, follows driving
        frame t's motion relative to driving frame 0 (movement scale from source frame 0). Stops at the shorter
        video. ``batches`` replaces the driving video (a motion file); ``still_driver``: the driving video is one
        image, which every source frame takes, measured from that frame itself (an expression put on a video).
        The motion edits are made for the first source frame's face. Yields
        :class:`~dagan.inference.AnimatedFrame` s of full frames (paste-back) or crops."""
        import itertools

        from dagan.inference import to_uint8_batch

        pipeline = self.pipeline
        source_iterator = enumerate(source_frames)
        paste: Optional[PasteBack] = None
        scale: Optional[float] = None
        editor: Optional[MotionEditor] = None
        (restore,) = self.restorers(1)
        if batches is None:
            batches = self.driving_batches(driving_frames, driving_crops)
        if still_driver:
            batches = itertools.repeat(next(iter(batches)))
        for batch in batches:
            for offset in range(len(batch)):
                item = next(source_iterator, None)
                if item is None:
                    return
                index, frame = item
                transform = source_crops.transform(index, self.size)
                source = pipeline.prepare_source(warp_to_crop(frame, transform))
                if editor is None:
                    editor = self.editors([source])[0]
                anchor = source.keypoints if still_driver else batch.anchor
                if scale is None and not still_driver:
                    scale = self.movement_scale(source.keypoints, batch.anchor)
                kp_norm = self.transfer(source.keypoints, batch.keypoints.index(slice(offset, offset + 1)),
                                        anchor, None if still_driver else scale, editor)
                crop = restore(to_uint8_batch(self.render(source, kp_norm))[0])
                if not self.paste_back:
                    yield AnimatedFrame(crop, kp_norm, None)
                    continue
                if paste is None:
                    paste = PasteBack(transform, frame.shape[:2], whole_picture=source_crops.boxes is None)
                else:
                    paste = paste.moved(transform)
                output = frame.copy()
                paste(output, crop)
                yield AnimatedFrame(output, kp_norm, None)


@dataclass(frozen=True)
class FaceOptions:
    """Everything that decides how faces are found, framed, animated and pasted back (``demo.py``'s face options;
    the web app offers the same).

    crop: ``"auto"`` (find and crop faces) or ``"none"`` (the whole picture is the model's input).
    paste_back: blend the animated faces into the full picture (needs ``crop="auto"``); else the first face's crop.
    faces: ``"largest"``, ``"all"`` or a count. driving_crop: ``"fixed"``, ``"track"`` or ``"none"``.
    detect_every: detection stride for tracked crops. max_size: the longer side of full-picture results.
    """

    crop: str = "auto"
    paste_back: bool = True
    faces: FaceSelection = "largest"
    framing: Framing = field(default_factory=Framing)
    driving_crop: str = "fixed"
    detect_every: int = 3
    max_size: int = 1920
    motion: MotionOptions = field(default_factory=MotionOptions)
    restore: Optional[RestoreOptions] = None  # face restoration of the animated crops (dagan.faces.restore)

    def __post_init__(self) -> None:
        if self.crop not in ("auto", "none"):
            raise ValueError(f"crop must be auto or none, got {self.crop!r}")
        if self.driving_crop not in ("fixed", "track", "none"):
            raise ValueError(f"driving_crop must be fixed, track or none, got {self.driving_crop!r}")
        if self.paste_back and self.crop == "none":
            raise ValueError("paste_back needs crop auto (with crop none the whole picture is the face)")
        if self.detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {self.detect_every}")
        if self.max_size < 64:
            raise ValueError(f"max_size must be at least 64 pixels, got {self.max_size}")


def fit_picture(picture: np.ndarray, max_size: int) -> np.ndarray:
    """Shrink (H, W, 3) uint8 so that its longer side is at most ``max_size`` (area filter) and trim it to even
    sides (H.264 needs them); a picture that fits with even sides is returned as it is."""
    import cv2

    height, width = picture.shape[:2]
    factor = max_size / max(height, width)
    if factor < 1.0:
        size = (max(2, round(width * factor)), max(2, round(height * factor)))
        picture = cv2.resize(picture, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(picture[: picture.shape[0] // 2 * 2, : picture.shape[1] // 2 * 2])


class FaceSession:
    """The face work of one demo run or app server: the face analyzer is built once (when needed) and driving
    crops are planned once per driving video. ``messages`` collects what the user should be told (faces found,
    warnings); callers print or show them.
    """

    def __init__(self, pipeline, options: FaceOptions = FaceOptions(), analyzer=None, face_backend: str = "auto",
                 control: MotionControl = MotionControl()):
        self.pipeline, self.options, self.control = pipeline, options, control
        self._analyzer, self.face_backend = analyzer, face_backend
        self.driving_plans: dict[str, VideoCrops] = {}
        self.messages: list[str] = []
        self.recorder = None  # a dagan.motion.MotionRecorder for the next animation (--save_motion)
        self._restoration = None  # the loaded restoration model (dagan.faces.restore), when asked for

    @property
    def analyzer(self):
        if self._analyzer is None:
            from dagan.faces.detection import MissingFaceBackend, get_face_analyzer

            try:
                self._analyzer = get_face_analyzer(self.face_backend, detect_max_side=PHOTO_DETECT_MAX_SIDE)
            except MissingFaceBackend as error:
                raise MissingFaceBackend(f"the automatic face crop needs a face backend: {error}; or animate the "
                                         "whole picture with --crop none") from error
        return self._analyzer

    def motion_analyzer(self, visualize: bool = False):
        """The analyzer the motion edits need (regions, openness; the region colours of ``visualize``), or None."""
        if not (self.control.needs_regions or visualize):
            return None
        from dagan.faces.detection import MissingFaceBackend

        try:
            return self.analyzer
        except MissingFaceBackend:
            if self.control.needs_regions:
                raise
            return None

    def animator(self, smooth=None, visualize: bool = False) -> FaceAnimator:
        return FaceAnimator(self.pipeline, self.options.motion, smooth, self.options.paste_back, self.control,
                            self.motion_analyzer(visualize), self.recorder, self.messages, self.restorer_factory())

    def restorer_factory(self) -> Optional[Callable[[], FaceRestorer]]:
        """Makes a :class:`~dagan.faces.restore.FaceRestorer` per face when ``options.restore`` asks for one (the
        restoration model is loaded once per session)."""
        restore = self.options.restore
        if restore is None:
            return None
        if self._restoration is None:
            self._restoration = restore.load()
            self.messages.append(f"restoring faces with {self._restoration.describe()}, strength {restore.strength}"
                                 + (", stabilised over time" if restore.stabilize else ""))
        framing = self.options.framing if self.options.crop == "auto" else Framing()
        return lambda: FaceRestorer(self._restoration, self.size, restore.strength, restore.stabilize, framing)

    @property
    def size(self) -> tuple[int, int]:
        return self.pipeline.image_size

    def driving_crops(self, video) -> VideoCrops:
        """The crops of a driving :class:`~dagan.io.VideoSource` (planned once per path)."""
        key = str(video.path)
        if key not in self.driving_plans:
            frame_size = (video.size[1], video.size[0])
            if self.options.driving_crop == "none" or self.options.crop == "none":
                self.driving_plans[key] = VideoCrops(None, frame_size)
            else:
                framing = Framing(self.options.framing.crop_scale, self.options.framing.crop_offset_y, rotate=False)
                self.driving_plans[key] = plan_video_crops(
                    video, video.num_frames, frame_size, self.analyzer, framing, mode=self.options.driving_crop,
                    detect_every=self.options.detect_every, fps=video.fps, name=f"the driving video {video.path}")
        return self.driving_plans[key]

    def picture_faces(self, picture: np.ndarray, name: str) -> list[FacePlan]:
        """The faces of a picture to animate (a whole-picture plan with ``crop="none"``); notes go to messages."""
        if self.options.crop == "none":
            return [FacePlan(resize_transform(picture.shape[:2], self.pipeline.image_size), None, None, True)]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            faces, found = plan_picture_faces(picture, self.analyzer, self.pipeline.image_size,
                                              self.options.framing, self.options.faces, name=name)
        self.messages += [f"warning: {warning.message}" for warning in caught]
        if found > 1:
            self.messages.append(f"found {found} faces in {name}; animating " + (
                "the largest (--faces all animates every one)" if self.options.faces == "largest" else str(len(faces))))
        if faces[0].whole_picture:
            self.messages.append(f"{name} already is a face crop; it is used as it is")
        return faces

    def animate_picture(self, picture: np.ndarray, driving, name: str = "the picture", smooth=None,
                        driving_initial: Optional[np.ndarray] = None, visualize: bool = False,
                        still_driver: bool = False) -> Iterator[AnimatedFrame]:
        """Frames of ``picture`` (H, W, 3) uint8, already :func:`fit_picture`-ed, driven by ``driving`` (a
        VideoSource, a one-frame one for a driving image with ``still_driver``, or a :class:`dagan.motion.Motion`).
        Faces and driving crops are planned before the first frame is returned."""
        faces = self.picture_faces(picture, name)
        if isinstance(driving, Motion):
            animator = self.animator(smooth)
            return animator.animate_picture(picture, faces, None, None, batches=animator.motion_batches(driving))
        crops = self.driving_crops(driving)
        return self.animator(smooth, visualize).animate_picture(picture, faces, driving, crops, driving_initial,
                                                                visualize, anchor_at_source=still_driver)

    def animate_video(self, source, driving, smooth=None, still_driver: bool = False) -> Iterator[AnimatedFrame]:
        """Frames of the source VideoSource (each shrunk to ``max_size``) driven by the driving one (a VideoSource,
        a one-frame one with ``still_driver``, or a :class:`dagan.motion.Motion`)."""
        frame_size = (source.size[1], source.size[0])
        if self.options.crop == "none":
            crops = VideoCrops(None, frame_size)
        else:
            crops = plan_video_crops(source, source.num_frames, frame_size, self.analyzer, self.options.framing,
                                     mode="track", detect_every=self.options.detect_every, fps=source.fps,
                                     name=f"the source video {source.path}")
        frames = (fit_picture(frame, self.options.max_size) for frame in source)
        source_crops = scaled_crops(crops, frame_size, self.options.max_size)
        animator = self.animator(smooth)
        if isinstance(driving, Motion):
            return animator.animate_video(frames, source_crops, None, None, batches=animator.motion_batches(driving))
        return animator.animate_video(frames, source_crops, driving, self.driving_crops(driving),
                                      still_driver=still_driver)


def scaled_crops(crops: VideoCrops, frame_size: tuple[int, int], max_size: int) -> VideoCrops:
    """Crops planned on full-size frames of (height, width), for the frames :func:`fit_picture` returns."""
    factor = min(1.0, max_size / max(frame_size))
    if factor == 1.0:
        return VideoCrops(crops.boxes, (frame_size[0] // 2 * 2, frame_size[1] // 2 * 2))
    shrunk = (max(2, round(frame_size[0] * factor)) // 2 * 2, max(2, round(frame_size[1] * factor)) // 2 * 2)
    boxes = None if crops.boxes is None else [CropBox(box.center_x * factor, box.center_y * factor,
                                                      box.side * factor, box.angle) for box in crops.boxes]
    return VideoCrops(boxes, shrunk)
