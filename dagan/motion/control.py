"""Directing motion: head pose and expression apart, per-region strength, eye and mouth openness.

Every driver (video, image, speech, motion file) gives driving keypoints x_t, J_t and an anchor x_a, J_a (the
driving frame the relative motion is measured from). :class:`MotionEditor` edits the driving keypoints before
DaGAN's relative-motion transfer (:func:`~dagan.geometry.normalize_keypoints`), which then runs unchanged:

    split      (A_t, b_t) = the pose of x_t relative to x_a (a robust fit),  d_t, D_t = the local residual
               (dagan.motion.split)
    edit       A' = I + p (A_t - I),  b' = p b_t                                      (p: pose scale)
               d'_k = w_k d_t,k,  D'_k = w_k D_t,k,  w_k = e * region_scale(region of k)  (e: expression scale)
    compose    x'_t = A' (x_a + d') + b',   J'_t = A' (J_a + D')

so p = 0 keeps the source's head pose, e = 0 the source's expression, 1 is the driver's and > 1 exaggerates.
Keypoints of a region with an openness target get, instead of w_k d_t,k, the opening of that region
(:func:`dagan.motion.regions.opening`, solved by :mod:`dagan.motion.openness`) divided by the movement scale s
(the relative transfer multiplies it by s again), and the Jacobian change (S_k - I) J_a,k.

Scales of 1 without regions or targets (``MotionControl().is_identity``) return the driving keypoints as they are,
so the frames are exactly those of plain relative motion.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from dagan.geometry import Keypoints
from dagan.motion.regions import REGIONS, Opening
from dagan.motion.split import POSE_MODELS, ROBUST_STEPS, fit_pose_double

ANIMATE = ("all", "pose", "expression")
MAX_SCALE = 3.0
OPENNESS_RANGE = {"eyes": (0.0, 0.6), "mouth": (0.0, 1.2)}


def parse_region_scales(text: Optional[str]) -> tuple[tuple[str, float], ...]:
    """``"mouth=1.3,eyes=0"`` -> (("mouth", 1.3), ("eyes", 0.0)); a one-line ValueError otherwise."""
    if not text:
        return ()
    scales = []
    for item in text.split(","):
        name, _, value = item.strip().partition("=")
        name = name.strip()
        if name not in REGIONS or not value.strip():
            raise ValueError(f"--region_scale takes REGION=SCALE pairs with REGION in {', '.join(REGIONS)}, e.g. "
                             f"mouth=1.3,eyes=0; got {item.strip()!r}")
        try:
            scales.append((name, float(value)))
        except ValueError:
            raise ValueError(f"--region_scale {name}: {value.strip()!r} is not a number") from None
    return tuple(scales)


def parse_still(text: Optional[str]) -> tuple[str, ...]:
    """``"eyes,mouth"`` -> ("eyes", "mouth")."""
    if not text:
        return ()
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    for name in names:
        if name not in REGIONS:
            raise ValueError(f"--still takes regions from {', '.join(REGIONS)} (comma separated); got {name!r}")
    return names


@dataclass(frozen=True)
class MotionControl:
    """What of the driver's motion reaches the portrait (``demo.py``'s motion flags; the app's sliders).

    animate: "all", "pose" (head pose only: the source's expression) or "expression" (the source's head pose).
    pose_scale, expression_scale: 0 = the source's, 1 = the driver's, > 1 exaggerates (at most 3).
    region_scales: extra scale of each region's local motion, e.g. (("mouth", 1.3), ("eyes", 0.0)).
    still: regions kept at the source (scale 0). eye_openness, mouth_openness: targets measured on the output's
    landmarks (see :mod:`dagan.motion.regions`), None = follow the driver. pose_model: "affine" or "similarity".
    """

    animate: str = "all"
    pose_scale: float = 1.0
    expression_scale: float = 1.0
    region_scales: tuple[tuple[str, float], ...] = ()
    still: tuple[str, ...] = ()
    eye_openness: Optional[float] = None
    mouth_openness: Optional[float] = None
    pose_model: str = "affine"

    def __post_init__(self) -> None:
        if self.animate not in ANIMATE:
            raise ValueError(f"--animate must be one of {', '.join(ANIMATE)}, got {self.animate!r}")
        if self.pose_model not in POSE_MODELS:
            raise ValueError(f"pose_model must be one of {', '.join(POSE_MODELS)}, got {self.pose_model!r}")
        for name, value in (("--pose_scale", self.pose_scale), ("--expression_scale", self.expression_scale),
                            *((f"--region_scale {region}", scale) for region, scale in self.region_scales)):
            if not 0.0 <= value <= MAX_SCALE:
                raise ValueError(f"{name} must be in [0, {MAX_SCALE:g}] (0 = the source's, 1 = the driver's), "
                                 f"got {value:g}")
        for region, _ in self.region_scales:
            if region not in REGIONS:
                raise ValueError(f"unknown region {region!r}; regions: {', '.join(REGIONS)}")
        for region in self.still:
            if region not in REGIONS:
                raise ValueError(f"unknown region {region!r} for --still; regions: {', '.join(REGIONS)}")
        for name, target in self.openness_targets().items():
            low, high = OPENNESS_RANGE[name]
            if not low <= target <= high:
                flag = "--eye_openness" if name == "eyes" else "--mouth_openness"
                raise ValueError(f"{flag} must be in [{low:g}, {high:g}], got {target:g}")

    @property
    def effective_pose_scale(self) -> float:
        return self.pose_scale if self.animate in ("all", "pose") else 0.0

    @property
    def effective_expression_scale(self) -> float:
        return self.expression_scale if self.animate in ("all", "expression") else 0.0

    def region_scale(self, region: str) -> float:
        if region in self.still:
            return 0.0
        return dict(self.region_scales).get(region, 1.0)

    def openness_targets(self) -> dict[str, float]:
        """{"eyes": target, "mouth": target} for the targets that are set."""
        targets = {"eyes": self.eye_openness, "mouth": self.mouth_openness}
        return {name: float(value) for name, value in targets.items() if value is not None}

    @property
    def needs_regions(self) -> bool:
        """Whether the source's face regions (its 68 landmarks) are needed."""
        return (any(scale != 1.0 for _, scale in self.region_scales) or bool(self.still)
                or bool(self.openness_targets()))

    @property
    def is_identity(self) -> bool:
        """True when the driving keypoints pass unchanged (scales of 1, no regions, no openness targets)."""
        return (self.effective_pose_scale == 1.0 and self.effective_expression_scale == 1.0
                and not self.needs_regions)

    def local_weights(self, regions: Optional[np.ndarray], num_kp: int) -> np.ndarray:
        """The scale of each keypoint's local motion (K,): expression scale x its region's scale."""
        weights = np.full(num_kp, self.effective_expression_scale, dtype=np.float64)
        if regions is not None:
            for index, name in enumerate(REGIONS):
                weights[np.asarray(regions) == index] *= self.region_scale(name)
        elif self.needs_regions:
            raise ValueError("region scales, --still and openness targets need the source's face regions")
        return weights


