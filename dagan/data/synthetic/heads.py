"""Synthetic talking-head clips with exact ground-truth depth, pose and camera intrinsics.

A procedural head (a signed-distance function: ellipsoidal skull narrowing to a jaw, nose, brow ridges,
cheeks, chin, shallow eye sockets, and a jaw that drops to open a dark mouth cavity) is textured with a
portrait photo, its eyes closing as their upper lids come down (``upper_lid``), and ray-cast (sphere
tracing, written in torch, CPU) in front of a static textured background plane. Every clip follows smooth
seeded trajectories for yaw, pitch, roll, translation and mouth opening, seen by a pinhole camera with per-clip
intrinsics. The clips exist to measure whether a self-supervised depth / pose network recovers the right
geometry.

Conventions (used everywhere in this file)
-----------------------------------------
* Units: arbitrary scene units. The skull is 0.60 wide and 0.74 tall (crown to chin), so one unit is about
  25 cm of a real head. The head centre sits near z = 1.6 (``HEAD_DISTANCE``) and the background plane at
  z = 3.0 (``BACKGROUND_DEPTH``).
* Camera coordinates (OpenCV): x to the image's right, y down, z forward along the optical axis. The camera
  is at the origin and never moves.
* Object (head) coordinates share those axes at zero pose: x to the image's right (the subject's left), y
  down (from crown to chin), z from the face towards the back of the head, so the face looks along -z at the
  camera. A head point maps to the camera by ``X_camera = rotation @ X_object + translation``.
* Angles, in degrees: positive yaw turns the nose towards the image's right (+x), positive pitch lifts the
  nose towards the top of the image (-y), positive roll turns the crown towards the image's right
  (clockwise on screen). ``rotation = R_z(roll) @ R_x(-pitch) @ R_y(-yaw)`` with right-handed elementary
  rotations R_axis.
* Pixels: ``intrinsics`` K maps a camera point to (u, v) = (fx x / z + cx, fy y / z + cy) where pixel
  (row i, column j) has its centre at (u, v) = (j, i); the image spans [-0.5, W - 0.5]. This matches
  ``grid_sample(..., align_corners=False)`` with x_normalised = (u + 0.5) / W * 2 - 1 and is the convention of
  ``dagan.geometry``.
* Depth: the z coordinate in camera space (not the distance along the ray) of the surface seen through the
  pixel centre, for head and background pixels alike. Depth, head mask and colour all come from the ray
  through the pixel centre (textures are prefiltered to about one texel per pixel); with ``supersample`` > 1
  the colour of silhouette and depth-edge pixels is averaged over supersample^2 sub-pixel rays.
* Scene motion: the head moves rigidly (``relative_pose``) apart from the jaw, which deforms the lower face
  when the mouth opening changes; the background never moves. The scene is therefore NOT globally rigid:
  a single relative camera pose explains the head pixels only. ``warp_points`` gives the exact
  ground-truth motion of any visible point, jaw included.
* Lighting is baked: a fixed Lambertian term in object coordinates, so a surface point keeps its colour as
  the head moves (brightness constancy holds exactly, up to sampling).
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

# Scene layout (scene units, see the module docstring).
HEAD_DISTANCE = 1.6
BACKGROUND_DEPTH = 3.0
BACKGROUND_HALF_EXTENT = 1.6  # the background texture covers x, y in [-1.6, 1.6] on the plane
FOCAL_RANGE = (1.2, 1.6)  # focal length in units of the image width
PRINCIPAL_POINT_JITTER = 0.02  # principal point offset from the centre, in units of the image width

# Sphere tracing.
BOUNDING_RADII = (0.36, 0.50, 0.48)  # an ellipsoid around the object origin containing the head, mouth open
MAX_TRACE_STEPS = 64
TRACE_SAFETY = 0.9  # step by this fraction of the signed distance (the SDF is only approximately metric)
HIT_TOLERANCE = 0.02  # a ray hits when closer to the surface than this fraction of its pixel footprint
MIN_STEP = 1.0  # forward steps are at least this fraction of the pixel footprint (grazing rays, creases)
NORMAL_STEP = 1e-3
EDGE_DEPTH_JUMP = 0.05  # relative depth range in a 3 x 3 neighbourhood that marks a depth edge
MIN_MOUTH_HALF_GAP = 1e-3  # below this the mouth counts as closed (no cavity)

# Appearance.
AMBIENT_LIGHT = 0.6
LIGHT_DIRECTION = (-0.3, -0.4, -1.0)  # towards the light, object coordinates (upper left front)
MOUTH_INTERIOR_COLOUR = (0.22, 0.05, 0.06)
# The face texture covers this object-space rectangle (planar projection along z):
# x in [-half_width, half_width] -> texture columns, y in [-half_height, half_height] -> texture rows.
TEXTURE_HALF_WIDTH = 0.30
TEXTURE_HALF_HEIGHT = 0.40
# Crop of skimage.data.astronaut() (rows, columns) whose eyes, nose and mouth land on the head's features.
ASTRONAUT_CROP = (slice(24, 189), slice(163, 286))

Tensor = torch.Tensor


@dataclass(frozen=True)
class HeadShape:
    """Dimensions of the procedural head in object coordinates (scene units).

    Centres are (x, y, z) and radii are (x, y, z) half-axes. The face texture is laid out to match the
    feature heights: eyes at y = -0.02, nose tip at y = 0.09, mouth at ``mouth_height`` = 0.19. The eyes' openings
    (``eye_opening_radii``, centred on the eye sockets) cover the astronaut's eyes; see ``upper_lid``.
    """

    skull_radii: tuple[float, float, float] = (0.30, 0.40, 0.36)
    skull_lower_height: float = 0.34  # y half-axis below the centre (the chin end of the skull)
    jaw_taper: float = 0.35  # relative narrowing of the skull from the eyes down to the chin
    nose_bridge: tuple[float, float, float] = (0.0, -0.03, -0.355)
    nose_tip: tuple[float, float, float] = (0.0, 0.085, -0.405)
    nose_bridge_radius: float = 0.022
    nose_tip_radius: float = 0.032
    nostril_centre: tuple[float, float, float] = (0.032, 0.095, -0.365)  # x is mirrored
    nostril_radius: float = 0.024
    brow_centre: tuple[float, float, float] = (0.095, -0.07, -0.33)  # x is mirrored
    brow_radii: tuple[float, float, float] = (0.055, 0.028, 0.035)
    eye_socket_centre: tuple[float, float, float] = (0.105, -0.02, -0.365)  # x is mirrored
    eye_socket_radii: tuple[float, float, float] = (0.05, 0.028, 0.03)
    cheek_centre: tuple[float, float, float] = (0.11, 0.07, -0.27)  # x is mirrored
    cheek_radii: tuple[float, float, float] = (0.07, 0.07, 0.07)
    muzzle_centre: tuple[float, float, float] = (0.0, 0.17, -0.25)
    muzzle_radii: tuple[float, float, float] = (0.12, 0.11, 0.10)
    chin_centre: tuple[float, float, float] = (0.0, 0.265, -0.255)
    chin_radii: tuple[float, float, float] = (0.075, 0.055, 0.07)
    blend: float = 0.01  # exponential smooth-union length between parts
    socket_blend: float = 0.02
    mouth_height: float = 0.19  # y of the lip line; the jaw moves points below it
    jaw_band: tuple[float, float] = (-0.01, 0.05)  # rest-pose y band (relative to mouth_height) that stretches
    jaw_lateral: tuple[float, float] = (0.06, 0.20)  # the drop falls from full to none over this |x| range
    jaw_drop: float = 0.07  # downward jaw displacement at mouth opening 1
    mouth_gap: float = 0.7  # height of the dark mouth cavity as a fraction of the jaw drop
    mouth_half_width: float = 0.08
    mouth_cavity_z: float = -0.33  # centre of the mouth cavity, z
    mouth_cavity_depth: float = 0.06  # z half-axis of the mouth cavity
    eye_opening_radii: tuple[float, float] = (0.05, 0.024)  # x, y half-axes of each eye's opening (see eyelids)
    lid_height: float = 1.0  # the skin above each opening that a closing lid stretches down over it, in
    #                          units of the opening's vertical half-axis


@dataclass(frozen=True)
class MotionRanges:
    """Limits of the random head motion; each channel is a sum of sinusoids bounded by its limit."""

    max_yaw_degrees: float = 30.0
    max_pitch_degrees: float = 15.0
    max_roll_degrees: float = 10.0
    max_translation: tuple[float, float, float] = (0.05, 0.04, 0.08)  # x, y, z in scene units
    head_frequency_hz: tuple[float, float] = (0.1, 0.5)
    mouth_frequency_hz: tuple[float, float] = (0.7, 2.5)
    mouth_opening_range: tuple[float, float] = (0.0, 1.0)  # (0, 0) keeps the mouth closed: a rigid head
    num_sinusoids: int = 3


@dataclass
class SyntheticClip:
    """One rendered clip with exact ground truth.

    frames: (T, 3, H, W) float32 in [0, 1].
    depth: (T, 1, H, W) float32 camera z of the surface at each pixel centre (head or background).
    head_mask: (T, 1, H, W) bool, True where the pixel-centre ray hits the head (mouth interior included).
    rotation: (T, 3, 3) float32 and translation: (T, 3) float32, object-to-camera:
        X_camera = rotation @ X_object + translation.
    intrinsics: (3, 3) float32 pinhole K in pixels (pixel centres at integer coordinates).
    fps: frames per second of the trajectories.
    head_angles: (T, 3) float32 (yaw, pitch, roll) in degrees, the angles ``rotation`` was built from.
    mouth_opening: (T,) float32 in [0, 1].
    face_texture: (1, 3, h, w) and background_texture: (1, 3, R, R), the textures as rendered (for
        ``cast_rays``).
    shape: the head geometry used (needed by ``warp_points`` for the jaw).
    eye_closure: the upper lids of every frame (0 open, 1 shut; texture only, so ``warp_points`` ignores them).
    """

    frames: Tensor
    depth: Tensor
    head_mask: Tensor
    rotation: Tensor
    translation: Tensor
    intrinsics: Tensor
    fps: float
    head_angles: Tensor
    mouth_opening: Tensor
    face_texture: Tensor
    background_texture: Tensor
    shape: HeadShape = field(default_factory=HeadShape)
    eye_closure: float = 0.0

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]


class RenderedFrame(NamedTuple):
    """image: (3, H, W) in [0, 1]; depth: (1, H, W) camera z; head_mask: (1, H, W) bool."""

    image: Tensor
    depth: Tensor
    head_mask: Tensor


# Small SDF helpers. Points are (3, N) tensors (x, y, z rows) of object coordinates.
def _smoothstep(edge0: float, edge1: float, value: Tensor) -> Tensor:
    """Cubic Hermite ramp: 0 below edge0, 1 above edge1."""
    t = ((value - edge0) / (edge1 - edge0)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _smooth_subtract(distance: Tensor, removed: Tensor, radius: float) -> Tensor:
    """Smoothly carve the solid ``removed`` out of ``distance`` (polynomial smooth max, Quilez)."""
    h = (radius - (distance + removed).abs()).clamp(min=0.0) / radius
    return torch.maximum(distance, -removed) + h * h * radius * 0.25


def _ellipsoids(points: Tensor, centres: Tensor, radii: Tensor) -> Tensor:
    """Approximate signed distances (E, N) of points (3, N) to E axis-aligned ellipsoids, centres / radii (3, E).

    Quilez's bound k0 (k0 - 1) / k1: the zero set is exact, the value is close to metric near the surface.
    """
    scaled = (points[:, None, :] - centres[:, :, None]) / radii[:, :, None]  # (3, E, N)
    k0 = torch.sqrt(scaled[0] * scaled[0] + scaled[1] * scaled[1] + scaled[2] * scaled[2])
    scaled = scaled / radii[:, :, None]
    k1 = torch.sqrt(scaled[0] * scaled[0] + scaled[1] * scaled[1] + scaled[2] * scaled[2])
    return k0 * (k0 - 1.0) / k1.clamp(min=1e-6)


def _mirror_x(centres: list[tuple[float, float, float]]) -> list[tuple[float, float, float]]:
    """Each centre (x, y, z) together with its mirror image (-x, y, z)."""
    return [mirrored for (x, y, z) in centres for mirrored in ((x, y, z), (-x, y, z))]


class _HeadParts(NamedTuple):
    """All ellipsoids of the head, centres / radii (3, E): the first E - 2 add material, the last two (the eye
    sockets) remove it."""

    centres: Tensor
    radii: Tensor


@functools.lru_cache(maxsize=8)
def _head_parts(shape: HeadShape) -> _HeadParts:
    mirrored = [(shape.cheek_centre, shape.cheek_radii), (shape.brow_centre, shape.brow_radii),
                (shape.nostril_centre, (shape.nostril_radius,) * 3)]
    single = [(shape.muzzle_centre, shape.muzzle_radii), (shape.chin_centre, shape.chin_radii)]
    mirrored.append((shape.eye_socket_centre, shape.eye_socket_radii))  # last: the sockets
    centres = [centre for centre, _ in single] + [c for centre, _ in mirrored for c in _mirror_x([centre])]
    radii = [radius for _, radius in single] + [r for _, radius in mirrored for r in (radius, radius)]
    return _HeadParts(torch.tensor(centres).T.contiguous(), torch.tensor(radii).T.contiguous())


# The head.
def _skull(points: Tensor, shape: HeadShape) -> Tensor:
    """Ellipsoid, shorter below the centre than above and narrowing towards the chin: (N,)."""
    radius_x, radius_y_upper, radius_z = shape.skull_radii
    x, y, z = points
    radius_y = torch.where(y < 0, radius_y_upper, shape.skull_lower_height)
    radius_x = radius_x * (1.0 - shape.jaw_taper * _smoothstep(0.0, shape.skull_lower_height, y))
    x, y, z = x / radius_x, y / radius_y, z / radius_z
    k0 = torch.sqrt(x * x + y * y + z * z)
    x, y, z = x / radius_x, y / radius_y, z / radius_z
    k1 = torch.sqrt(x * x + y * y + z * z)
    return k0 * (k0 - 1.0) / k1.clamp(min=1e-6)


def _nose_bridge(points: Tensor, shape: HeadShape) -> Tensor:
    """Distance (N,) to the segment bridge -> tip, thickened from the bridge radius to the tip radius."""
    start, end = shape.nose_bridge, shape.nose_tip
    axis = [end[k] - start[k] for k in range(3)]
    offset = [points[k] - start[k] for k in range(3)]
    along = ((offset[0] * axis[0] + offset[1] * axis[1] + offset[2] * axis[2])
             / sum(a * a for a in axis)).clamp(0.0, 1.0)  # (N,)
    away = [offset[k] - along * axis[k] for k in range(3)]
    distance = torch.sqrt(away[0] * away[0] + away[1] * away[1] + away[2] * away[2])
    return distance - (shape.nose_bridge_radius + (shape.nose_tip_radius - shape.nose_bridge_radius) * along)


def _face_body(rest: Tensor, shape: HeadShape) -> Tensor:
    """Signed distance (N,) of the closed-mouth head at rest-pose (undeformed) object coordinates (3, N)."""
    parts = _head_parts(shape)
    ellipsoids = _ellipsoids(rest, parts.centres, parts.radii)  # (E, N)
    distances = torch.cat([_skull(rest, shape)[None], _nose_bridge(rest, shape)[None], ellipsoids[:-2]])
    body = -shape.blend * torch.logsumexp(distances / -shape.blend, dim=0)  # exponential smooth union
    return _smooth_subtract(body, torch.minimum(ellipsoids[-2], ellipsoids[-1]), shape.socket_blend)


# The jaw: rest-pose points in the band [mouth_height + jaw_band[0], mouth_height + jaw_band[1]] are stretched
# downwards, points below it move down by the full drop. With u the position in the band, the displacement
# is drop * ramp(u), ramp(u) = 2 u^2 on [0, 1/2] and 1 - 2 (1 - u)^2 on [1/2, 1]: smooth (C1) and invertible
# in closed form, so the SDF can be evaluated on the rest pose exactly.
def _jaw_ramp(u: Tensor) -> Tensor:
    u = u.clamp(0.0, 1.0)
    return torch.where(u < 0.5, 2.0 * u * u, 1.0 - 2.0 * (1.0 - u) * (1.0 - u))


def _jaw_drop(x: Tensor, mouth_opening: float, shape: HeadShape) -> Tensor:
    """Downward displacement (N,) below the band at lateral position x: full at the chin, none at the sides."""
    return shape.jaw_drop * mouth_opening * (1.0 - _smoothstep(*shape.jaw_lateral, x.abs()))


def open_jaw(rest: Tensor, mouth_opening: float, shape: HeadShape) -> Tensor:
    """Jaw deformation (3, N) -> (3, N) of rest-pose points: y += drop(x) * ramp(u(y))."""
    band_start, band_width = shape.mouth_height + shape.jaw_band[0], shape.jaw_band[1] - shape.jaw_band[0]
    drop = _jaw_drop(rest[0], mouth_opening, shape) * _jaw_ramp((rest[1] - band_start) / band_width)
    return torch.stack([rest[0], rest[1] + drop, rest[2]])


def close_jaw(deformed: Tensor, mouth_opening: float, shape: HeadShape) -> Tensor:
    """Exact inverse of ``open_jaw`` (3, N) -> (3, N).

    In the band, y - band_start = width u + drop ramp(u) is a quadratic in u on each half; its roots are
    written as 2 c / (width + sqrt(width^2 + 8 drop c)), which stays finite when drop = 0.
    """
    if mouth_opening == 0.0:
        return deformed
    band_start, band_width = shape.mouth_height + shape.jaw_band[0], shape.jaw_band[1] - shape.jaw_band[0]
    drop = _jaw_drop(deformed[0], mouth_opening, shape)
    from_top = (deformed[1] - band_start).clamp(min=0.0)  # deformed distance into the stretched band
    from_bottom = (band_width + drop - from_top).clamp(min=0.0)  # and to its (stretched) bottom edge
    u_upper = 2.0 * from_top / (band_width + torch.sqrt(band_width ** 2 + 8.0 * drop * from_top))
    u_lower = 1.0 - 2.0 * from_bottom / (band_width + torch.sqrt(band_width ** 2 + 8.0 * drop * from_bottom))
    u = torch.where(from_top < 0.5 * (band_width + drop), u_upper, u_lower)
    return torch.stack([deformed[0], deformed[1] - drop * _jaw_ramp(u), deformed[2]])


def _mouth_cavity(deformed: Tensor, mouth_opening: float, shape: HeadShape) -> Optional[Tensor]:
    """Signed distance (N,) to the mouth cavity (an ellipsoid between the parted lips), None when closed."""
    half_gap = 0.5 * shape.mouth_gap * shape.jaw_drop * mouth_opening
    if half_gap < MIN_MOUTH_HALF_GAP:
        return None
    centre = torch.tensor([[0.0], [shape.mouth_height + half_gap], [shape.mouth_cavity_z]])  # (3, 1)
    radii = torch.tensor([[shape.mouth_half_width], [half_gap], [shape.mouth_cavity_depth]])
    return _ellipsoids(deformed, centre, radii)[0]


def head_distance(deformed: Tensor, mouth_opening: float, shape: HeadShape) -> Tensor:
    """Signed distance (N,) of the head with the given mouth opening at object coordinates (3, N).

    The zero set is exact; the value is only approximately metric (ellipsoid bounds, smooth unions, the jaw
    stretch), which ``sphere_trace`` allows for.
    """
    distance = _face_body(close_jaw(deformed, mouth_opening, shape), shape)
    cavity = _mouth_cavity(deformed, mouth_opening, shape)
    return distance if cavity is None else torch.maximum(distance, -cavity)


# The eyelids: they move the face texture only (depth and head mask never depend on them). Each eye's opening is
# the ellipse ``eye_opening_radii`` around its socket's centre in rest-pose object (x, y); with (u, v) a point's
# position in that ellipse (u = (|x| - centre_x) / radius_x, v = (y - centre_y) / radius_y) and s = sqrt(1 - u^2),
# the upper lid's edge is v = (2 closure - 1) s: the opening's upper arc -s at closure 0 (open), its long axis at
# 0.5, its lower arc s at 1 (shut). Closing is a warp of the texture along v, column by column: the open eye
# between the edge and the lower arc is the whole open eye [-s, s] squashed towards the lower lid (by 1 - closure),
# and the lid's skin [-s - h, -s] (h = ``lid_height``) stretches down to the edge. So the open height at every u is
# (1 - closure) times the open eye's, nothing is painted that the open face does not show, and a keypoint on the
# lid's edge with a local vertical squash describes the motion exactly, as DaGAN's warping does.
def _eye_coordinates(rest: Tensor, shape: HeadShape) -> tuple[Tensor, Tensor]:
    """(u, v) (N,), (N,) of rest-pose points (3, N) in the nearer eye's opening ellipse (|u|, |v| < 1 inside)."""
    centre_x, centre_y, _ = shape.eye_socket_centre
    radius_x, radius_y = shape.eye_opening_radii
    return (rest[0].abs() - centre_x) / radius_x, (rest[1] - centre_y) / radius_y


