"""Speech -> talking video: the audio model's motion, composed on reference keypoints, rendered by DaGAN.

    frames = animate_from_audio(pipeline, audio_model, source_image, load_audio("speech.wav"), fps=25)

The output has num_video_frames(duration, fps) frames. Head pose comes from the learned generator (``learned``),
from the reference clip's own poses played forwards and backwards (``replay``), or stays at the reference
(``still``). The reference keypoints are those of the reference clip's most typical frame (``--reference_video``),
else the source image's own, so any portrait can be animated.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple, Optional

import numpy as np
import torch

from dagan.audio.features import MelRows, frame_times, log_mel_stream, num_video_frames
from dagan.audio.model import AudioDrivenModel
from dagan.audio.motion import compose_motion, reference_index, split_motion, style_vector
from dagan.checkpoint import CheckpointError
from dagan.faces.alignment import warp_to_crop
from dagan.faces.animation import FaceSession
from dagan.faces.paste import PasteBack
from dagan.geometry import Keypoints, adapt_movement_scale
from dagan.inference import DaGANPipeline, to_uint8_batch
from dagan.inference import chunks as chunks_of
from dagan.motion import MotionControl, make_motion, motion_editor, save_motion

POSE_MODES = ("learned", "replay", "still")
MAX_REFERENCE_FRAMES = 750  # 30 s at 25 fps: enough for replay and style
REPLAY_HINT = "--pose replay needs --reference_video (or an audio model personalised on a clip)"


class Reference(NamedTuple):
    """The motion anchor: keypoints (1, K, ...); poses (T, 6) of the reference clip (None for a still image)."""

    keypoints: Keypoints
    poses: Optional[torch.Tensor]


def check_compatible(audio_model: AudioDrivenModel, pipeline: DaGANPipeline) -> None:
    num_kp = pipeline.config.model_params.common_params.num_kp
    if audio_model.num_kp != num_kp:
        raise CheckpointError(f"the audio checkpoint was built for {audio_model.num_kp} keypoints but the DaGAN "
                              f"checkpoint has {num_kp}; train or personalise the audio model on keypoints of this "
                              "DaGAN checkpoint")


def reference_from_frames(pipeline: DaGANPipeline, frames, pose_model: str) -> Reference:
    """Keypoints of a reference clip's frames -> its most typical frame's keypoints and every frame's pose."""
    from dagan.audio.prepare import clip_keypoints

    try:
        clip = clip_keypoints(pipeline, frames, MAX_REFERENCE_FRAMES)
    except ValueError:
        raise ValueError("the reference clip has no frames; give a video of the target person") from None
    index = reference_index(clip.value)
    anchor = clip.index(slice(index, index + 1))
    return Reference(anchor, split_motion(clip, anchor, pose_model).pose)


def ping_pong(poses: torch.Tensor, length: int, start: int = 0) -> torch.Tensor:
    """poses (N, 6) played forwards, then backwards, ...: frames [start, start + length) of that, (length, 6)."""
    if len(poses) == 1:
        return poses.expand(length, -1)
    cycle = torch.cat([poses, poses.flip(0)[1:-1]])  # (2N - 2, 6)
    return cycle[torch.arange(start, start + length) % len(cycle)]


def head_poses(mode: str, learned: torch.Tensor, reference: Reference, audio_model: AudioDrivenModel,
               start: int = 0) -> torch.Tensor:
    """The pose sequence (T, 6) for ``--pose`` of frames [start, start + T) (``learned``: their generated poses)."""
    if mode == "learned":
        return learned
    if mode == "still":
        return torch.zeros_like(learned)
    poses = reference.poses if reference.poses is not None else audio_model.reference_pose
    if poses is None:
        raise ValueError(REPLAY_HINT)
    return ping_pong(poses, len(learned), start)


class DrivingChunk(NamedTuple):
    """Driving keypoints (T, K, ...) of consecutive frames, with the pose (T, 6) and local motion (T, 6 K)."""

    keypoints: Keypoints
    pose: torch.Tensor
    local: torch.Tensor


