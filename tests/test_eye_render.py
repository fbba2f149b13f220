"""Eye openness measured on rendered images: a tiny DaGAN trained for about a minute on close-ups of the
synthetic head's eyes closes them when its eye keypoints are moved, and ``--eye_openness`` targets are reached
on the frames it renders.

The scene is the one of ``tests/test_motion_render.py`` seen through a 2.5x longer lens, so that the upper face
fills the 64 px frame (each eye's opening is about 9 px wide and 4 px tall; at the usual framing it is 3 px tall,
below the blur of what a tiny generator renders, and eight training recipes at that framing did not teach it the
lids). The eyes close as the renderer's lids do (``heads.upper_lid``: the open eye squashes towards the lower lid
while the lid's skin stretches down over it), which DaGAN's warping can describe. The model: ``configs/tiny.yaml``
with 10 keypoints trained on 96 renders at small random poses with random eye closures (0-1, mouth shut); its
keypoint detector learns the renderer's landmarks (the eye keypoints on the upper lids) and its generator
reconstructs one render from another at those keypoints, the eyes' surroundings weighted 5x.

The measurer (analysis by synthesis, as the mouth's): an output is compared, over the pixels the lids change, with
ground-truth renders at the source's pose for closures 0-1, blurred as the model renders; the best closure, refined
by a parabola, is converted to the eye aspect ratio of :func:`dagan.motion.regions.eye_openness` through the
head's 68 landmarks (:func:`test_motion_render.landmarks_68`: 0.42 x (1 - closure)).

How robust the fixture is: the training seed is ``DAGAN_MOTION_RENDER_SEED`` (default 0), and training is
deterministic on one machine. With seed 0 every test passes (measured: the source renders at closure 0.38, a
shut-eyed driver at 0.78; targets 0.20 and 0.32 reached at 0.186 and 0.336 in 3 renders each). With seeds 1 and 2
the generator did not learn the lids at all (a shut-eyed driver rendered at 0.24 and 0.20, the source at 0.26 and
0.29), so all three tests fail there; training half of the pairs on one pose with its open and shut eyes (what the
mouth's model needs) did not change that.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dagan.motion import REGIONS, MotionControl, MotionEditor, assign_regions, solve_openness
from dagan.motion.driver import SourceFace, opened_keypoints
from dagan.motion.regions import eye_openness
from test_motion_render import (SEED, Scene, as_float, blur, feature_weight, fit_tiny_model, landmarks_68, refine,
                                to_uint8)

pytestmark = pytest.mark.slow  # the module's fixture trains a model (about a minute on one idle core)

ZOOM = 2.5
EYE_KEYPOINTS = [6, 7]  # talking.EYE_LANDMARKS: on the upper lids
SOURCE_POSE = np.zeros(5)  # yaw, pitch, roll, x, y
CLOSURES = np.linspace(0.0, 1.0, 11)  # the measurer's grid
EYE_TARGETS = (0.2, 0.32)  # half shut, and wider open than the model renders the source (about 0.26)
EYE_TOLERANCE = 0.03  # dagan.motion.openness.TOLERANCE["eyes"]: about 0.07 of the closure's range
TRAIN_RENDERS, TRAIN_STEPS, BATCH = 96, 300, 8
EYE_SIGMA = 0.1  # the width (keypoint coordinates) of the eyes' extra weight in training


def train_eye_model(scene: Scene, seed: int = SEED):
    """The tiny DaGAN of the module docstring, trained for TRAIN_STEPS steps (about 50 s on an idle core)."""
    rng = np.random.default_rng(seed)
    poses = np.stack([rng.uniform(-6, 6, TRAIN_RENDERS), rng.uniform(-4, 4, TRAIN_RENDERS),
                      rng.uniform(-3, 3, TRAIN_RENDERS), rng.uniform(-0.02, 0.02, TRAIN_RENDERS),
                      rng.uniform(-0.02, 0.02, TRAIN_RENDERS)], 1)
    closures = rng.uniform(0.0, 1.0, TRAIN_RENDERS)
    frames = torch.stack([scene.render(pose, 0.0, eyes).image for pose, eyes in zip(poses, closures)])
    value, jacobian = (torch.from_numpy(array)
                       for array in scene.keypoints(poses, np.zeros(TRAIN_RENDERS), closures))
    return fit_tiny_model(frames, value, jacobian, seed, TRAIN_STEPS,
                          lambda: (rng.integers(0, TRAIN_RENDERS, BATCH), rng.integers(0, TRAIN_RENDERS, BATCH)),
                          lambda driving: feature_weight(driving[:, EYE_KEYPOINTS], EYE_SIGMA))


class EyeMeasurer:
    """The eye closure of an image of the head at the source's pose (see the module docstring)."""

    def __init__(self, scene: Scene):
        self.renders = torch.stack([scene.render(SOURCE_POSE, 0.0, closure).image for closure in CLOSURES])
        changed = ((self.renders[0] - self.renders[-1]).abs().amax(0, keepdim=True) > 1e-4).float()  # (1, H, W)
        self.area = F.max_pool2d(changed[None], 5, 1, 2)[0]  # the pixels the lids change, widened by 2 px
        self.sigma = 0.0
        self.templates = self.renders

    def calibrate(self, rendered: torch.Tensor) -> float:
        """Blur the grid by the sigma (0-3 px) that best matches ``rendered`` (the model's image of the open-eyed
        source) to the open eyes' render."""
        self.sigma = min(np.arange(0.0, 3.01, 0.25), key=lambda sigma: float(
            ((blur(self.renders[0], sigma) - rendered).abs() * self.area).sum()))
        self.templates = blur(self.renders, self.sigma)
        return self.sigma

    def __call__(self, image) -> float:
        """The eye closure (0 open, 1 shut) of an image (H, W, 3) uint8 or (3, H, W) float in [0, 1]."""
        cost = ((self.templates - as_float(image)).abs() * self.area).sum((1, 2, 3)).numpy()  # (C,)
        return refine(cost, int(cost.argmin()), CLOSURES)