def upper_lid(across: Union[Tensor, float], eye_closure: float) -> Union[Tensor, float]:
    """v of the upper lid's edge at u = ``across`` (in the opening's coordinates, |u| <= 1; see above)."""
    if isinstance(across, Tensor):
        return (2.0 * eye_closure - 1.0) * (1.0 - across * across).clamp(min=0.0).sqrt()
    return (2.0 * eye_closure - 1.0) * math.sqrt(max(1.0 - across * across, 0.0))


def eye_point(across: float, down: float, shape: HeadShape = HeadShape()) -> tuple[float, float]:
    """Rest-pose object (|x|, y) of the point (u, v) = (across, down) of an eye's opening (mirror x for the other
    eye); with ``down = upper_lid(across, closure)`` a point of the lid's edge."""
    centre_x, centre_y, _ = shape.eye_socket_centre
    radius_x, radius_y = shape.eye_opening_radii
    return centre_x + across * radius_x, centre_y + down * radius_y


def _close_eyelids(rest: Tensor, eye_closure: float, shape: HeadShape) -> Tensor:
    """Where the face texture is read (3, N) for rest-pose points (3, N) with the eyes closed by ``eye_closure``
    (see above): the points of each opening and of the lid's skin above it move along y; all others stay."""
    across, down = _eye_coordinates(rest, shape)
    half = (1.0 - across * across).clamp(min=0.0).sqrt()  # s: the opening's half-height at u, in v units
    edge = upper_lid(across, eye_closure)
    top = -half - shape.lid_height
    in_column = across.abs() < 1.0
    eye = in_column & (down >= edge) & (down <= half)
    lid = in_column & (down >= top) & (down < edge)
    read = torch.where(eye, half - (half - down) / max(1.0 - eye_closure, 1e-6), down)
    read = torch.where(lid, top + (down - top) * shape.lid_height / (shape.lid_height + 2.0 * half * eye_closure),
                       read)
    _, centre_y, _ = shape.eye_socket_centre
    return torch.stack([rest[0], centre_y + read * shape.eye_opening_radii[1], rest[2]])


