"""Geometry invariants: grids, heatmaps, identity motion, TPS, camera round trips, animation normalisation."""
from __future__ import annotations

import math

import pytest
import torch

from dagan.geometry import (Keypoints, RandomTransform, adapt_movement_scale, axis_angle_to_matrix, backproject,
                            heatmap_to_keypoints, keypoints_to_gaussian, make_coordinate_grid, normalize_keypoints,
                            pixel_grid, pixels_to_normalized, pose_to_matrix, project, reproject_grid, warp)
from dagan.networks.dense_motion import DenseMotionNetwork, sparse_motions


def test_grid_corners_and_layout():
    grid = make_coordinate_grid(5, 7)
    assert grid.shape == (5, 7, 2)
    assert grid[0, 0].tolist() == [-1, -1] and grid[-1, -1].tolist() == [1, 1]
    assert grid[0, -1].tolist() == [1, -1]  # x runs along the width
    assert torch.allclose(grid[2, 3], torch.tensor([0.0, 0.0]))


def test_heatmap_peak_sits_at_keypoint():
    value = torch.tensor([[[0.5, -0.25], [-0.75, 0.5]]])
    heatmap = keypoints_to_gaussian(value, 9, 9, 0.01)  # grid step 0.25: both keypoints are grid points
    grid = make_coordinate_grid(9, 9)
    for k in range(2):
        index = int(heatmap[0, k].argmax())
        assert torch.allclose(grid.view(-1, 2)[index], value[0, k])
    # The softmax expectation of a sharp heatmap recovers an off-grid keypoint.
    value = torch.tensor([[[0.31, -0.47]]])
    sharp = keypoints_to_gaussian(value, 64, 64, 0.001)
    recovered = heatmap_to_keypoints(sharp / sharp.sum(dim=(2, 3), keepdim=True))
    assert torch.allclose(recovered, value, atol=1e-3)


def test_identity_keypoints_give_identity_motion():
    torch.manual_seed(0)
    network = DenseMotionNetwork(block_expansion=8, num_blocks=2, max_features=32, num_kp=4, num_channels=3,
                                 estimate_occlusion_map=True).eval()
    kp = Keypoints(torch.rand(1, 4, 2) * 2 - 1, torch.eye(2).repeat(1, 4, 1, 1) + 0.1 * torch.rand(1, 4, 2, 2))
    motion = network(torch.rand(1, 3, 16, 16), kp, kp)
    identity = make_coordinate_grid(16, 16).unsqueeze(0)
    assert torch.allclose(sparse_motions(kp, kp, 16, 16), identity.unsqueeze(1).expand(1, 5, 16, 16, 2), atol=1e-6)
    assert torch.allclose(motion.deformation, identity, atol=1e-6)


def test_pixel_centre_grid_warps_to_itself():
    image = torch.rand(1, 2, 6, 9)
    grid = pixels_to_normalized(pixel_grid(6, 9)[:2].T, 6, 9).view(1, 6, 9, 2)
    assert torch.allclose(warp(image, grid), image, atol=1e-6)


def test_zero_tps_is_identity():
    transform = RandomTransform.identity(batch_size=2)
    points = torch.rand(2, 10, 2) * 2 - 1
    assert torch.allclose(transform.warp_coordinates(points), points)
    assert torch.allclose(transform.jacobian(points), torch.eye(2).expand(2, 10, 2, 2))
    frame = torch.rand(2, 3, 8, 8)
    grid_frame = transform.transform_frame(frame)
    assert grid_frame.shape == frame.shape


def test_tps_jacobian_matches_autograd():
    generator = torch.Generator().manual_seed(3)
    transform = RandomTransform(2, sigma_affine=0.05, sigma_tps=0.05, points_tps=5, generator=generator)
    points = (torch.rand(2, 7, 2, generator=generator) * 2 - 1).requires_grad_(True)
    warped = transform.warp_coordinates(points)
    rows = [torch.autograd.grad(warped[..., i].sum(), points, retain_graph=True)[0] for i in range(2)]
    autograd_jacobian = torch.stack(rows, dim=-2)
    assert torch.allclose(transform.jacobian(points.detach()), autograd_jacobian, atol=1e-5)
    assert not torch.allclose(transform.jacobian(points.detach()), torch.eye(2).expand(2, 7, 2, 2), atol=1e-3)