Recorder = Callable[[Keypoints, Keypoints], None]


class MotionEditor:
    """The driving-keypoint edit of a :class:`MotionControl` for one source (see the module docstring): call it
    with driving keypoints (B, K, ...), the anchor (1, K, ...) and the movement scale; it returns edited driving
    keypoints. regions: (K,) region indices of the source's keypoints (:func:`~dagan.motion.regions.assign_regions`),
    needed by region scales and openness; opening: the solved :class:`~dagan.motion.regions.Opening` of the
    regions with an openness target. ``recorder(kp_driving, anchor)`` sees every unedited batch (motion files).
    """

    def __init__(self, control: MotionControl = MotionControl(), regions: Optional[np.ndarray] = None,
                 opening: Optional[Opening] = None, recorder: Optional[Recorder] = None):
        if control.needs_regions and regions is None:
            raise ValueError("region scales, --still and openness targets need the source's face regions")
        self.control, self.regions, self.opening, self.recorder = control, regions, opening, recorder
        self.colors: Optional[np.ndarray] = None  # keypoint colours for --visualize (the regions), set by callers
        self.report: list[str] = []  # what the user should be told (regions found, openness reached)
        self.openness_result = None  # the solved openness targets (dagan.motion.openness.OpennessResult)

    @property
    def is_identity(self) -> bool:
        return self.control.is_identity and self.opening is None

    def __call__(self, kp_driving: Keypoints, anchor: Keypoints, movement_scale: float = 1.0) -> Keypoints:
        if self.recorder is not None:
            self.recorder(kp_driving, anchor)
        if self.is_identity:
            return kp_driving
        return edit_keypoints(kp_driving, anchor, self.control, self.regions, self.opening, movement_scale)