# Rays and tracing.
def pixel_rays(intrinsics: Tensor, size: int, supersample: int = 1) -> Tensor:
    """Camera-space ray directions with unit z through sub-pixel sample points: (S*S, size*size, 3).

    Sample k of pixel (i, j) sits at (j + dx, i + dy) with offsets (s + 0.5) / S - 0.5, s = 0..S-1, so that
    S = 1 gives the pixel centre. Because z = 1, the ray parameter equals the camera z-depth.
    """
    offsets = (torch.arange(supersample, dtype=torch.float64) + 0.5) / supersample - 0.5
    offset_y, offset_x = torch.meshgrid(offsets, offsets, indexing="ij")
    rows, columns = torch.meshgrid(torch.arange(size, dtype=torch.float64),
                                   torch.arange(size, dtype=torch.float64), indexing="ij")
    u = columns.reshape(1, -1) + offset_x.reshape(-1, 1)  # (S*S, size*size)
    v = rows.reshape(1, -1) + offset_y.reshape(-1, 1)
    homogeneous = torch.stack([u, v, torch.ones_like(u)], dim=-1)  # (S*S, size*size, 3)
    directions = homogeneous @ torch.linalg.inv(intrinsics.double()).T
    return (directions / directions[..., 2:3]).float()


def _bounding_interval(origin: Tensor, directions: Tensor) -> tuple[Tensor, Tensor]:
    """Ray parameters (N,), (N,) where rays origin (3,) + s * directions (3, N) enter and leave the
    ellipsoid BOUNDING_RADII centred at the object origin (enter >= leave when a ray misses it)."""
    radii = torch.tensor(BOUNDING_RADII)
    origin, directions = origin / radii, directions / radii[:, None]  # the bound becomes the unit sphere
    a = (directions ** 2).sum(0)
    b = 2.0 * (origin @ directions)
    c = (origin ** 2).sum() - 1.0
    discriminant = b * b - 4.0 * a * c
    root = discriminant.clamp(min=0.0).sqrt()
    enter = ((-b - root) / (2.0 * a)).clamp(min=0.0)
    leave = torch.where(discriminant > 0, (-b + root) / (2.0 * a), torch.zeros_like(a))
    return enter, leave


