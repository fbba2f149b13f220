"""The pose/expression split of keypoint motion, for every driver (video, image, speech, motion file): DaGAN
keypoints relative to a reference frame (the anchor), split into a head pose and a local (mouth, eyes,
expression) residual.

For frame t with keypoints x_t (K, 2) and Jacobians J_t (K, 2, 2), and reference keypoints x_r, J_r:

    head pose    (A_t, b_t) = argmin sum_k |A x_r,k + b - x_t,k|^2       (least squares; a similarity or affine map)
    local motion d_t = A_t^-1 (x_t - b_t) - x_r,   D_t = A_t^-1 J_t - J_r
    composition  x_t = A_t (x_r + d_t) + b_t,      J_t = A_t (J_r + D_t)

so pose and expression are learned (``dagan.audio``) and controlled (:mod:`dagan.motion.control`) separately, and
the composed keypoints feed DaGAN's relative-motion path (``normalize_keypoints``) exactly as keypoints of a
driving video would. The pose is stored as the 6-vector
``(A - I).flatten(), b`` (zeros = the reference pose); the local motion as the (6 K)-vector ``d.flatten(), D.flatten()``.
"""
from __future__ import annotations

from typing import NamedTuple

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

    "similarity": A = s [[cos, -sin], [sin, cos]] (4 degrees of freedom); "affine": any A (6). Solved in float64,
    returned in float32 (:func:`fit_pose_double` keeps float64).
    """
    matrix, offset = fit_pose_double(reference, keypoints, pose_model)
    return matrix.float(), offset.float()


def fit_pose_double(reference: torch.Tensor, keypoints: torch.Tensor, pose_model: str = "affine",
                    robust_steps: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fit_pose` in float64: A (T, 2, 2), b (T, 2).

    robust_steps > 0 refits that many times with Cauchy weights w_k = 1 / (1 + (r_k / c)^2) of each keypoint's
    residual r_k, c = 3 x the lower quartile of the residuals (at least ``ROBUST_MIN_SCALE``): keypoints that an
    expression moves (a dropping jaw, raised brows) then hardly pull the head pose, which the quarter of the
    keypoints that fit best (the rigid part of the face) decides (iteratively reweighted least squares).
    """
    if pose_model not in POSE_MODELS:
        raise ValueError(f"pose_model must be one of {POSE_MODELS}, got {pose_model!r}")
    reference, keypoints = reference.double(), keypoints.double()
    weights = torch.ones(keypoints.shape[:2], dtype=torch.float64, device=keypoints.device)  # (T, K)
    for step in range(robust_steps + 1):
        matrix, offset = _weighted_fit(reference, keypoints, weights, pose_model)
        if step == robust_steps:
            break
        predicted = torch.einsum("tij,kj->tki", matrix, reference) + offset[:, None]
        residual = (predicted - keypoints).norm(dim=-1)  # (T, K)
        scale = (3.0 * residual.quantile(0.25, dim=1, keepdim=True)).clamp_min(ROBUST_MIN_SCALE)
        weights = 1.0 / (1.0 + (residual / scale) ** 2)
    return matrix, offset


ROBUST_MIN_SCALE = 1e-3  # normalised units (about 0.13 px at 256 x 256)
ROBUST_STEPS = 10  # the reweighted fits of motion control and motion files (the speech model keeps plain least squares)


def _weighted_fit(reference: torch.Tensor, keypoints: torch.Tensor, weights: torch.Tensor, pose_model: str
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted least-squares pose: reference (K, 2), keypoints (T, K, 2), weights (T, K) -> A (T, 2, 2), b (T, 2)."""
    total = weights.sum(1, keepdim=True)  # (T, 1)
    centre_reference = (weights[..., None] * reference).sum(1) / total  # (T, 2)
    centre = (weights[..., None] * keypoints).sum(1) / total  # (T, 2)
    source = reference[None] - centre_reference[:, None]  # (T, K, 2)
    target = keypoints - centre[:, None]  # (T, K, 2)
    weighted = weights[..., None] * source
    if pose_model == "affine":
        # A^T = (S^T W S)^-1 S^T W Y for rows y_k = A s_k.
        eye = torch.eye(2, dtype=source.dtype, device=source.device)
        normal = weighted.transpose(1, 2) @ source + 1e-9 * eye
        matrix = torch.linalg.solve(normal, weighted.transpose(1, 2) @ target).transpose(1, 2)  # (T, 2, 2)
    else:
        x, y = source[..., 0], source[..., 1]
        norm = (weights * (source ** 2).sum(-1)).sum(-1) + 1e-12
        a = (weights * (target[..., 0] * x + target[..., 1] * y)).sum(-1) / norm  # s cos
        c = (weights * (target[..., 1] * x - target[..., 0] * y)).sum(-1) / norm  # s sin
        matrix = torch.stack([torch.stack([a, -c], -1), torch.stack([c, a], -1)], -2)
    offset = centre - torch.einsum("tij,tj->ti", matrix, centre_reference)
    return matrix, offset


def split_motion(keypoints: Keypoints, reference: Keypoints, pose_model: str = "affine") -> SplitMotion:
    """Keypoints (T, K, ...) of a clip -> pose and local motion relative to ``reference`` (1, K, ...)."""
    matrix, offset = fit_pose(reference.value[0], keypoints.value, pose_model)
    inverse = torch.linalg.inv(matrix)  # (T, 2, 2)
    aligned = torch.einsum("tij,tkj->tki", inverse, keypoints.value - offset[:, None])  # (T, K, 2)
    local_value = aligned - reference.value  # (T, K, 2)
    local_jacobian = torch.einsum("tij,tkjl->tkil", inverse, keypoints.jacobian) - reference.jacobian  # (T, K, 2, 2)
    identity = torch.eye(2, dtype=matrix.dtype, device=matrix.device)
    pose = torch.cat([(matrix - identity).flatten(1), offset], dim=1)  # (T, 6)
    local = torch.cat([local_value.flatten(1), local_jacobian.flatten(1)], dim=1)  # (T, 6 K)
    return SplitMotion(pose, local)


def compose_motion(reference: Keypoints, pose: torch.Tensor, local: torch.Tensor) -> Keypoints:
    """Inverse of :func:`split_motion`: reference (1, K, ...), pose (T, 6), local (T, 6 K) -> keypoints (T, K, ...)."""
    num_kp = reference.value.shape[1]
    matrix = pose[:, :4].reshape(-1, 2, 2) + torch.eye(2, dtype=pose.dtype, device=pose.device)  # (T, 2, 2)
    offset = pose[:, 4:]  # (T, 2)
    local_value = local[:, :2 * num_kp].reshape(-1, num_kp, 2)  # (T, K, 2)
    local_jacobian = local[:, 2 * num_kp:].reshape(-1, num_kp, 2, 2)  # (T, K, 2, 2)
    value = torch.einsum("tij,tkj->tki", matrix, reference.value + local_value) + offset[:, None]
    jacobian = torch.einsum("tij,tkjl->tkil", matrix, reference.jacobian + local_jacobian)
    return Keypoints(value, jacobian)
