"""Synthetic talking-head clips: determinism, shapes, and the exactness of their ground-truth geometry.

Back-projection, projection and sampling go through ``dagan.geometry`` (pixel i's centre at coordinate i,
``grid_sample`` with ``align_corners=False``), the functions the depth stage trains with; the helpers below
only adapt them to single (H, W) maps.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from dagan import geometry
from dagan.data.synthetic import heads as synthetic
from dagan.data.synthetic import HeadShape, MotionRanges, SyntheticClip, relative_pose, render_clip, warp_points

SIZE = 64
CLOSED_MOUTH = MotionRanges(mouth_opening_range=(0.0, 0.0))


# Camera geometry on single frames, through dagan.geometry (float64).
def backproject(depth: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Camera points (H, W, 3) of a depth map (H, W), pixel (i, j) at (u, v) = (j, i)."""
    height, width = depth.shape
    points = geometry.backproject(depth.double()[None, None], intrinsics.double()[None])  # (1, 3, H*W)
    return points[0].T.reshape(height, width, 3)


def transform(points: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
    """Apply a rigid (4, 4) transform to points (..., 3)."""
    pose = pose.double()
    return points @ pose[:3, :3].T + pose[:3, 3]


def project(points: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Pixel coordinates (..., 2) of camera points (..., 3)."""
    flat = points.reshape(1, -1, 3).transpose(1, 2)  # (1, 3, N)
    pixels, _ = geometry.project(flat, intrinsics.double()[None])  # (1, N, 2)
    return pixels[0].reshape(*points.shape[:-1], 2)


def sample(image: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample image (C, H, W) at pixel coordinates (H', W', 2): (C, H', W')."""
    height, width = image.shape[-2:]
    grid = geometry.pixels_to_normalized(pixels, height, width)  # (H', W', 2)
    return geometry.warp(image[None].double(), grid[None], padding_mode="border")[0]


def erode(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Binary erosion of an (H, W) mask with a (2 pixels + 1)^2 square."""
    return -F.max_pool2d(-mask[None, None].float(), 2 * pixels + 1, 1, pixels)[0, 0] > 0.5


def reconstruct(clip: SyntheticClip, source: int, target: int, points_target: torch.Tensor,
                depth_scale: float = 1.0):
    """Reconstruct frame ``source`` from frame ``target`` given where source's points lie in target's camera.

    Returns (reconstruction (3, H, W), visible (H, W) bool): the visible pixels are eroded head pixels whose
    point projects inside the target frame onto the same head surface (the target's depth agrees, so the
    point is not occluded there).
    """
    pixels = project(points_target, clip.intrinsics)  # (H, W, 2)
    reconstruction = sample(clip.frames[target], pixels)
    target_depth = sample(clip.depth[target], pixels)[0]
    target_head = sample(clip.head_mask[target].double(), pixels)[0] > 0.999
    inside = (pixels >= 2).all(-1) & (pixels <= SIZE - 3).all(-1)
    not_occluded = (target_depth - points_target[..., 2] / depth_scale).abs() < 0.01
    visible = erode(clip.head_mask[source, 0], 2) & inside & target_head & not_occluded
    return reconstruction, visible


def photometric_error(clip: SyntheticClip, source: int, reconstruction: torch.Tensor,
                      visible: torch.Tensor) -> float:
    """Mean absolute colour difference between a reconstruction (3, H, W) and frame source on visible pixels."""
    return float((reconstruction - clip.frames[source].double()).abs().mean(0)[visible].mean())


def rigid_reconstruction_error(clip: SyntheticClip, source: int, target: int, depth: torch.Tensor,
                               visible: torch.Tensor | None = None):
    """Warp frame target into frame source through ``depth`` (H, W) and the head's relative pose."""
    points = transform(backproject(depth, clip.intrinsics), relative_pose(clip, source, target))
    reconstruction, visible_here = reconstruct(clip, source, target, points)
    visible = visible_here if visible is None else visible
    return photometric_error(clip, source, reconstruction, visible), visible


# Fixtures. At 25 fps consecutive 64 x 64 frames move by only 0.1-1 pixel, so little that the photometric
# effect of a wrong depth is no larger than the error of bilinearly interpolating a textured image. The
# photometric tests therefore use fast clips (fps=5: five times the per-frame motion of 25 fps) and a texture
# of moderate detail (the astronaut blurred by 2 texels); ``test_recast_rays_*`` checks the geometry
# exactly, without interpolation, at 25 fps.
FAST_FPS = 5.0


@pytest.fixture(scope="module")
def moderate_texture() -> np.ndarray:
    return gaussian_filter(synthetic.default_texture().numpy(), sigma=(2, 2, 0))


@pytest.fixture(scope="module")
def clip() -> SyntheticClip:
    return render_clip(6, size=SIZE, seed=0)


@pytest.fixture(scope="module")
def rigid_clip() -> SyntheticClip:
    return render_clip(6, size=SIZE, seed=1, motion=CLOSED_MOUTH)


@pytest.fixture(scope="module")
def fast_rigid_clip(moderate_texture) -> SyntheticClip:
    return render_clip(6, size=SIZE, seed=2, fps=FAST_FPS, texture=moderate_texture, motion=CLOSED_MOUTH)


@pytest.fixture(scope="module")
def fast_talking_clip(moderate_texture) -> SyntheticClip:
    return render_clip(6, size=SIZE, seed=2, fps=FAST_FPS, texture=moderate_texture)


# Determinism.
def test_same_seed_gives_identical_clips_and_leaves_global_rng_alone():
    rng_state = torch.get_rng_state()
    first, second = render_clip(3, size=32, seed=5), render_clip(3, size=32, seed=5)
    assert torch.equal(torch.get_rng_state(), rng_state)
    for name in ("frames", "depth", "head_mask", "rotation", "translation", "intrinsics", "mouth_opening"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name


def test_different_seeds_give_different_clips():
    first, second = render_clip(2, size=32, seed=5), render_clip(2, size=32, seed=6)
    assert not torch.equal(first.frames, second.frames)
    assert not torch.equal(first.intrinsics, second.intrinsics)
    assert not torch.equal(first.rotation, second.rotation)


# Shapes, dtypes, ranges.
def check_clip(clip: SyntheticClip, num_frames: int, size: int) -> None:
    assert clip.frames.shape == (num_frames, 3, size, size) and clip.frames.dtype == torch.float32
    assert clip.depth.shape == (num_frames, 1, size, size) and clip.depth.dtype == torch.float32
    assert clip.head_mask.shape == (num_frames, 1, size, size) and clip.head_mask.dtype == torch.bool
    assert clip.rotation.shape == (num_frames, 3, 3) and clip.translation.shape == (num_frames, 3)
    assert clip.intrinsics.shape == (3, 3) and clip.mouth_opening.shape == (num_frames,)
    assert 0.0 <= clip.frames.min() and clip.frames.max() <= 1.0
    assert torch.all(clip.depth[~clip.head_mask] == synthetic.BACKGROUND_DEPTH)
    head_depth = clip.depth[clip.head_mask]
    assert 1.0 < head_depth.min() and head_depth.max() < 2.1
    assert 0.15 < clip.head_mask.float().mean() < 0.6
    identity = torch.eye(3).expand(num_frames, 3, 3)
    assert torch.allclose(clip.rotation @ clip.rotation.transpose(1, 2), identity, atol=1e-5)
    assert torch.allclose(torch.linalg.det(clip.rotation), torch.ones(num_frames), atol=1e-5)
    focal = clip.intrinsics[0, 0] / size
    assert synthetic.FOCAL_RANGE[0] <= focal <= synthetic.FOCAL_RANGE[1]
    assert clip.intrinsics[0, 0] == clip.intrinsics[1, 1]
    assert abs(clip.intrinsics[0, 2] - (size - 1) / 2) <= 0.021 * size
    assert abs(clip.intrinsics[1, 2] - (size - 1) / 2) <= 0.021 * size


def test_clip_shapes_and_ranges_64(clip):
    check_clip(clip, 6, SIZE)
    assert clip.fps == 25.0
    assert clip.head_angles.abs().max(0).values.le(torch.tensor([30.0, 15.0, 10.0])).all()
    assert 0.0 <= clip.mouth_opening.min() and clip.mouth_opening.max() <= 1.0
    # The trajectories are smooth: at most a few degrees per frame at 25 fps.
    assert (clip.head_angles[1:] - clip.head_angles[:-1]).abs().max() < 5.0


def test_clip_shapes_and_ranges_256():
    check_clip(render_clip(2, size=256, seed=3), 2, 256)


def test_supersampling_changes_only_edge_colours():
    plain, antialiased = render_clip(2, size=32, seed=2), render_clip(2, size=32, seed=2, supersample=2)
    assert torch.equal(plain.depth, antialiased.depth) and torch.equal(plain.head_mask, antialiased.head_mask)
    changed = (plain.frames != antialiased.frames).any(1)  # (T, H, W)
    assert 0 < changed.sum() < 0.5 * changed.numel()


def test_custom_texture_and_bad_texture():
    checkerboard = np.repeat((np.indices((40, 30)).sum(0) % 2)[..., None], 3, axis=2)  # (40, 30, 3) in {0, 1}
    clip = render_clip(1, size=32, seed=0, texture=checkerboard)
    assert clip.frames.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="texture"):
        render_clip(1, size=32, texture=np.zeros((8, 8)))


# Ground-truth geometry.
def test_relative_pose_composes_and_maps_head_points(clip):
    assert torch.allclose(relative_pose(clip, 2, 2), torch.eye(4), atol=1e-6)
    assert torch.allclose(relative_pose(clip, 1, 4) @ relative_pose(clip, 4, 1), torch.eye(4), atol=1e-5)
    object_points = torch.randn(10, 3, dtype=torch.float64) * 0.3
    in_frame = [object_points @ clip.rotation[t].double().T + clip.translation[t].double() for t in (1, 4)]
    assert torch.allclose(transform(in_frame[0], relative_pose(clip, 1, 4)), in_frame[1], atol=1e-5)


def test_rigid_head_warp_reconstructs_frames_with_true_depth(fast_rigid_clip):
    """Warp frame t+1 into frame t through the true depth and head pose: the head is reproduced (mean over the
    five consecutive pairs); a wrong depth (scaled by 1.3, or the background plane) is at least 5x worse."""
    errors = []
    for source in range(fast_rigid_clip.num_frames - 1):
        depth = fast_rigid_clip.depth[source, 0]
        error, visible = rigid_reconstruction_error(fast_rigid_clip, source, source + 1, depth)
        assert visible.sum() > 0.5 * erode(fast_rigid_clip.head_mask[source, 0], 2).sum()
        scaled_error, _ = rigid_reconstruction_error(fast_rigid_clip, source, source + 1, depth * 1.3, visible)
        plane = torch.full_like(depth, synthetic.BACKGROUND_DEPTH)
        plane_error, _ = rigid_reconstruction_error(fast_rigid_clip, source, source + 1, plane, visible)
        errors.append((error, scaled_error, plane_error))
    error, scaled_error, plane_error = torch.tensor(errors).mean(0).tolist()
    assert error < 0.012, error
    assert scaled_error > 5 * error and plane_error > 5 * error, (error, scaled_error, plane_error)


def test_warp_points_reconstructs_frames_with_moving_jaw(fast_talking_clip):
    """With the mouth moving, warp_points (pose + jaw) reproduces the whole head, mouth included."""
    clip, errors = fast_talking_clip, []
    for source in range(clip.num_frames - 1):
        target = source + 1
        assert clip.mouth_opening[source] != clip.mouth_opening[target]
        head = clip.head_mask[source, 0]
        points = backproject(clip.depth[source, 0], clip.intrinsics)  # (H, W, 3)
        warped = warp_points(clip, source, target, points.reshape(-1, 3), head.flatten()).reshape(points.shape)
        reconstruction, visible = reconstruct(clip, source, target, warped)
        error = photometric_error(clip, source, reconstruction, visible)
        wrong = transform(backproject(clip.depth[source, 0] * 1.3, clip.intrinsics),
                          relative_pose(clip, source, target))
        wrong_error = photometric_error(clip, source, reconstruct(clip, source, target, wrong)[0], visible)
        errors.append((error, wrong_error))
    error, wrong_error = torch.tensor(errors).mean(0).tolist()
    assert error < 0.012 and wrong_error > 5 * error, (error, wrong_error)


@pytest.mark.parametrize("jaw_moves", [False, True])
def test_recast_rays_see_the_warped_surface_point(clip, rigid_clip, jaw_moves):
    """Exact check at 25 fps: the ray through the sub-pixel position where a head pixel of frame t lands in frame
    t+1 hits the same surface point (same depth) and sees the same colour (bar the few mouth pixels whose
    appearance changes as the jaw moves)."""
    clip = clip if jaw_moves else rigid_clip
    source, target = 2, 3
    head = erode(clip.head_mask[source, 0], 2)
    points = backproject(clip.depth[source, 0], clip.intrinsics)[head]  # (M, 3)
    warped = warp_points(clip, source, target, points, torch.ones(len(points), dtype=torch.bool))
    if not jaw_moves:
        assert torch.allclose(warped, transform(points, relative_pose(clip, source, target)), atol=1e-5)
    rays = warped / warped[:, 2:3]  # (M, 3) rays with unit z through the projected positions
    colour, depth, hit = synthetic.cast_rays(
        rays.float(), clip.rotation[target], clip.translation[target], float(clip.mouth_opening[target]),
        clip.face_texture, clip.background_texture, 1.0 / float(clip.intrinsics[0, 0]), clip.shape)
    visible = hit & ((depth.double() - warped[:, 2]).abs() < 1e-3)  # not occluded in frame t+1
    assert visible.float().mean() > 0.9
    source_colour = clip.frames[source].permute(1, 2, 0)[head]  # (M, 3)
    error = (colour - source_colour)[visible].abs().mean(1)
    assert error.median() < 1e-4 and error.quantile(0.97) < 0.01
    if not jaw_moves:
        assert error.mean() < 1e-3  # with a moving jaw, the lip band's shading and the mouth cavity change
    wrong_depth = (depth.double() - 1.3 * warped[:, 2]).abs() < 1e-3
    assert wrong_depth.float().mean() < 0.01


def test_background_is_static(clip):
    """Background pixels are reproduced exactly by the identity (static camera), not by the head's motion."""
    source, target = 0, 1
    background = erode(~clip.head_mask[source, 0], 2) & erode(~clip.head_mask[target, 0], 2)
    points = backproject(clip.depth[source, 0], clip.intrinsics)
    static = warp_points(clip, source, target, points.reshape(-1, 3), torch.zeros(SIZE * SIZE, dtype=torch.bool))
    assert torch.equal(static, points.reshape(-1, 3))
    identity = sample(clip.frames[target], project(points, clip.intrinsics))
    identity_error = photometric_error(clip, source, identity, background)
    head_motion = sample(clip.frames[target], project(transform(points, relative_pose(clip, source, target)),
                                                      clip.intrinsics))
    rigid_error = photometric_error(clip, source, head_motion, background)
    assert identity_error < 1e-6 and rigid_error > 1e-3, (identity_error, rigid_error)


# Mouth and pose conventions.
def render_pose(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0, mouth_opening: float = 0.0,
                size: int = SIZE, eye_closure: float = 0.0) -> synthetic.RenderedFrame:
    intrinsics = torch.tensor([[1.4 * size, 0.0, (size - 1) / 2], [0.0, 1.4 * size, (size - 1) / 2], [0, 0, 1.0]])
    rotation = synthetic.rotation_from_angles(torch.tensor(yaw), torch.tensor(pitch), torch.tensor(roll))
    translation = torch.tensor([0.0, 0.0, synthetic.HEAD_DISTANCE])
    face_texture = synthetic.prepare_face_texture(None, size)
    background = synthetic.make_background_texture(torch.Generator().manual_seed(0))
    return synthetic.render_frame(rotation, translation, mouth_opening, intrinsics, size, face_texture, background,
                                  eye_closure=eye_closure)


def project_object_point(point: tuple[float, float, float], yaw: float = 0.0, pitch: float = 0.0,
                         roll: float = 0.0, size: int = SIZE) -> torch.Tensor:
    rotation = synthetic.rotation_from_angles(torch.tensor(yaw), torch.tensor(pitch), torch.tensor(roll))
    camera = rotation.double() @ torch.tensor(point, dtype=torch.float64) + torch.tensor(
        [0.0, 0.0, synthetic.HEAD_DISTANCE], dtype=torch.float64)
    return (size - 1) / 2 + 1.4 * size * camera[:2] / camera[2]  # (u, v)


@pytest.mark.parametrize("yaw", [0.0, 20.0])
def test_mouth_opening_changes_only_the_lower_face(yaw):
    closed, opened = render_pose(yaw=yaw, mouth_opening=0.0), render_pose(yaw=yaw, mouth_opening=1.0)
    changed = (closed.image - opened.image).abs().amax(0) > 1e-4  # (H, W)
    changed |= (closed.depth - opened.depth)[0].abs() > 1e-5
    shape = HeadShape()
    above_lips = project_object_point((0.0, shape.mouth_height + shape.jaw_band[0] - 0.02, -0.35), yaw=yaw)
    rows = torch.nonzero(changed)[:, 0]
    assert changed.sum() > 20
    assert rows.min() > above_lips[1], (rows.min(), above_lips)
    # The parted lips reveal the dark mouth interior.
    dark = torch.tensor(synthetic.MOUTH_INTERIOR_COLOUR).mean() + 0.05
    assert (opened.image.mean(0) < dark).sum() > (closed.image.mean(0) < dark).sum() + 5


# Eyelids.
def test_open_eyes_leave_the_texture_as_it_is(monkeypatch):
    """eye_closure 0 renders exactly what the renderer rendered before it had lids: the lid code does not run."""
    plain = render_pose(yaw=10.0, mouth_opening=0.5)

    def no_lids(*arguments, **keywords):
        raise AssertionError("eyelids closed at eye_closure 0")

    monkeypatch.setattr(synthetic, "_close_eyelids", no_lids)
    opened = render_pose(yaw=10.0, mouth_opening=0.5, eye_closure=0.0)
    for name in ("image", "depth", "head_mask"):
        assert torch.equal(getattr(plain, name), getattr(opened, name)), name
    with pytest.raises(AssertionError, match="eyelids closed"):
        render_pose(yaw=10.0, eye_closure=0.5)


def eye_boxes(yaw: float, size: int, margin: float = 1.0) -> list[tuple[float, float, float, float]]:
    """Pixel boxes (u_min, u_max, v_min, v_max) around the two eyes' openings and the lids' skin above them,
    widened by ``margin`` px."""
    shape = HeadShape()
    boxes = []
    for sign in (-1.0, 1.0):
        corners = [synthetic.eye_point(across, down, shape) for across in (-1.0, 1.0)
                   for down in (-1.0 - shape.lid_height, 1.0)]
        pixels = torch.stack([project_object_point((sign * x, y, shape.eye_socket_centre[2]), yaw=yaw, size=size)
                              for x, y in corners])
        boxes.append((float(pixels[:, 0].min()) - margin, float(pixels[:, 0].max()) + margin,
                      float(pixels[:, 1].min()) - margin, float(pixels[:, 1].max()) + margin))
    return boxes


@pytest.mark.parametrize("yaw", [0.0, 20.0])
def test_closing_the_eyes_changes_only_the_eyes(yaw):
    """Shut lids change pixels of both eyes (and the lids' skin above them) and nothing else; depth and head mask
    stay as they were."""
    opened, shut = render_pose(yaw=yaw, eye_closure=0.0), render_pose(yaw=yaw, eye_closure=1.0)
    assert torch.equal(opened.depth, shut.depth) and torch.equal(opened.head_mask, shut.head_mask)
    changed = (opened.image - shut.image).abs().amax(0) > 1e-4  # (H, W)
    rows, columns = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    inside = []
    for u_min, u_max, v_min, v_max in eye_boxes(yaw, SIZE):
        inside.append((columns >= u_min) & (columns <= u_max) & (rows >= v_min) & (rows <= v_max))
        assert (changed & inside[-1]).sum() >= 4, "an eye did not close"
    assert not (changed & ~(inside[0] | inside[1])).any()


def test_closing_squashes_the_open_eye_towards_the_lower_lid():
    """Column by column of each opening, the open eye's texture ([-s, s] in the opening's v) is read between the
    lid's edge and the lower arc: an open height of (1 - closure) times the open eye's, none when shut. Above the
    lid's skin and below the opening the texture is read where it is."""
    shape = HeadShape()
    _, centre_y, depth = shape.eye_socket_centre
    step = 1e-3
    across, down = torch.meshgrid(torch.linspace(-0.95, 0.95, 9), torch.arange(-3.0, 1.5, step), indexing="ij")
    x, y = synthetic.eye_point(across, down, shape)
    rest = torch.stack([x.flatten(), y.flatten(), torch.full((across.numel(),), depth)])
    half = (1.0 - across[:, 0] ** 2).sqrt()  # (9,): the opening's half-height in each column
    for closure in (0.25, 0.5, 0.75, 1.0):
        read = ((synthetic._close_eyelids(rest, closure, shape)[1] - centre_y) / shape.eye_opening_radii[1])
        read = read.view(across.shape)
        shows_eye = (read > -half[:, None]) & (read < half[:, None])
        height = shows_eye.sum(1) * step
        assert torch.allclose(height, (1.0 - closure) * 2.0 * half, atol=3 * step), (closure, height)
        untouched = (down < -half[:, None] - shape.lid_height - step) | (down > half[:, None] + step)
        assert torch.allclose(read[untouched], down[untouched], atol=1e-5)


def test_eye_landmarks_ride_on_the_upper_lids():
    """Given eye closures, talking.project_landmarks puts the eye landmarks on the middle of the lids' edges (the
    opening's top when open, its centre, the eye landmark of LANDMARKS, half shut, its bottom shut) and leaves every
    other landmark where it was."""
    from dagan.data.synthetic import talking

    intrinsics = np.array([[1.4 * SIZE, 0.0, (SIZE - 1) / 2], [0.0, 1.4 * SIZE, (SIZE - 1) / 2], [0.0, 0.0, 1.0]])
    angles, jaws = np.zeros((3, 3), np.float32), np.full(3, 0.3, np.float32)
    translation = np.tile(np.array([0.0, 0.0, synthetic.HEAD_DISTANCE], np.float32), (3, 1))
    plain, _ = talking.project_landmarks(angles, translation, jaws, intrinsics, SIZE, 10)
    lids, _ = talking.project_landmarks(angles, translation, jaws, intrinsics, SIZE, 10,
                                        eye_closure=np.array([0.0, 0.5, 1.0]))
    eyes = list(talking.EYE_LANDMARKS)
    others = [index for index in range(10) if index not in eyes]
    assert np.array_equal(plain[:, others], lids[:, others])
    assert np.allclose(lids[1, eyes], plain[1, eyes], atol=1e-6)
    travel = (lids[2, eyes, 1] - lids[0, eyes, 1]) * SIZE / 2  # px, downwards
    depth = synthetic.HEAD_DISTANCE + talking.LANDMARKS[eyes[0]][2]
    expected = 2 * HeadShape().eye_opening_radii[1] * 1.4 * SIZE / depth
    assert np.allclose(travel, expected, atol=1e-3), (travel, expected)


def test_pose_sign_conventions():
    """Positive yaw moves the nose tip right, positive pitch moves it up, positive roll moves the crown right."""
    nose_tip = HeadShape().nose_tip

    def closest_pixel(frame: synthetic.RenderedFrame) -> tuple[int, int]:
        index = int(torch.argmin(frame.depth[0]))
        return index // SIZE, index % SIZE  # the nose tip is the head point nearest to the camera

    row, column = closest_pixel(render_pose())
    assert column < closest_pixel(render_pose(yaw=20.0))[1] and column > closest_pixel(render_pose(yaw=-20.0))[1]
    assert row > closest_pixel(render_pose(pitch=12.0))[0] and row < closest_pixel(render_pose(pitch=-12.0))[0]
    assert project_object_point(nose_tip, yaw=20.0)[0] > project_object_point(nose_tip)[0] + 3
    assert project_object_point(nose_tip, pitch=12.0)[1] < project_object_point(nose_tip)[1] - 3

    def crown_column(frame: synthetic.RenderedFrame) -> float:
        top_row = int(torch.nonzero(frame.head_mask[0].any(1))[0])
        return float(torch.nonzero(frame.head_mask[0, top_row]).float().mean())

    assert crown_column(render_pose(roll=10.0)) > crown_column(render_pose()) + 1