def sphere_trace(origin: Tensor, directions: Tensor, distance_fn: Callable[[Tensor], Tensor],
                 pixel_angle: float) -> tuple[Tensor, Tensor]:
    """First surface hit of rays origin (3,) + s * directions (3, N), in the SDF's coordinates.

    Steps are TRACE_SAFETY times the signed distance, but forward steps are at least MIN_STEP of the pixel
    footprint s * pixel_angle (pixel_angle = 1 / focal length in pixels; directions have unit camera z), so
    that rays grazing a surface do not crawl; a ray that overshoots into the head comes back out with
    negative steps. A ray hits once closer to the surface than HIT_TOLERANCE of its footprint and then takes
    one last full step onto the surface. Returns (s (N,), hit (N,) bool); s is meaningful where hit is True.
    """
    s, leave = _bounding_interval(origin, directions)
    inverse_length = 1.0 / directions.norm(dim=0)
    hit = torch.zeros(directions.shape[1], dtype=torch.bool)
    active = torch.nonzero(s < leave).squeeze(1)
    for _ in range(MAX_TRACE_STEPS):
        if active.numel() == 0:
            break
        s_active = s[active]
        distance = distance_fn(origin[:, None] + s_active * directions[:, active])
        footprint = pixel_angle * s_active
        converged = distance.abs() < HIT_TOLERANCE * footprint
        step = distance * inverse_length[active]
        forward = torch.where(step > 0, torch.maximum(TRACE_SAFETY * step, MIN_STEP * footprint),
                              TRACE_SAFETY * step)  # backwards (inside the head) without a minimum
        s_active = s_active + torch.where(converged, step, forward)
        s[active] = s_active
        hit[active[converged]] = True
        active = active[~converged & (s_active < leave[active])]
    return s, hit


