"""All coordinate geometry: grids, keypoint heatmaps, warping, animation normalisation, random
TPS transforms, and camera back-projection / projection.

Coordinate conventions (the one place they are defined)
-------------------------------------------------------
* Normalised image coordinates are (x, y) in [-1, 1]: x along the width, y along the height.
* Keypoint and motion grids follow the reference implementation: grid point i of n sits at
  ``2 i / (n - 1) - 1`` (corners at exactly +-1).
* Every ``grid_sample`` goes through :func:`warp` and every bilinear resize through :func:`resize`, both with
  ``align_corners=False`` as the reference does (the torch default it was trained with). Together with the
  grid above this is off by half a pixel, which the released weights have learned; keep it.
* Camera geometry uses pixel units with pixel i's centre at coordinate i (OpenCV style) and converts to the
  ``align_corners=False`` normalised coordinates with :func:`pixels_to_normalized`, so that camera warps are
  exact.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import ConvexHull

ALIGN_CORNERS = False


class Keypoints(NamedTuple):
    """Keypoints of a batch of images.

    value: (B, K, 2) normalised (x, y) in [-1, 1].
    jacobian: (B, K, 2, 2) local affine motion around each keypoint, or None when not estimated.
    """

    value: torch.Tensor
    jacobian: Optional[torch.Tensor] = None

    def detach(self) -> "Keypoints":
        return Keypoints(self.value.detach(), None if self.jacobian is None else self.jacobian.detach())

    def index(self, selection) -> "Keypoints":
        """The keypoints of the batch elements ``selection`` (an index, slice or tensor)."""
        return Keypoints(self.value[selection], None if self.jacobian is None else self.jacobian[selection])


# Grids, heatmaps, warping.
def make_coordinate_grid(height: int, width: int, dtype: torch.dtype = torch.float32,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """Grid (H, W, 2) of normalised (x, y); grid[i, j] = (2j/(W-1) - 1, 2i/(H-1) - 1)."""
    x = 2 * (torch.arange(width, dtype=dtype, device=device) / (width - 1)) - 1
    y = 2 * (torch.arange(height, dtype=dtype, device=device) / (height - 1)) - 1
    return torch.stack([x.view(1, width).expand(height, width), y.view(height, 1).expand(height, width)], dim=2)


def keypoints_to_gaussian(value: torch.Tensor, height: int, width: int, variance: float) -> torch.Tensor:
    """Gaussian heatmaps exp(-|z - kp|^2 / (2 variance)) of keypoints (..., K, 2) on an (H, W) grid: (..., K, H, W)."""
    grid = make_coordinate_grid(height, width, value.dtype, value.device)
    difference = grid - value[..., None, None, :]  # (..., K, H, W, 2)
    return torch.exp(-0.5 * (difference ** 2).sum(-1) / variance)


def heatmap_to_keypoints(heatmap: torch.Tensor) -> torch.Tensor:
    """Expected (x, y) of normalised heatmaps (B, K, H, W) summing to 1 over H, W: (B, K, 2)."""
    grid = make_coordinate_grid(heatmap.shape[2], heatmap.shape[3], heatmap.dtype, heatmap.device)
    return (heatmap.unsqueeze(-1) * grid).sum(dim=(2, 3))


def warp(image: torch.Tensor, grid: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Bilinearly sample ``image`` (B, C, H, W) at normalised ``grid`` (B, h, w, 2): (B, C, h, w)."""
    return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode=padding_mode,
                         align_corners=ALIGN_CORNERS)


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) to (B, C, *size); the identity when the size already matches."""
    if tuple(image.shape[2:]) == tuple(size):
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=ALIGN_CORNERS)


def halve(image: torch.Tensor, times: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H / 2^times, W / 2^times) by 2^times x 2^times box averaging: how a grown (e.g. 512)
    model hands its images to the networks that keep the release's internal size. The identity for ``times`` 0."""
    if times == 0:
        return image
    return F.avg_pool2d(image, kernel_size=2 ** times)