def test_random_transform_is_seeded():
    a = RandomTransform(2, 0.05, 0.005, 5, generator=torch.Generator().manual_seed(0))
    b = RandomTransform(2, 0.05, 0.005, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.theta, b.theta) and torch.equal(a.control_params, b.control_params)


def test_rotation_helpers():
    axis_angle = torch.tensor([[0.0, 0.0, math.pi / 2], [0.3, -0.2, 0.1]])
    rotation = axis_angle_to_matrix(axis_angle)
    assert torch.allclose(rotation[0] @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    assert torch.allclose(rotation @ rotation.transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-6)
    translation = torch.tensor([[0.1, 0.2, 0.3], [-0.1, 0.0, 0.5]])
    forward, inverse = pose_to_matrix(axis_angle, translation), pose_to_matrix(axis_angle, translation, invert=True)
    assert torch.allclose(forward @ inverse, torch.eye(4).expand(2, 4, 4), atol=1e-6)


def test_backproject_then_project_round_trips():
    intrinsics = torch.tensor([[[80.0, 0.0, 15.5], [0.0, 90.0, 11.5], [0.0, 0.0, 1.0]]]).repeat(2, 1, 1)
    intrinsics[1, 0, 0] = 60.0  # per-sample intrinsics
    depth = 1 + torch.rand(2, 1, 24, 32)
    points = backproject(depth, intrinsics)
    pixels, new_depth = project(points, intrinsics)
    assert torch.allclose(pixels, pixel_grid(24, 32)[:2].T.expand(2, -1, -1), atol=1e-4)
    assert torch.allclose(new_depth, depth.view(2, -1), atol=1e-5)
    # A rigid motion and its inverse also round-trip.
    motion = pose_to_matrix(torch.tensor([[0.05, -0.1, 0.02]] * 2), torch.tensor([[0.1, 0.0, -0.05]] * 2))
    moved = motion[:, :3, :3] @ points + motion[:, :3, 3:]
    back, _ = project(moved, intrinsics, torch.linalg.inv(motion))
    assert torch.allclose(back, pixels, atol=1e-3)
    # Identity pose gives an identity sampling grid in align_corners=False coordinates.
    image = torch.rand(2, 3, 24, 32)
    grid = reproject_grid(depth, intrinsics, torch.eye(4).expand(2, 4, 4))
    assert torch.allclose(warp(image, grid), image, atol=1e-4)


def test_normalize_keypoints_math():
    generator = torch.Generator().manual_seed(0)
    def random_kp(batch):
        return Keypoints(torch.rand(batch, 6, 2, generator=generator) - 0.5,
                         torch.eye(2) + 0.2 * torch.rand(batch, 6, 2, 2, generator=generator))
    source, initial, driving = random_kp(1), random_kp(1), random_kp(3)
    absolute = normalize_keypoints(source, driving, initial)
    assert absolute is driving
    relative = normalize_keypoints(source, driving, initial, use_relative_movement=True, use_relative_jacobian=True)
    assert torch.allclose(relative.value, driving.value - initial.value + source.value)
    expected_jacobian = driving.jacobian @ torch.inverse(initial.jacobian) @ source.jacobian
    assert torch.allclose(relative.jacobian, expected_jacobian, atol=1e-6)
    # Initial frame in, source keypoints out.
    same = normalize_keypoints(source, initial, initial, True, True, True)
    assert torch.allclose(same.value, source.value, atol=1e-6)
    # adapt_scale: a keypoint set twice as large has half the movement scale.
    doubled = Keypoints(source.value * 2, source.jacobian)
    assert adapt_movement_scale(source, doubled) == pytest.approx(0.5)
    scaled = normalize_keypoints(source, driving, doubled, adapt_movement_scale_=True, use_relative_movement=True)
    assert torch.allclose(scaled.value, (driving.value - doubled.value) * 0.5 + source.value)