def _surface_normals(points: Tensor, distance_fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Unit normals (N, 3) from the SDF gradient (tetrahedral finite differences) at points (3, N)."""
    corners = torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]])
    shifted = points[:, None, :] + NORMAL_STEP * corners.T[:, :, None]  # (3, 4, N)
    distances = distance_fn(shifted.reshape(3, -1)).view(4, -1)  # (4, N)
    return F.normalize(distances.T @ corners, dim=-1)


# Textures.
def default_texture() -> Tensor:
    """The face of ``skimage.data.astronaut()`` cropped to the head's texture box: (165, 123, 3) in [0, 1]."""
    from skimage import data  # imported lazily: only this default needs scikit-image

    return torch.from_numpy(data.astronaut()[ASTRONAUT_CROP].astype(np.float32) / 255.0)


def prepare_face_texture(texture: Union[Tensor, np.ndarray, None], target_height: int) -> Tensor:
    """(H, W, 3) image in [0, 1] -> (1, 3, h, w) float32, downsampled (antialiased) to at most target_height."""
    texture = default_texture() if texture is None else torch.as_tensor(np.asarray(texture), dtype=torch.float32)
    if texture.ndim != 3 or texture.shape[2] != 3:
        raise ValueError(f"texture must be (H, W, 3), got {tuple(texture.shape)}")
    image = texture.permute(2, 0, 1).unsqueeze(0).contiguous()  # (1, 3, H, W)
    if image.shape[2] > target_height:
        width = max(1, round(image.shape[3] * target_height / image.shape[2]))
        image = F.interpolate(image, size=(target_height, width), mode="bilinear", align_corners=False,
                              antialias=True)
    return image.clamp(0.0, 1.0)


def make_background_texture(generator: torch.Generator, resolution: int = 128) -> Tensor:
    """Seeded smooth colour noise plus faint stripes for the background plane: (1, 3, R, R) in [0, 1]."""
    coarse = torch.rand(1, 1, 8, 8, generator=generator)
    fine = torch.rand(1, 1, 24, 24, generator=generator)
    pattern = (F.interpolate(coarse, size=(resolution, resolution), mode="bicubic", align_corners=False)
               + 0.5 * F.interpolate(fine, size=(resolution, resolution), mode="bicubic", align_corners=False))
    angle = float(torch.rand(1, generator=generator)) * math.pi
    coordinate = torch.linspace(-1.0, 1.0, resolution)
    along = math.cos(angle) * coordinate.view(1, -1) + math.sin(angle) * coordinate.view(-1, 1)  # (R, R)
    pattern = pattern / 1.5 + 0.15 * torch.sin(2.0 * math.pi * 6.0 * along)
    colours = 0.15 + 0.7 * torch.rand(2, 3, generator=generator)  # two random colours to blend between
    mix = pattern.clamp(0.0, 1.0)  # (1, 1, R, R)
    texture = colours[0].view(1, 3, 1, 1) * (1.0 - mix) + colours[1].view(1, 3, 1, 1) * mix
    return texture.clamp(0.0, 1.0)


def _sample(texture: Tensor, normalized_x: Tensor, normalized_y: Tensor, padding_mode: str) -> Tensor:
    """Bilinear lookup of (1, 3, h, w) at normalised coordinates (N,): (N, 3)."""
    grid = torch.stack([normalized_x, normalized_y], dim=-1).view(1, 1, -1, 2)  # (1, 1, N, 2)
    colour = F.grid_sample(texture, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    return colour.view(3, -1).T  # (N, 3)


def _shade_head(deformed: Tensor, mouth_opening: float, shape: HeadShape, face_texture: Tensor,
                eye_closure: float = 0.0) -> Tensor:
    """Colour (N, 3) of head surface points (3, N): planar-projected texture, the eyes closed by ``eye_closure``
    (0 open: the texture as it is, 1 shut), baked Lambertian light."""
    distance_fn = lambda p: head_distance(p, mouth_opening, shape)  # noqa: E731
    rest = close_jaw(deformed, mouth_opening, shape)
    texture_point = _close_eyelids(rest, eye_closure, shape) if eye_closure > 0.0 else rest
    colour = _sample(face_texture, texture_point[0] / TEXTURE_HALF_WIDTH, texture_point[1] / TEXTURE_HALF_HEIGHT,
                     "border")
    cavity = _mouth_cavity(deformed, mouth_opening, shape)
    if cavity is not None:
        inside_mouth = -cavity > _face_body(rest, shape) - 1e-3  # the cavity wall is the visible surface
        colour = torch.where(inside_mouth[:, None], torch.tensor(MOUTH_INTERIOR_COLOUR), colour)
    light = F.normalize(torch.tensor(LIGHT_DIRECTION), dim=0)
    lambert = (_surface_normals(deformed, distance_fn) @ light).clamp(min=0.0)
    return colour * (AMBIENT_LIGHT + (1.0 - AMBIENT_LIGHT) * lambert)[:, None]


# Rendering.
@contextlib.contextmanager
def _intra_op_threads(num_threads: Optional[int]):
    """Temporarily set torch's intra-op thread count (None: leave it alone)."""
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def cast_rays(rays: Tensor, rotation: Tensor, translation: Tensor, mouth_opening: float, face_texture: Tensor,
              background_texture: Tensor, pixel_angle: float, shape: HeadShape = HeadShape(),
              num_threads: Optional[int] = 1, eye_closure: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Trace camera rays (N, 3) with unit z: colour (N, 3), camera z-depth (N,) and head hit (N,) bool.

    rotation (3, 3), translation (3,): the head pose; pixel_angle: 1 / focal length in pixels (sets the hit
    tolerance); num_threads: see ``render_clip``; eye_closure: 0 open (the texture as it is) to 1 shut (``upper_lid``).
    ``render_frame`` casts the rays through pixel centres; any other rays (say through the sub-pixel positions a
    warp predicts) see exactly the same scene.
    """
    with _intra_op_threads(num_threads):
        return _cast_rays(rays, rotation, translation, mouth_opening, face_texture, background_texture,
                          pixel_angle, shape, eye_closure)


def _cast_rays(rays: Tensor, rotation: Tensor, translation: Tensor, mouth_opening: float, face_texture: Tensor,
               background_texture: Tensor, pixel_angle: float, shape: HeadShape,
               eye_closure: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    rays, rotation, translation = rays.float(), rotation.float(), translation.float()
    origin = -rotation.T @ translation  # camera centre in object coordinates
    directions = (rays @ rotation).T.contiguous()  # (3, N) object-space directions rotation.T @ ray
    distance_fn = lambda p: head_distance(p, mouth_opening, shape)  # noqa: E731
    depth, hit = sphere_trace(origin, directions, distance_fn, pixel_angle)
    depth = torch.where(hit, depth, torch.full_like(depth, BACKGROUND_DEPTH))

    colour = torch.empty(len(rays), 3)
    hit_index = torch.nonzero(hit).squeeze(1)
    point = origin[:, None] + depth[hit_index] * directions[:, hit_index]  # (3, M) object coordinates
    colour[hit_index] = _shade_head(point, mouth_opening, shape, face_texture, eye_closure)
    miss_index = torch.nonzero(~hit).squeeze(1)
    plane = rays[miss_index] * (BACKGROUND_DEPTH / BACKGROUND_HALF_EXTENT)  # (M, 3) normalised plane x, y
    colour[miss_index] = _sample(background_texture, plane[:, 0], plane[:, 1], "reflection")
    return colour, depth, hit


def _edge_pixels(depth: Tensor, hit: Tensor) -> Tensor:
    """Pixels (H, W) bool near a silhouette or depth discontinuity (3 x 3 neighbourhood); depth, hit: (H, W)."""
    hit = hit[None, None].float()  # (1, 1, H, W)
    near_silhouette = F.max_pool2d(hit, 3, 1, 1) != -F.max_pool2d(-hit, 3, 1, 1)
    depth = depth[None, None]
    depth_range = F.max_pool2d(depth, 3, 1, 1) + F.max_pool2d(-depth, 3, 1, 1)
    return (near_silhouette | (depth_range > EDGE_DEPTH_JUMP * depth))[0, 0]


def render_frame(rotation: Tensor, translation: Tensor, mouth_opening: float, intrinsics: Tensor, size: int,
                 face_texture: Tensor, background_texture: Tensor, supersample: int = 1,
                 shape: HeadShape = HeadShape(), num_threads: Optional[int] = 1,
                 eye_closure: float = 0.0) -> RenderedFrame:
    """Ray-cast one square frame.

    rotation: (3, 3) and translation: (3,) object-to-camera; intrinsics: (3, 3) pixels;
    face_texture, background_texture: (1, 3, h, w) in [0, 1] (see ``prepare_face_texture`` and
    ``make_background_texture``). Depth, mask and colour come from the ray through each pixel centre; with
    supersample > 1 the colour of pixels at silhouettes and depth edges becomes the mean of supersample^2
    sub-pixel rays (textures are prefiltered, so smooth regions need no extra rays). num_threads: see
    ``render_clip``; eye_closure: see ``cast_rays``.
    """
    with _intra_op_threads(num_threads):
        return _render_frame(rotation, translation, mouth_opening, intrinsics, size, face_texture,
                             background_texture, supersample, shape, eye_closure)


def _render_frame(rotation: Tensor, translation: Tensor, mouth_opening: float, intrinsics: Tensor, size: int,
                  face_texture: Tensor, background_texture: Tensor, supersample: int,
                  shape: HeadShape, eye_closure: float = 0.0) -> RenderedFrame:
    cast = functools.partial(_cast_rays, rotation=rotation, translation=translation, mouth_opening=mouth_opening,
                             face_texture=face_texture, background_texture=background_texture,
                             pixel_angle=1.0 / float(intrinsics[0, 0]), shape=shape, eye_closure=eye_closure)
    colour, depth, hit = cast(pixel_rays(intrinsics, size, 1)[0])  # (size*size, 3), (size*size,) x 2
    if supersample > 1:
        edges = torch.nonzero(_edge_pixels(depth.view(size, size), hit.view(size, size)).flatten()).squeeze(1)
        sub_rays = pixel_rays(intrinsics, size, supersample)[:, edges]  # (S*S, E, 3)
        sub_colour = cast(sub_rays.reshape(-1, 3))[0].view(supersample ** 2, -1, 3)  # (S*S, E, 3)
        colour[edges] = sub_colour.mean(0)
    return RenderedFrame(image=colour.T.reshape(3, size, size).clamp(0.0, 1.0).contiguous(),
                         depth=depth.reshape(1, size, size).contiguous(),
                         head_mask=hit.reshape(1, size, size).contiguous())


# Cameras and motion.
def rotation_from_angles(yaw: Tensor, pitch: Tensor, roll: Tensor) -> Tensor:
    """Object-to-camera rotations (..., 3, 3) from angles in degrees (signs in the module docstring)."""
    yaw, pitch, roll = (torch.deg2rad(angle.double()) for angle in (yaw, pitch, roll))
    zero, one = torch.zeros_like(yaw), torch.ones_like(yaw)

    def matrix(rows: list[list[Tensor]]) -> Tensor:
        return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)

    turn = matrix([[torch.cos(yaw), zero, -torch.sin(yaw)], [zero, one, zero],
                   [torch.sin(yaw), zero, torch.cos(yaw)]])  # R_y(-yaw)
    nod = matrix([[one, zero, zero], [zero, torch.cos(pitch), torch.sin(pitch)],
                  [zero, -torch.sin(pitch), torch.cos(pitch)]])  # R_x(-pitch)
    tilt = matrix([[torch.cos(roll), -torch.sin(roll), zero], [torch.sin(roll), torch.cos(roll), zero],
                   [zero, zero, one]])  # R_z(roll)
    return (tilt @ nod @ turn).float()


def make_intrinsics(size: int, generator: torch.Generator) -> Tensor:
    """Random pinhole K (3, 3): focal in FOCAL_RANGE * size, principal point jittered around the centre."""
    focal_factor, jitter_x, jitter_y = torch.rand(3, generator=generator).tolist()
    focal = size * (FOCAL_RANGE[0] + (FOCAL_RANGE[1] - FOCAL_RANGE[0]) * focal_factor)
    centre = (size - 1) / 2.0
    principal_x = centre + size * PRINCIPAL_POINT_JITTER * (2.0 * jitter_x - 1.0)
    principal_y = centre + size * PRINCIPAL_POINT_JITTER * (2.0 * jitter_y - 1.0)
    return torch.tensor([[focal, 0.0, principal_x], [0.0, focal, principal_y], [0.0, 0.0, 1.0]])


def smooth_trajectory(num_frames: int, fps: float, num_channels: int, frequency_hz: tuple[float, float],
                      num_sinusoids: int, generator: torch.Generator) -> Tensor:
    """Sums of sinusoids with random frequencies, phases and weights, bounded by 1 in magnitude: (T, C)."""
    frequency = frequency_hz[0] + (frequency_hz[1] - frequency_hz[0]) * torch.rand(
        num_channels, num_sinusoids, generator=generator, dtype=torch.float64)
    phase = 2.0 * math.pi * torch.rand(num_channels, num_sinusoids, generator=generator, dtype=torch.float64)
    weight = torch.rand(num_channels, num_sinusoids, generator=generator, dtype=torch.float64) + 0.2
    amplitude = 0.5 + 0.5 * torch.rand(num_channels, 1, generator=generator, dtype=torch.float64)
    weight = amplitude * weight / weight.sum(dim=1, keepdim=True)  # (C, K), sums to amplitude <= 1
    time = torch.arange(num_frames, dtype=torch.float64) / fps  # (T,)
    waves = torch.sin(2.0 * math.pi * frequency[None] * time[:, None, None] + phase[None])  # (T, C, K)
    return (weight[None] * waves).sum(-1)  # (T, C)


def sample_motion(num_frames: int, fps: float, generator: torch.Generator,
                  ranges: MotionRanges = MotionRanges()) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded smooth motion: angles (T, 3) degrees (yaw, pitch, roll), translation (T, 3), mouth (T,) in [0, 1]."""
    head = smooth_trajectory(num_frames, fps, 6, ranges.head_frequency_hz, ranges.num_sinusoids, generator)
    mouth = smooth_trajectory(num_frames, fps, 1, ranges.mouth_frequency_hz, ranges.num_sinusoids, generator)
    angle_limits = torch.tensor([ranges.max_yaw_degrees, ranges.max_pitch_degrees, ranges.max_roll_degrees],
                                dtype=torch.float64)
    angles = head[:, :3] * angle_limits
    translation = head[:, 3:] * torch.tensor(ranges.max_translation, dtype=torch.float64)
    translation[:, 2] += HEAD_DISTANCE
    lowest, highest = ranges.mouth_opening_range
    mouth_opening = (lowest + (highest - lowest) * (0.5 + 0.5 * mouth[:, 0])).clamp(0.0, 1.0)
    return angles.float(), translation.float(), mouth_opening.float()


def render_clip(num_frames: int, size: int = 64, seed: int = 0,
                texture: Union[Tensor, np.ndarray, None] = None, fps: float = 25.0,
                supersample: int = 1, motion: MotionRanges = MotionRanges(),
                shape: HeadShape = HeadShape(), num_threads: Optional[int] = 1,
                eye_closure: float = 0.0) -> SyntheticClip:
    """Render a seeded clip of ``num_frames`` square ``size`` x ``size`` frames.

    texture: (H, W, 3) portrait in [0, 1] cropped like ``default_texture`` (eyes at ~47% of the height and
        ~33% / 67% of the width, mouth at ~74% of the height); None uses the astronaut.
    supersample: sub-pixel rays per side that anti-alias silhouettes and depth edges (1: none).
    num_threads: torch intra-op threads while rendering, restored afterwards (None: leave as is). The
        renderer runs many small ops, and on a busy CPU OpenMP threads waiting for each other can make it
        10-100x slower than one thread.
    eye_closure: the upper lids of every frame, 0 open (the texture as it is) to 1 shut (``upper_lid``).
    The result is bit-identical for equal arguments; the global torch RNG is never touched.
    """
    if num_frames < 1 or size < 1 or supersample < 1:
        raise ValueError(f"num_frames, size and supersample must be positive, got {num_frames}, {size}, "
                         f"{supersample}")
    generator = torch.Generator().manual_seed(seed)
    intrinsics = make_intrinsics(size, generator)
    angles, translation, mouth_opening = sample_motion(num_frames, fps, generator, motion)
    background_texture = make_background_texture(generator)
    face_texture = prepare_face_texture(texture, target_height=size)  # about one texel per pixel
    rotation = rotation_from_angles(angles[:, 0], angles[:, 1], angles[:, 2])  # (T, 3, 3)

    rendered = [render_frame(rotation[t], translation[t], float(mouth_opening[t]), intrinsics, size,
                             face_texture, background_texture, supersample, shape, num_threads, eye_closure)
                for t in range(num_frames)]
    return SyntheticClip(frames=torch.stack([frame.image for frame in rendered]),
                         depth=torch.stack([frame.depth for frame in rendered]),
                         head_mask=torch.stack([frame.head_mask for frame in rendered]),
                         rotation=rotation, translation=translation, intrinsics=intrinsics.float(), fps=fps,
                         head_angles=angles, mouth_opening=mouth_opening, face_texture=face_texture,
                         background_texture=background_texture, shape=shape, eye_closure=eye_closure)


# Ground-truth motion.
def head_pose_matrix(clip: SyntheticClip, index: int) -> Tensor:
    """Object-to-camera rigid transform of frame ``index``: (4, 4) float64."""
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3] = clip.rotation[index].double()
    pose[:3, 3] = clip.translation[index].double()
    return pose


def relative_pose(clip: SyntheticClip, source_index: int, target_index: int) -> Tensor:
    """Rigid transform (4, 4) float32 mapping camera-space HEAD points of frame source_index to frame target_index.

    It is exact for the rigid part of the head; jaw motion (a mouth-opening change) and the static
    background are not described by it (see ``warp_points``).
    """
    pose = head_pose_matrix(clip, target_index) @ torch.linalg.inv(head_pose_matrix(clip, source_index))
    return pose.float()


def warp_points(clip: SyntheticClip, source_index: int, target_index: int, points: Tensor,
                is_head: Tensor) -> Tensor:
    """Exact scene motion of camera-space points (N, 3) of frame source_index into frame target_index.

    is_head: (N,) bool. Head points follow the head pose and the jaw (undo the source mouth opening, apply
    the target one); other points lie on the static background and stay put. Returns (N, 3).
    Skin is brightness-constant under this motion, except for slight shading changes in the stretching lip
    band; the dark mouth-cavity wall is not skin and is not tracked (it changes shape with the opening).
    """
    source_pose = head_pose_matrix(clip, source_index)
    target_pose = head_pose_matrix(clip, target_index)
    head_points = points[is_head].double()
    deformed = (head_points - source_pose[:3, 3]) @ source_pose[:3, :3]  # object coords, rows R^T (p - t)
    rest = close_jaw(deformed.T.float(), float(clip.mouth_opening[source_index]), clip.shape)  # (3, M)
    moved = open_jaw(rest, float(clip.mouth_opening[target_index]), clip.shape).T.double()  # (M, 3)
    moved = moved @ target_pose[:3, :3].T + target_pose[:3, 3]  # camera coordinates of frame j
    warped = points.clone()
    warped[is_head] = moved.to(points.dtype)
    return warped
