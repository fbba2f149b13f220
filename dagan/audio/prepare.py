"""Talking-face videos with speech -> training items (``dagan.audio.data``), with an audio-video offset check.

    pipeline = DaGANPipeline.load(checkpoint, depth_checkpoint)       # frozen: keypoints only
    item, offset = prepare_clip(pipeline, "clip.mp4", num_mels=80)

Offset check: the jaw is the dominant local deformation of a talking face, so the first principal component of
the clip's local motion follows the mouth; its correlation with the audio energy is scanned over lags of
+-MAX_LAG_FRAMES, and a clip whose best lag is more than one frame away from zero (with a clear peak) is
rejected, as out-of-sync clips in VoxCeleb/LRS3 are.
"""
from __future__ import annotations

import itertools
from typing import NamedTuple, Optional

import numpy as np
import torch

from dagan.audio.data import AVItem, make_item
from dagan.audio.decode import load_audio
from dagan.audio.features import frame_energy_db, frame_times
from dagan.audio.motion import reference_index, split_motion
from dagan.geometry import Keypoints

MAX_LAG_FRAMES = 10
MIN_SYNC_CORRELATION = 0.2  # below this the lag is undecided and the clip is kept


class OffsetEstimate(NamedTuple):
    """lag_frames: how many frames the mouth motion trails the audio (negative: leads); correlation: at that lag."""

    lag_frames: int
    correlation: float

    def is_synced(self, tolerance: int = 1) -> bool:
        return abs(self.lag_frames) <= tolerance or self.correlation < MIN_SYNC_CORRELATION


def lagged_correlation(first: np.ndarray, second: np.ndarray, lag: int) -> float:
    """Pearson correlation of first[t] with second[t + lag] over the overlap (0 when either is constant)."""
    if lag >= 0:
        a, b = first[:len(first) - lag], second[lag:]
    else:
        a, b = first[-lag:], second[:len(second) + lag]
    if len(a) < 3 or a.std() < 1e-9 or b.std() < 1e-9:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def mouth_component(local: torch.Tensor) -> np.ndarray:
    """First principal component (T,) of local keypoint offsets (T, 6 K) (the jaw, in a talking face)."""
    values = local.double().numpy()
    num_kp = values.shape[1] // 6
    offsets = values[:, :2 * num_kp] - values[:, :2 * num_kp].mean(0)
    _, _, directions = np.linalg.svd(offsets, full_matrices=False)
    return offsets @ directions[0]


def estimate_offset(energy_db: np.ndarray, local: torch.Tensor, max_lag: int = MAX_LAG_FRAMES) -> OffsetEstimate:
    """The lag in [-max_lag, max_lag] frames maximising |corr(audio energy, mouth component)|."""
    mouth = mouth_component(local)
    scores = {lag: abs(lagged_correlation(energy_db, mouth, lag)) for lag in range(-max_lag, max_lag + 1)}
    best = max(scores, key=lambda lag: (scores[lag], -abs(lag)))
    return OffsetEstimate(best, scores[best])


@torch.no_grad()
def clip_keypoints(pipeline, frames, max_frames: Optional[int] = None) -> Keypoints:
    """Keypoints (T, K, ...) of every frame of a video (frozen DaGAN keypoint detector), on the CPU."""
    from dagan.inference import chunks

    values, jacobians = [], []
    for batch in chunks(itertools.islice(frames, max_frames), pipeline.batch_size):
        keypoints = pipeline.driving_keypoints(pipeline.to_tensor(batch))[0]
        values.append(keypoints.value.cpu())
        jacobians.append(keypoints.jacobian.cpu())
    if not values:
        raise ValueError("the video has no frames")
    return Keypoints(torch.cat(values), torch.cat(jacobians))


def check_offset(keypoints: Keypoints, audio, fps: float, pose_model: str = "affine") -> OffsetEstimate:
    """Audio-video offset of a clip from its keypoints (T, K, ...) and decoded audio."""
    index = reference_index(keypoints.value)
    local = split_motion(keypoints, keypoints.index(slice(index, index + 1)), pose_model).local
    return estimate_offset(frame_energy_db(audio, frame_times(len(local), fps), 1.0 / fps), local)


def prepare_clip(pipeline, video_path: str, num_mels: int, max_frames: Optional[int] = None
                 ) -> tuple[AVItem, OffsetEstimate]:
    """A video with speech -> (item, offset estimate). MediaError when it has no audio."""
    from dagan.io import open_video

    audio = load_audio(video_path)
    video = open_video(video_path)
    keypoints = clip_keypoints(pipeline, video, max_frames)
    offset = check_offset(keypoints, audio, video.fps)
    item = make_item(keypoints.value.numpy(), keypoints.jacobian.numpy(), audio, video.fps, num_mels, offset.lag_frames)
    return item, offset


class PrepareSummary(NamedTuple):
    written: int
    skipped: int  # already prepared (resumed)
    rejected: list[str]  # out of sync or without audio, with the reason


def item_paths(videos: list, out_dir: str) -> dict:
    """video -> ``out_dir/<stem>.npz``; ValueError, before any work, when two videos share a stem (``a/clip.mp4``
    and ``b/clip.mp4``, or ``clip.mp4`` and ``clip.mov``): the second would be skipped as "already there"."""
    import os

    targets, first_by_target = {}, {}
    for video in videos:
        target = os.path.join(out_dir, f"{os.path.splitext(os.path.basename(video))[0]}.npz")
        earlier = first_by_target.setdefault(target, video)
        if earlier != video:
            raise ValueError(f"'{earlier}' and '{video}' would both be written to '{target}' (same file name); "
                             "rename one of them or prepare them into different --out folders")
        targets[video] = target
    return targets


def prepare_folder(pipeline, videos: list, out_dir: str, num_mels: int, tolerance: int = 1,
                   progress: bool = True) -> PrepareSummary:
    """Prepare every video into ``out_dir/<stem>.npz``; existing items are kept (run again to resume)."""
    import os

    from tqdm import tqdm

    from dagan.audio.data import save_item
    from dagan.io import MediaError

    written, skipped, rejected = 0, 0, []
    targets = item_paths(videos, out_dir)
    for video in tqdm(videos, desc="preparing", unit="clip", disable=not progress, dynamic_ncols=True):
        target = targets[video]
        if os.path.exists(target):
            skipped += 1
            continue
        try:
            item, offset = prepare_clip(pipeline, str(video), num_mels)
        except MediaError as error:
            rejected.append(f"{video}: {error}")
            continue
        if not offset.is_synced(tolerance):
            rejected.append(f"{video}: audio and video are {offset.lag_frames} frames apart (correlation "
                            f"{offset.correlation:.2f}); re-sync or drop the clip")
            continue
        save_item(target, item)
        written += 1
    return PrepareSummary(written, skipped, rejected)
