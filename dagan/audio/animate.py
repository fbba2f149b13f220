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
from dagan.geometry import Keypoints, adapt_movement_scale, normalize_keypoints
from dagan.inference import DaGANPipeline, to_uint8_batch
from dagan.inference import chunks as chunks_of

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


def audio_driving_keypoints(audio_model: AudioDrivenModel, audio, fps: float, reference: Reference,
                            pose_mode: str = "learned", seed: int = 0) -> tuple[Keypoints, torch.Tensor, torch.Tensor]:
    """Driving keypoints (T, K, ...) for the speech, with the pose (T, 6) and local motion (T, 6 K) they came from
    (all of :func:`audio_driving_chunks` at once)."""
    chunks = list(audio_driving_chunks(audio_model, audio, fps, reference, pose_mode, seed))
    return joined(chunks)


def joined(chunks: list[DrivingChunk]) -> tuple[Keypoints, torch.Tensor, torch.Tensor]:
    keypoints = Keypoints(torch.cat([chunk.keypoints.value for chunk in chunks]),
                          torch.cat([chunk.keypoints.jacobian for chunk in chunks]))
    return keypoints, torch.cat([chunk.pose for chunk in chunks]), torch.cat([chunk.local for chunk in chunks])


def animate_from_audio(pipeline: DaGANPipeline, audio_model: AudioDrivenModel, source_image: np.ndarray,
                       audio, fps: float = 25.0, reference_frames=None, pose_mode: str = "learned",
                       seed: int = 0, motion_path: Optional[str] = None) -> Iterator[np.ndarray]:
    """Yield the (H, W, 3) uint8 frames of the source saying ``audio``; num_video_frames(duration, fps) of them.

    ``audio``: an :class:`~dagan.audio.decode.Audio`, or an :class:`~dagan.audio.decode.AudioSource` (streamed:
    memory does not grow with the speech's length). ``motion_path`` (.npz) holds the whole motion, so it is
    computed before the first frame."""
    check_compatible(audio_model, pipeline)
    source = pipeline.prepare_source(source_image)
    if reference_frames is not None:
        reference = reference_from_frames(pipeline, reference_frames, audio_model.params.pose_model)
    else:
        reference = Reference(Keypoints(source.keypoints.value.cpu(), source.keypoints.jacobian.cpu()), None)
    chunks = audio_driving_chunks(audio_model, audio, fps, reference, pose_mode, seed)
    if motion_path is not None:
        from dagan.io.files import atomic_write_bytes

        chunks = list(chunks)
        driving, pose, local = joined(chunks)
        atomic_write_bytes(motion_path, motion_npz(pose, local, driving))
    scale = adapt_movement_scale(source.keypoints, reference.keypoints) if reference_frames is not None else 1.0
    anchor = Keypoints(reference.keypoints.value.to(pipeline.device), reference.keypoints.jacobian.to(pipeline.device))
    for chunk in chunks:
        driving = chunk.keypoints
        for batch in chunks_of(range(len(chunk.pose)), pipeline.batch_size):
            selection = slice(batch[0], batch[-1] + 1)
            kp_driving = Keypoints(driving.value[selection].to(pipeline.device),
                                   driving.jacobian[selection].to(pipeline.device))
            kp_norm = normalize_keypoints(source.keypoints, kp_driving, anchor, use_relative_movement=True,
                                          use_relative_jacobian=True, movement_scale=scale)
            yield from to_uint8_batch(pipeline.generate(source, kp_norm).prediction)


def motion_npz(pose: torch.Tensor, local: torch.Tensor, driving: Keypoints) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, pose=pose.numpy(), local=local.numpy(), keypoints=driving.value.numpy(),
             jacobians=driving.jacobian.numpy())
    return buffer.getvalue()


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