def edit_keypoints(kp_driving: Keypoints, anchor: Keypoints, control: MotionControl,
                   regions: Optional[np.ndarray] = None, opening: Optional[Opening] = None,
                   movement_scale: float = 1.0) -> Keypoints:
    """Edited driving keypoints (B, K, ...) (see the module docstring); computed in float64 (on the CPU for MPS,
    which has no float64), returned in the driving keypoints' dtype and device."""
    if kp_driving.value.device.type == "mps":
        edited = edit_keypoints(_on(kp_driving, "cpu"), _on(anchor, "cpu"), control, regions, opening, movement_scale)
        return _on(edited, kp_driving.value.device)
    dtype, device = kp_driving.value.dtype, kp_driving.value.device
    value = kp_driving.value.double()
    anchor_value = anchor.value.double()  # (1, K, 2)
    num_kp = value.shape[1]
    matrix, offset = fit_pose_double(anchor_value[0], value, control.pose_model, ROBUST_STEPS)  # (B, 2, 2), (B, 2)
    inverse = torch.linalg.inv(matrix)
    local_value = torch.einsum("bij,bkj->bki", inverse, value - offset[:, None]) - anchor_value
    weights = torch.from_numpy(control.local_weights(regions, num_kp)).to(device)
    local_value = local_value * weights[None, :, None]
    jacobian = None
    has_jacobian = kp_driving.jacobian is not None and anchor.jacobian is not None
    if has_jacobian:
        anchor_jacobian = anchor.jacobian.double()
        local_jacobian = torch.einsum("bij,bkjl->bkil", inverse, kp_driving.jacobian.double()) - anchor_jacobian
        local_jacobian = local_jacobian * weights[None, :, None, None]
    if opening is not None:
        mask = torch.from_numpy(opening.mask).to(device)
        displacement = torch.from_numpy(opening.displacement).to(device) / movement_scale
        local_value = torch.where(mask[None, :, None], displacement[None], local_value)
        if has_jacobian:
            identity = torch.eye(2, dtype=torch.float64, device=device)
            change = (torch.from_numpy(opening.stretch).to(device) - identity) @ anchor_jacobian[0]  # (K, 2, 2)
            local_jacobian = torch.where(mask[None, :, None, None], change[None], local_jacobian)
    pose = control.effective_pose_scale
    identity = torch.eye(2, dtype=torch.float64, device=device)
    matrix = identity + pose * (matrix - identity)
    offset = pose * offset
    value = torch.einsum("bij,bkj->bki", matrix, anchor_value + local_value) + offset[:, None]
    if has_jacobian:
        jacobian = torch.einsum("bij,bkjl->bkil", matrix, anchor_jacobian + local_jacobian).to(dtype)
    return Keypoints(value.to(dtype), jacobian)


def _on(keypoints: Keypoints, device) -> Keypoints:
    return Keypoints(keypoints.value.to(device), None if keypoints.jacobian is None else keypoints.jacobian.to(device))
