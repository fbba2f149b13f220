"""The motion representation the audio model learns: DaGAN keypoints relative to a reference frame, split into
a head pose and a local (mouth, expression) residual.

For frame t with keypoints x_t (K, 2) and Jacobians J_t (K, 2, 2), and reference keypoints x_r, J_r:

    head pose    (A_t, b_t) = argmin sum_k |A x_r,k + b - x_t,k|^2       (least squares; a similarity or affine map)
    local motion d_t = A_t^-1 (x_t - b_t) - x_r,   D_t = A_t^-1 J_t - J_r
    composition  x_t = A_t (x_r + d_t) + b_t,      J_t = A_t (J_r + D_t)

so pose and lips are learned and controlled separately, and the composed keypoints feed DaGAN's relative-motion
path (``normalize_keypoints``) exactly as keypoints of a driving video would. The pose is stored as the 6-vector
``(A - I).flatten(), b`` (zeros = the reference pose); the local motion as the (6 K)-vector ``d.flatten(), D.flatten()``.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch

from dagan.geometry import Keypoints

POSE_MODELS = ("affine", "similarity")
POSE_SIZE = 6


def local_size(num_kp: int) -> int:
    """Length of the local-motion vector of K keypoints: 2 K offsets + 4 K Jacobian changes."""
    return 6 * num_kp


class SplitMotion(NamedTuple):
    """pose: (T, 6) (A - I, b); local: (T, 6 K) (d, D), see the module docstring."""

    pose: torch.Tensor
    local: torch.Tensor


def fit_pose(reference: torch.Tensor, keypoints: torch.Tensor, pose_model: str = "affine") -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares map from reference keypoints (K, 2) to each frame's keypoints (T, K, 2): A (T, 2, 2), b (T, 2).

    "similarity": A = s [[cos, -sin], [sin, cos]] (4 degrees of freedom); "affine": any A (6).
    """
    if pose_model not in POSE_MODELS:
        raise ValueError(f"pose_model must be one of {POSE_MODELS}, got {pose_model!r}")
    reference, keypoints = reference.double(), keypoints.double()
    centre_reference = reference.mean(0)  # (2,)
    centre = keypoints.mean(1)  # (T, 2)
    source = reference - centre_reference  # (K, 2)
    target = keypoints - centre[:, None]  # (T, K, 2)
    if pose_model == "affine":
        # A^T = (S^T S)^-1 S^T Y for rows y_k = A s_k.
        normal = source.T @ source + 1e-9 * torch.eye(2, dtype=source.dtype)
        matrix = torch.linalg.solve(normal, source.T @ target).transpose(1, 2)  # (T, 2, 2)
    else:
        x, y = source[:, 0], source[:, 1]
        norm = (source ** 2).sum() + 1e-12
        a = (target[..., 0] * x + target[..., 1] * y).sum(-1) / norm  # s cos
        c = (target[..., 1] * x - target[..., 0] * y).sum(-1) / norm  # s sin
        matrix = torch.stack([torch.stack([a, -c], -1), torch.stack([c, a], -1)], -2)
    offset = centre - torch.einsum("tij,j->ti", matrix, centre_reference)
    return matrix.float(), offset.float()


def split_motion(keypoints: Keypoints, reference: Keypoints, pose_model: str = "affine") -> SplitMotion:
    """Keypoints (T, K, ...) of a clip -> pose and local motion relative to ``reference`` (1, K, ...)."""
    matrix, offset = fit_pose(reference.value[0], keypoints.value, pose_model)
    inverse = torch.linalg.inv(matrix)  # (T, 2, 2)
    aligned = torch.einsum("tij,tkj->tki", inverse, keypoints.value - offset[:, None])  # (T, K, 2)
    local_value = aligned - reference.value  # (T, K, 2)
    local_jacobian = torch.einsum("tij,tkjl->tkil", inverse, keypoints.jacobian) - reference.jacobian  # (T, K, 2, 2)
    pose = torch.cat([(matrix - torch.eye(2)).flatten(1), offset], dim=1)  # (T, 6)
    local = torch.cat([local_value.flatten(1), local_jacobian.flatten(1)], dim=1)  # (T, 6 K)
    return SplitMotion(pose, local)


def compose_motion(reference: Keypoints, pose: torch.Tensor, local: torch.Tensor) -> Keypoints:
    """Inverse of :func:`split_motion`: reference (1, K, ...), pose (T, 6), local (T, 6 K) -> keypoints (T, K, ...)."""
    num_kp = reference.value.shape[1]
    matrix = pose[:, :4].reshape(-1, 2, 2) + torch.eye(2, dtype=pose.dtype)  # (T, 2, 2)
    offset = pose[:, 4:]  # (T, 2)
    local_value = local[:, :2 * num_kp].reshape(-1, num_kp, 2)  # (T, K, 2)
    local_jacobian = local[:, 2 * num_kp:].reshape(-1, num_kp, 2, 2)  # (T, K, 2, 2)
    value = torch.einsum("tij,tkj->tki", matrix, reference.value + local_value) + offset[:, None]
    jacobian = torch.einsum("tij,tkjl->tkil", matrix, reference.jacobian + local_jacobian)
    return Keypoints(value, jacobian)


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