def audio_driving_chunks(audio_model: AudioDrivenModel, audio, fps: float, reference: Reference,
                         pose_mode: str = "learned", seed: int = 0) -> Iterator[DrivingChunk]:
    """The driving motion of the speech, chunk after chunk: decode, log-mel, model and composition are streamed,
    so memory depends on the chunk, not on the length. ``audio``: an :class:`~dagan.audio.decode.Audio` or a
    streamed :class:`~dagan.audio.decode.AudioSource`."""
    times = frame_times(num_video_frames(audio.duration, fps), fps)
    style = style_vector(reference.poses) if reference.poses is not None and len(reference.poses) > 2 else None
    mel = MelRows(log_mel_stream(audio, audio_model.params.num_mels), audio_model.params.num_mels)
    start = 0
    for motion in audio_model.predict_chunks(mel, times, style, seed):
        pose = head_poses(pose_mode, motion.pose, reference, audio_model, start)
        start += len(pose)
        yield DrivingChunk(compose_motion(reference.keypoints, pose, motion.local), pose, motion.local)


def joined(chunks: list[DrivingChunk]) -> tuple[Keypoints, torch.Tensor, torch.Tensor]:
    keypoints = Keypoints(torch.cat([chunk.keypoints.value for chunk in chunks]),
                          torch.cat([chunk.keypoints.jacobian for chunk in chunks]))
    return keypoints, torch.cat([chunk.pose for chunk in chunks]), torch.cat([chunk.local for chunk in chunks])


def animate_from_audio(pipeline: DaGANPipeline, audio_model: AudioDrivenModel, source_image: np.ndarray,
                       audio, fps: float = 25.0, reference_frames=None, pose_mode: str = "learned",
                       seed: int = 0, motion_path: Optional[str] = None, control: Optional[MotionControl] = None,
                       analyzer=None, messages: Optional[list] = None) -> Iterator[np.ndarray]:
    """Yield the (H, W, 3) uint8 frames of the source saying ``audio``; num_video_frames(duration, fps) of them.
    The whole ``source_image`` is the model's input (a face crop); :func:`animate_picture_from_audio` crops the
    faces of a photo and pastes them back. ``audio``: an :class:`~dagan.audio.decode.Audio`, or an
    :class:`~dagan.audio.decode.AudioSource` (streamed: memory does not grow with the speech's length).

    motion_path: also save the motion as a motion file (:mod:`dagan.motion.files`, driver "speech").
    control: pose / expression / region edits (:class:`dagan.motion.MotionControl`; regions and openness targets
    need ``analyzer``); what the user should be told is appended to ``messages``.
    """
    check_compatible(audio_model, pipeline)
    reference = None
    if reference_frames is not None:
        reference = reference_from_frames(pipeline, reference_frames, audio_model.params.pose_model)
    return speaking_crops(pipeline, audio_model, source_image, audio, fps, reference, pose_mode, seed, motion_path,
                          control, analyzer, messages)


def animate_picture_from_audio(session: FaceSession, audio_model: AudioDrivenModel, picture: np.ndarray,
                               audio, fps: float = 25.0, reference_frames=None, pose_mode: str = "learned",
                               seed: int = 0, motion_path: Optional[str] = None,
                               name: str = "the picture", control: Optional[MotionControl] = None, analyzer=None,
                               messages: Optional[list] = None) -> Iterator[np.ndarray]:
    """A photo as it comes saying ``audio``: the faces ``session`` chooses (:meth:`FaceSession.picture_faces`, as
    the video mode finds them) are cropped, each follows the same speech motion, and they are pasted back into
    ``picture`` (H, W, 3) uint8 (already :func:`~dagan.faces.animation.fit_picture`-ed); without paste-back the
    first face's crop (h, w, 3). Faces are found before this returns."""
    pipeline = session.pipeline
    check_compatible(audio_model, pipeline)
    faces = session.picture_faces(picture, name)
    if not session.options.paste_back:
        faces = faces[:1]
    reference = None
    if reference_frames is not None:
        reference = reference_from_frames(pipeline, reference_frames, audio_model.params.pose_model)
    streams = [speaking_crops(pipeline, audio_model, warp_to_crop(picture, face.transform), audio, fps, reference,
                              pose_mode, seed, motion_path if number == 0 else None, control, analyzer, messages)
               for number, face in enumerate(faces)]
    if not session.options.paste_back:
        return streams[0]
    pastes = [PasteBack(face.transform, picture.shape[:2], whole_picture=face.whole_picture) for face in faces]
    return pasted_frames(picture, pastes, streams)


