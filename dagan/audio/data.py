"""Training items for the audio model: one safe ``.npz`` per talking clip (no pickles), and their training form.

An item holds (all numpy):
    keypoints (T, K, 2) float32 and jacobians (T, K, 2, 2) float32: DaGAN keypoints of every frame;
    mel (N, M) float32: the clip's log-mel at 100 frames/s (``dagan.audio.features.log_mel``);
    silence (T,) bool: silent frames; fps () float64; offset_frames () int64: the audio-video lag found by the
    offset check (0 for a synced clip).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from dagan.audio.decode import Audio
from dagan.audio.features import HOP_SECONDS, feature_windows, frame_times, log_mel, silence_flags
from dagan.audio.motion import split_motion, reference_index, style_vector
from dagan.geometry import Keypoints
from dagan.io.files import atomic_write_bytes

ITEM_KEYS = ("keypoints", "jacobians", "mel", "silence", "fps", "offset_frames")


class AVItem(NamedTuple):
    keypoints: np.ndarray
    jacobians: np.ndarray
    mel: np.ndarray
    silence: np.ndarray
    fps: float
    offset_frames: int = 0

    @property
    def num_frames(self) -> int:
        return len(self.keypoints)


def make_item(keypoints: np.ndarray, jacobians: np.ndarray, audio: Audio, fps: float, num_mels: int,
              offset_frames: int = 0) -> AVItem:
    """An item from per-frame keypoints (T, K, 2), Jacobians (T, K, 2, 2) and the clip's audio."""
    times = frame_times(len(keypoints), fps)
    return AVItem(np.asarray(keypoints, np.float32), np.asarray(jacobians, np.float32),
                  log_mel(audio, num_mels).numpy(), silence_flags(audio, times, fps), float(fps), int(offset_frames))


def save_item(path: str | os.PathLike, item: AVItem) -> None:
    """Write an item as an uncompressed .npz, atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(getattr(item, name)) for name in ITEM_KEYS})
    atomic_write_bytes(path, buffer.getvalue())


def load_item(path: str | os.PathLike) -> AVItem:
    """Read an item (``allow_pickle=False``); a file that is not one gives a one-line ValueError."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [name for name in ITEM_KEYS if name not in data.files]
            if missing:
                raise ValueError(f"{path}: not a prepared audio-video item (missing {', '.join(missing)}); make "
                                 "items with scripts/prepare_av.py")
            item = AVItem(data["keypoints"], data["jacobians"], data["mel"], data["silence"],
                          data["fps"], data["offset_frames"])
    except (OSError, EOFError, ValueError) as error:
        if str(error).startswith(f"{path}:"):
            raise
        raise ValueError(f"{path}: cannot read a prepared item ({error})") from None
    return checked_item(path, item)


def checked_item(path, item: AVItem) -> AVItem:
    """The item in its training types, after checking its schema (names, dtypes, shapes, finite values, lengths
    that agree); a ValueError naming the file and what is wrong otherwise."""
    def fail(problem: str):
        raise ValueError(f"{path}: not a valid prepared item ({problem}); prepare it again with scripts/prepare_av.py")

    arrays = {name: np.asarray(getattr(item, name)) for name in ITEM_KEYS}
    for name in ("keypoints", "jacobians", "mel", "fps"):
        if arrays[name].dtype.kind not in "fiu" or not np.isfinite(arrays[name]).all():
            fail(f"{name} must hold finite numbers, got {arrays[name].dtype} with NaN/inf or none")
    keypoints, jacobians, mel = arrays["keypoints"], arrays["jacobians"], arrays["mel"]
    if keypoints.ndim != 3 or keypoints.shape[-1] != 2 or len(keypoints) < 2 or keypoints.shape[1] < 1:
        fail(f"keypoints must be (T >= 2, K, 2), got {keypoints.shape}")
    if jacobians.shape != (*keypoints.shape, 2):
        fail(f"jacobians must be {(*keypoints.shape, 2)} like the keypoints, got {jacobians.shape}")
    if arrays["silence"].shape != keypoints.shape[:1] or arrays["silence"].dtype.kind not in "biu":
        fail(f"silence must be ({len(keypoints)},) booleans, got {arrays['silence'].dtype} {arrays['silence'].shape}")
    if mel.ndim != 2 or min(mel.shape) < 1:
        fail(f"mel must be (N, num_mels), got {mel.shape}")
    if arrays["fps"].shape != () or not arrays["fps"] > 0 or arrays["offset_frames"].shape != () or \
            arrays["offset_frames"].dtype.kind not in "iu":
        fail(f"fps must be one positive number and offset_frames one integer, got {arrays['fps']!r}, "
             f"{arrays['offset_frames']!r}")
    video_seconds, audio_seconds = len(keypoints) / float(arrays["fps"]), len(mel) * HOP_SECONDS
    if abs(video_seconds - audio_seconds) > max(1.0, 0.1 * video_seconds):
        fail(f"{len(keypoints)} frames at {float(arrays['fps']):g} fps last {video_seconds:.2f} s but the mel "
             f"features {audio_seconds:.2f} s")
    return AVItem(keypoints.astype(np.float32), jacobians.astype(np.float32), mel.astype(np.float32),
                  arrays["silence"].astype(bool), float(arrays["fps"]), int(arrays["offset_frames"]))


def item_paths(directory: str | os.PathLike) -> list[Path]:
    """The .npz items of a folder, sorted; a ValueError naming the folder when there are none."""
    directory = Path(directory)
    paths = sorted(directory.glob("*.npz")) if directory.is_dir() else []
    if not paths:
        raise ValueError(f"audio_train_params.data_dir {str(directory)!r} holds no .npz items; prepare them with "
                         "scripts/prepare_av.py")
    return paths


class MotionClip(NamedTuple):
    """An item in training form: windows (T, W, M), local (T, 6 K), pose (T, 6), style (12,), silence (T,)."""

    windows: torch.Tensor
    local: torch.Tensor
    pose: torch.Tensor
    style: torch.Tensor
    silence: torch.Tensor

    @property
    def num_frames(self) -> int:
        return self.local.shape[0]

    def part(self, start: int, stop: int) -> "MotionClip":
        """Frames [start, stop); the style stays that of the whole clip."""
        return MotionClip(self.windows[start:stop], self.local[start:stop], self.pose[start:stop], self.style,
                          self.silence[start:stop])


def motion_clip(item: AVItem, context_seconds: float, pose_model: str) -> MotionClip:
    """Feature windows and split motion of an item, relative to the middle of its longest pause."""
    keypoints = Keypoints(torch.from_numpy(item.keypoints), torch.from_numpy(item.jacobians))
    index = reference_index(keypoints.value, torch.from_numpy(item.silence))
    motion = split_motion(keypoints, keypoints.index(slice(index, index + 1)), pose_model)
    windows = feature_windows(torch.from_numpy(item.mel), frame_times(item.num_frames, item.fps), context_seconds)
    return MotionClip(windows, motion.local, motion.pose, style_vector(motion.pose), torch.from_numpy(item.silence))