class Eyes:
    """The trained model's pipeline, the scene, the measurer, the open-eyed source and a shut-eyed driver."""

    def __init__(self):
        from dagan.inference import DaGANPipeline

        self.scene = Scene(zoom=ZOOM)
        self.pipeline = DaGANPipeline(train_eye_model(self.scene), device="cpu", batch_size=1)
        self.measure = EyeMeasurer(self.scene)
        self.source = to_uint8(self.scene.render(SOURCE_POSE, 0.0, 0.0).image)
        self.shut = to_uint8(self.scene.render(SOURCE_POSE, 0.0, 1.0).image)
        self.state = self.pipeline.prepare_source(self.source)
        self.itself = self.pipeline.generate(self.state, self.state.keypoints).prediction[0]  # the source as rendered
        self.measure.calibrate(self.itself)
        self.landmarks = landmarks_68(self.scene, SOURCE_POSE, 0.0)

    def openness(self, closure: float) -> float:
        """The eye openness (dagan.motion.regions units) of the source's head with its eyes closed by ``closure``."""
        return eye_openness(landmarks_68(self.scene, SOURCE_POSE, 0.0, closure))

    def animate(self, control: MotionControl, driver: np.ndarray, regions=None) -> np.ndarray:
        """The frame (H, W, 3) uint8 of the source driven by ``driver`` relative to the source itself."""
        frames = self.pipeline.animate(self.source, [driver], driving_initial=self.source,
                                       edit=MotionEditor(control, regions))
        return next(iter(frames)).frame


@pytest.fixture(scope="module")
def eyes() -> Eyes:
    return Eyes()


def test_the_eye_measurer_recovers_closures_and_the_model_closes_the_eyes(eyes):
    """Ground-truth renders between the grid's closures (blurred as the model renders) give back their closure;
    the model's reconstruction of a shut-eyed driver (relative motion, no edit) closes the eyes."""
    for closure in (0.15, 0.45, 0.85):
        found = eyes.measure(blur(eyes.scene.render(SOURCE_POSE, 0.0, closure).image, eyes.measure.sigma))
        print(f"truth eye closure {closure}: measured {found:.3f}")
        assert abs(found - closure) < 0.05
    source, shut = eyes.measure(eyes.itself), eyes.measure(eyes.animate(MotionControl(), eyes.shut))
    print(f"blur sigma {eyes.measure.sigma} px; the model's eye closure: the source {source:.3f}, driven by shut "
          f"eyes {shut:.3f}")
    assert shut - source > 0.3


def test_eye_openness_targets_are_reached_on_the_rendered_head(eyes):
    """The openness solver (dagan.motion.openness) with the eye measurer in place of dlib's 68 landmarks: the
    source's eye keypoints get their region from the head's 68 landmarks, the eyes are closed or opened by the
    solved amount (their keypoints moved towards or away from the lower lids), and the rendered eyes reach each
    target. (Measured response of this model: openness 0.36 at an amount of +0.5, 0.26 at 0, 0.16 at -0.6; beyond
    -0.6 the nearly flattened Jacobians, which training never showed it, open the eyes again.)"""
    pipeline, state = eyes.pipeline, eyes.state
    regions = assign_regions(state.keypoints.value[0].double().numpy(), eyes.landmarks)
    assert np.flatnonzero(regions == REGIONS.index("eyes")).tolist() == EYE_KEYPOINTS
    face = SourceFace(eyes.landmarks, regions)

    def measure(amounts: dict[str, float]) -> dict[str, float]:
        frame = pipeline.generate(state, opened_keypoints(state, face, amounts)).prediction[0]
        return {"eyes": eyes.openness(eyes.measure(frame))}

    print(f"eye openness: open {eyes.openness(0.0):.3f}, half shut {eyes.openness(0.5):.3f}")
    for target in EYE_TARGETS:
        result = solve_openness(measure, {"eyes": target}, tolerance={"eyes": EYE_TOLERANCE})
        print(result.describe(), f"{result.steps} renders")
        assert result.reached["eyes"] and abs(result.achieved["eyes"] - target) <= EYE_TOLERANCE
        direction = np.sign(target - result.start["eyes"])  # closing lowers the lids, opening raises them
        assert result.amounts["eyes"] * direction > 0.1


def test_eye_region_scale_zero_keeps_the_eyes_open(eyes):
    """A driver that shuts its eyes: with the eyes' region scale 1 the output's eyes close, with 0
    (``--region_scale eyes=0``, what ``--still eyes`` does) they stay as open as the source's."""
    regions = assign_regions(eyes.state.keypoints.value[0].double().numpy(), eyes.landmarks)
    source = eyes.measure(eyes.itself)
    closures = {scale: eyes.measure(eyes.animate(MotionControl(region_scales=(("eyes", scale),)), eyes.shut,
                                                 regions)) for scale in (0.0, 1.0)}
    print(f"eye closure with a shut-eyed driver, eyes region scale 0 and 1: {closures[0.0]:.3f} {closures[1.0]:.3f} "
          f"(the source's {source:.3f})")
    assert abs(closures[0.0] - source) < 0.1
    assert closures[1.0] - source > 0.3