def pasted_frames(picture: np.ndarray, pastes: list[PasteBack], streams: list[Iterator[np.ndarray]]
                  ) -> Iterator[np.ndarray]:
    """Copies of ``picture`` with each stream's next crop pasted back by its :class:`PasteBack`."""
    for crops in zip(*streams):
        output = picture.copy()
        for paste, crop in zip(pastes, crops):
            paste(output, crop)
        yield output


def speaking_crops(pipeline: DaGANPipeline, audio_model: AudioDrivenModel, source_image: np.ndarray, audio,
                   fps: float, reference: Optional[Reference], pose_mode: str, seed: int,
                   motion_path: Optional[str], control: Optional[MotionControl] = None, analyzer=None,
                   messages: Optional[list] = None) -> Iterator[np.ndarray]:
    """The model-size frames of one face crop saying ``audio``, the motion anchored at ``reference`` (a clip's) or,
    when None, at the crop's own keypoints; ``control`` edits the motion (see :func:`animate_from_audio`)."""
    source = pipeline.prepare_source(source_image)
    scale = 1.0
    if reference is None:
        reference = Reference(Keypoints(source.keypoints.value.cpu(), source.keypoints.jacobian.cpu()), None)
    else:
        scale = adapt_movement_scale(source.keypoints, reference.keypoints)
    chunks = audio_driving_chunks(audio_model, audio, fps, reference, pose_mode, seed)
    if motion_path is not None:  # the file holds the whole motion: computed before the first frame
        chunks = list(chunks)
        driving, pose, local = joined(chunks)
        save_motion(motion_path, make_motion(driving, reference.keypoints, fps, "speech",
                                             audio_model.params.pose_model, pose, local))
    edit = None
    if control is not None and not control.is_identity:
        edit = motion_editor(pipeline, None, control, analyzer, source=source)
        if messages is not None:
            messages.extend(edit.report)
    anchor = Keypoints(reference.keypoints.value.to(pipeline.device), reference.keypoints.jacobian.to(pipeline.device))
    for chunk in chunks:
        driving = chunk.keypoints
        for batch in chunks_of(range(len(chunk.pose)), pipeline.batch_size):
            selection = slice(batch[0], batch[-1] + 1)
            kp_driving = Keypoints(driving.value[selection].to(pipeline.device),
                                   driving.jacobian[selection].to(pipeline.device))
            kp_norm, _ = pipeline.transfer(source, kp_driving, anchor, relative=True, adapt_scale=True, scale=scale,
                                           edit=edit)
            yield from to_uint8_batch(pipeline.generate(source, kp_norm).prediction)


def check_face(video) -> None:
    """ValueError (one line) when the reference clip's first frame shows no face; skipped without a face backend."""
    from dagan.faces import MissingFaceBackend, get_face_analyzer

    try:
        analyzer = get_face_analyzer("auto")
    except (MissingFaceBackend, ImportError):
        return
    frame = next(iter(video), None)
    if frame is None or not analyzer.detect(frame):
        raise ValueError(f"no face found in the reference clip {str(video.path)!r}; give a clip of the target "
                         "person's face (cropped with scripts/crop_video.py)")
