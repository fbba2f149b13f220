"""The audio model's motion statistics: the reference frame of a clip and the spread (style) of its head poses.
The pose/local split itself is :mod:`dagan.motion.split` (shared by every driver); its names are importable from
here too."""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch

from dagan.motion.split import POSE_MODELS, POSE_SIZE, SplitMotion, compose_motion, fit_pose, local_size, split_motion

__all__ = ["POSE_MODELS", "POSE_SIZE", "SplitMotion", "compose_motion", "fit_pose", "local_size", "split_motion",
           "reference_index", "PoseStatistics", "pose_statistics", "style_vector", "statistics_distance"]


def reference_index(keypoints: torch.Tensor, silence: Optional[torch.Tensor] = None) -> int:
    """The reference frame of a clip with keypoints (T, K, 2): the middle of its longest silent stretch (silence
    (T,) bool; the mouth is closed in a pause, so every clip's local motion starts from closed lips), else the
    frame closest to the clip's mean keypoints (a typical frame)."""
    if silence is not None and bool(silence.any()):
        best_start, best_length, start = 0, 0, None
        for index, silent in enumerate(silence.tolist() + [False]):
            if silent and start is None:
                start = index
            elif not silent and start is not None:
                if index - start > best_length:
                    best_start, best_length = start, index - start
                start = None
        return best_start + best_length // 2
    return int(((keypoints - keypoints.mean(0)) ** 2).sum((1, 2)).argmin())


class PoseStatistics(NamedTuple):
    """Per-axis spread of a pose sequence: std (6,) of the pose and velocity_std (6,) of its frame-to-frame change."""

    std: np.ndarray
    velocity_std: np.ndarray


def pose_statistics(pose: torch.Tensor | np.ndarray) -> PoseStatistics:
    """Statistics of a pose sequence (T, 6)."""
    pose = torch.as_tensor(pose).double()
    return PoseStatistics(pose.std(0).numpy(), pose.diff(dim=0).std(0).numpy())


def style_vector(pose: torch.Tensor) -> torch.Tensor:
    """The pose style a clip shows (12,): log of the per-axis std and velocity std of its pose (T, 6)."""
    statistics = pose_statistics(pose)
    return torch.from_numpy(np.log(np.concatenate([statistics.std, statistics.velocity_std]) + 1e-4)).float()


def statistics_distance(first: PoseStatistics, second: PoseStatistics) -> float:
    """Mean absolute log-ratio of the std and velocity-std of two pose sequences (0: the same spread)."""
    a = np.concatenate([first.std, first.velocity_std]) + 1e-6
    b = np.concatenate([second.std, second.velocity_std]) + 1e-6
    return float(np.abs(np.log(a / b)).mean())