def warp_by_deformation(image: torch.Tensor, deformation: torch.Tensor) -> torch.Tensor:
    """Warp (B, C, H, W) by a dense deformation (B, h, w, 2), resized bilinearly to (H, W) when needed."""
    size = tuple(image.shape[2:])
    if tuple(deformation.shape[1:3]) != size:
        deformation = resize(deformation.permute(0, 3, 1, 2), size).permute(0, 2, 3, 1)
    return warp(image, deformation)


def inverse_2x2(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of 2x2 matrices (..., 2, 2) in closed form, [[d, -b], [-c, a]] / (ad - bc).

    Used for keypoint Jacobians: the same result as ``torch.inverse`` up to float rounding, and it exports to
    ONNX (which has no matrix inverse).
    """
    a, b, c, d = matrix[..., 0, 0], matrix[..., 0, 1], matrix[..., 1, 0], matrix[..., 1, 1]
    determinant = (a * d - b * c)[..., None, None]
    adjugate = torch.stack([torch.stack([d, -b], dim=-1), torch.stack([-c, a], dim=-1)], dim=-2)
    return adjugate / determinant


# Animation: relative motion and scale adaptation.
def convex_hull_area(points: torch.Tensor) -> float:
    """Area of the 2-D convex hull of points (K, 2), in float64 (scipy's ``ConvexHull.volume``)."""
    return float(ConvexHull(points.detach().double().cpu().numpy()).volume)


def adapt_movement_scale(kp_source: Keypoints, kp_driving_initial: Keypoints) -> float:
    """s = sqrt(hull area of source keypoints) / sqrt(hull area of initial driving keypoints), batch element 0."""
    return float(np.sqrt(convex_hull_area(kp_source.value[0])) / np.sqrt(convex_hull_area(kp_driving_initial.value[0])))


def normalize_keypoints(kp_source: Keypoints, kp_driving: Keypoints, kp_driving_initial: Keypoints,
                        adapt_movement_scale_: bool = False, use_relative_movement: bool = False,
                        use_relative_jacobian: bool = False, movement_scale: Optional[float] = None,
                        motion_strength: float = 1.0) -> Keypoints:
    """Transfer driving motion onto the source keypoints (FOMM relative motion, as DaGAN's demo does it).

    value    = (kp_driving - kp_driving_initial) * s + kp_source        (relative movement)
    jacobian = J_driving @ inv(J_driving_initial) @ J_source             (relative jacobian)
    with s from :func:`adapt_movement_scale` when asked for, else 1. Without relative movement the driving
    keypoints are returned unchanged. ``movement_scale`` overrides s (to compute it once per video).
    ``motion_strength`` m scales the relative motion (0 = the source as it is, 1 = as driven): the displacement
    is multiplied by m and the relative jacobian becomes I + m (J_driving @ inv(J_driving_initial) - I).
    kp_source, kp_driving_initial: (1 or B, K, ...); kp_driving: (B, K, ...).
    """
    if not use_relative_movement:
        return kp_driving
    scale = 1.0
    if movement_scale is not None:
        scale = movement_scale
    elif adapt_movement_scale_:
        scale = adapt_movement_scale(kp_source, kp_driving_initial)
    value = (kp_driving.value - kp_driving_initial.value) * (scale * motion_strength) + kp_source.value
    jacobian = kp_driving.jacobian
    if use_relative_jacobian and jacobian is not None:
        relative = torch.matmul(jacobian, inverse_2x2(kp_driving_initial.jacobian))
        if motion_strength != 1.0:
            identity = torch.eye(2, dtype=relative.dtype, device=relative.device)
            relative = identity + motion_strength * (relative - identity)
        jacobian = torch.matmul(relative, kp_source.jacobian)
    return Keypoints(value, jacobian)


# Random affine + thin-plate-spline transforms (equivariance losses).
class RandomTransform:
    """A random affine + TPS warp per batch element (FOMM's equivariance transform).

    T(z) = A z + b + sum_c w_c U(|z - c|_1),  U(r) = r^2 log(r + 1e-6), control points c on a
    ``points_tps`` x ``points_tps`` grid; A = I + N(0, sigma_affine), b ~ N(0, sigma_affine), w ~ N(0, sigma_tps).
    The L1 distance in U is the reference's choice; keep it for equivalent training.
    """

    def __init__(self, batch_size: int, sigma_affine: float, sigma_tps: float, points_tps: int,
                 generator: Optional[torch.Generator] = None, device: torch.device | str | None = None):
        noise = torch.randn(batch_size, 2, 3, generator=generator) * sigma_affine
        self.theta = (noise + torch.eye(2, 3)).to(device)  # (B, 2, 3)
        self.control_points = make_coordinate_grid(points_tps, points_tps, device=device).view(1, -1, 2)
        self.control_params = (torch.randn(batch_size, 1, points_tps ** 2, generator=generator) * sigma_tps).to(device)

    @classmethod
    def identity(cls, batch_size: int, points_tps: int = 5) -> "RandomTransform":
        return cls(batch_size, 0.0, 0.0, points_tps)

    def select(self, indices: torch.Tensor | list[int]) -> "RandomTransform":
        """The transforms of batch elements ``indices`` (e.g. one rank's share of a global batch)."""
        chosen = RandomTransform.__new__(RandomTransform)
        chosen.theta, chosen.control_params = self.theta[indices], self.control_params[indices]
        chosen.control_points = self.control_points
        return chosen

    def to(self, device: torch.device | str) -> "RandomTransform":
        moved = self.select(slice(None))
        moved.theta, moved.control_params = self.theta.to(device), self.control_params.to(device)
        moved.control_points = self.control_points.to(device)
        return moved

    def warp_coordinates(self, coordinates: torch.Tensor) -> torch.Tensor:
        """Apply T to points (B, N, 2): (B, N, 2)."""
        theta = self.theta.to(coordinates.dtype)
        transformed = coordinates @ theta[:, :, :2].transpose(1, 2) + theta[:, None, :, 2]
        difference = coordinates[:, :, None, :] - self.control_points.to(coordinates.dtype)[:, None]  # (B, N, P, 2)
        distance = difference.abs().sum(-1)  # (B, N, P)
        radial = distance ** 2 * torch.log(distance + 1e-6)
        return transformed + (radial * self.control_params.to(coordinates.dtype)).sum(dim=2, keepdim=True)

    def jacobian(self, coordinates: torch.Tensor) -> torch.Tensor:
        """dT/dz at points (B, N, 2): (B, N, 2, 2), rows = output coordinate, columns = input coordinate."""
        theta = self.theta.to(coordinates.dtype)
        difference = coordinates[:, :, None, :] - self.control_points.to(coordinates.dtype)[:, None]
        distance = difference.abs().sum(-1, keepdim=True)  # (B, N, P, 1)
        # d/dz [r^2 log(r + eps)] = (2 r log(r + eps) + r^2 / (r + eps)) * sign(z - c)
        radial_derivative = 2 * distance * torch.log(distance + 1e-6) + distance ** 2 / (distance + 1e-6)
        gradient = (radial_derivative * torch.sign(difference) * self.control_params.to(coordinates.dtype)[..., None]
                    ).sum(dim=2)  # (B, N, 2)
        affine = theta[:, None, :, :2].expand(-1, coordinates.shape[1], -1, -1)
        return affine + gradient[:, :, None, :]

    def transform_frame(self, frame: torch.Tensor) -> torch.Tensor:
        """Warp images (B, C, H, W) by T with reflection padding."""
        batch, _, height, width = frame.shape
        grid = make_coordinate_grid(height, width, frame.dtype, frame.device).view(1, height * width, 2)
        grid = self.warp_coordinates(grid.expand(batch, -1, -1)).view(batch, height, width, 2)
        return warp(frame, grid, padding_mode="reflection")


# Camera geometry for the self-supervised depth stage.
def pixels_to_keypoint_coordinates(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel coordinates (N, 2) (x, y) of an image of the model's size -> keypoint coordinates in [-1, 1] (the
    keypoint grid's convention above: pixel j at 2 j / (W - 1) - 1), as numpy float64 (N, 2)."""
    points = np.asarray(points, dtype=np.float64)
    return np.stack([2 * points[:, 0] / (width - 1) - 1, 2 * points[:, 1] / (height - 1) - 1], axis=1)


def pixels_to_normalized(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel coordinates (..., 2) with pixel i's centre at i -> ``align_corners=False`` normalised (x, y)."""
    size = torch.tensor([width, height], dtype=pixels.dtype, device=pixels.device)
    return (2 * pixels + 1) / size - 1


def pixel_grid(height: int, width: int, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Homogeneous pixel coordinates (3, H*W): rows x, y, 1 in row-major pixel order."""
    y, x = torch.meshgrid(torch.arange(height, dtype=dtype, device=device),
                          torch.arange(width, dtype=dtype, device=device), indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1), torch.ones(height * width, dtype=dtype, device=device)])


def backproject(depth: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Camera-space points of every pixel: depth (B, 1, H, W), intrinsics (B, 3, 3) -> (B, 3, H*W).

    X = depth * K^-1 [x, y, 1]^T.
    """
    batch, _, height, width = depth.shape
    rays = torch.linalg.inv(intrinsics) @ pixel_grid(height, width, depth.dtype, depth.device)  # (B, 3, H*W)
    return rays * depth.reshape(batch, 1, height * width)


def project(points: torch.Tensor, intrinsics: torch.Tensor, transform: Optional[torch.Tensor] = None,
            eps: float = 1e-7) -> tuple[torch.Tensor, torch.Tensor]:
    """Project camera points (B, 3, N), optionally moved by a rigid ``transform`` (B, 4, 4) first.

    Returns pixel coordinates (B, N, 2) and the depth of each point in the new view (B, N).
    """
    if transform is not None:
        points = transform[:, :3, :3] @ points + transform[:, :3, 3:]
    camera = intrinsics @ points  # (B, 3, N)
    depth = camera[:, 2]
    pixels = camera[:, :2] / (depth.unsqueeze(1) + eps)
    return pixels.transpose(1, 2), depth


def reproject_grid(depth: torch.Tensor, intrinsics: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
    """Sampling grid (B, H, W, 2) that fetches, for each target pixel with ``depth``, the source-view pixel.

    ``transform`` (B, 4, 4) maps target-camera points into the source camera.
    """
    batch, _, height, width = depth.shape
    pixels, _ = project(backproject(depth, intrinsics), intrinsics, transform)
    return pixels_to_normalized(pixels, height, width).view(batch, height, width, 2)


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula: rotation vectors (B, 3) -> rotation matrices (B, 3, 3)."""
    angle = axis_angle.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # (B, 1)
    axis = axis_angle / angle
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    cross = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).view(-1, 3, 3)
    sin, cos = torch.sin(angle)[..., None], torch.cos(angle)[..., None]
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + sin * cross + (1 - cos) * (cross @ cross)


def pose_to_matrix(axis_angle: torch.Tensor, translation: torch.Tensor, invert: bool = False) -> torch.Tensor:
    """Rigid transforms (B, 4, 4) from rotation vectors (B, 3) and translations (B, 3); optionally inverted."""
    rotation = axis_angle_to_matrix(axis_angle)
    translation = translation.unsqueeze(-1)
    if invert:
        rotation = rotation.transpose(1, 2)
        translation = -rotation @ translation
    matrix = torch.zeros(axis_angle.shape[0], 4, 4, dtype=axis_angle.dtype, device=axis_angle.device)
    matrix[:, :3, :3] = rotation
    matrix[:, :3, 3:] = translation
    matrix[:, 3, 3] = 1
    return matrix
