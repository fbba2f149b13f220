"""Motion you can direct, measured on rendered images: a tiny DaGAN trained for about a minute on synthetic heads
(``dagan.data.synthetic``) animates one head with ``--animate``, region scales and a mouth-openness target, and
the frames it renders are measured against the renderer's ground truth.

The model: ``configs/tiny.yaml`` with 10 keypoints, trained for 325 steps on 96 renders of one synthetic head and
camera at random pose (yaw +-25, pitch +-12, roll +-6 degrees, shifts), each pose rendered with a nearly closed
(0-0.3) and an open (0.5-1) mouth. Its keypoint detector learns the renderer's 10 ground-truth head landmarks
(``talking.project_landmarks``: lips, chin, mouth corners, nose, eyes, brows) and its generator reconstructs a
render from another at those keypoints (L1 at two scales, the mouth's surroundings weighted 5x; half of the pairs
are one pose with its two mouths, without which the mouth was not learned with every seed). With 250 steps the
model rendered the mouth the same at jaw 0.2 and 1.0 at the driver's turned pose, so ``--animate pose`` could not
be told from ``--animate all`` there; with 325 it opens it (0.67 against 0.22 with seed 0).
Unsupervised keypoints (the GAN stage, ``train.py``) would not settle on the jaw within a test's time: one GAN step
of ``configs/synthetic-gan.yaml`` costs about 0.8 s on one core, so 100 steps already take the whole budget.

The measurer (analysis by synthesis): every output is compared (L1 over the head's area) with ground-truth renders
of the same head on a grid of poses along the straight path from the source's pose (0) to the driver's (1), and of
jaw openings 0-1.2; the best grid point, refined by a parabola in each direction, gives the output's pose ``alpha``
and jaw ``jaw``. The renders are blurred by the Gaussian that best matches the model's rendering of the source to
the true source (the tiny generator renders soft images). One unit of ``alpha`` moves the rigid landmarks (eyes,
brows, nose) by :func:`pose_pixels` (9.8 px), so pose errors are stated in pixels. The measurer is checked on
ground-truth renders first (the first test).

How robust the fixture is: the training seed is ``DAGAN_MOTION_RENDER_SEED`` (default 0). Training is
deterministic on one machine, but another CPU or torch build trains a slightly different model. With seeds 0, 1
and 2 every test passed with seed 0, and each of the other two failed one: with seed 1 ``mouth=1.5`` opened the
mouth no further than ``mouth=1`` (0.775 against 0.772, the model rendering the source's jaw 0.2 as 0.47 already);
with seed 2 pose only closed the mouth that the model's rendering of the wanted head shows open (0.00 against
0.30; ``--animate all`` 0.90). With 250 steps seeds 0 and 1 passed the tests of that time (pose only then only
asserted its mouth against the wanted head's) and seed 2 failed two (no mouth from expression-only keypoints); with
400 steps each of the three seeds failed one (seed 0: ``--mouth_openness 0.15`` reached 0.108 at most).

Eye openness is tested on frames in ``tests/test_eye_render.py``, on close-ups of the eyes. At this framing the
eye is 3 px tall, and in eight training recipes (random eye closures with the eye keypoints on the lids, the eyes'
surroundings weighted up to 5x, 250 or 400 steps, lids drawn with a lash line, the face 1.5x larger, the
generator's bottleneck at 32x32) the keypoint detector learned the lids but the generator rendered the same eyes
for open, half-shut and shut drivers. ``landmarks_68`` puts the eye landmarks on the lids' ellipse, so their eye
openness (:func:`dagan.motion.regions.eye_openness`) is (1 - closure) times the open eye's (0.42). Mouth openness
is tested here end to end, in the units of :func:`dagan.motion.regions.openness` (the inner-lip gap over the mouth
width).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import config_path
from dagan.config import load_config
from dagan.data.synthetic import heads, talking
from dagan.geometry import Keypoints
from dagan.motion import REGIONS, MotionControl, MotionEditor, assign_regions, solve_openness
from dagan.motion.driver import SourceFace, opened_keypoints

pytestmark = pytest.mark.slow  # the module's fixture trains a model (about a minute on one idle core)

SIZE = 64
NUM_KP = 10  # talking.LANDMARKS[:10]: 0 lower lip, 1 chin, 2 upper lip, 3-4 mouth corners, 5 nose, 6-7 eyes, 8-9 brows
KEYPOINT_REGIONS = np.array([REGIONS.index(name)
                             for name in ("mouth",) * 5 + ("rest", "eyes", "eyes", "brows", "brows")])
RIGID = [5, 6, 7, 8, 9]
DRIVER_POSE = np.array([15.0, 8.0, 5.0, 0.03, 0.0])  # yaw, pitch, roll (degrees), x and y shift (scene units)
SOURCE_JAW, DRIVER_JAW = 0.2, 1.0  # the portrait's lips parted a little; the driver's mouth wide open
OPENNESS_TARGETS = (0.15, 0.0)  # open, shut (the source, jaw 0.2, is 0.06)
OPENNESS_TOLERANCE = 0.02  # about 0.07 of the jaw's range
SCALED_JAW = 0.6  # the driver of the region-scale test: x 1.5 stays within the trained openings (0-1)
ALPHAS = np.linspace(-0.25, 1.25, 13)  # the measurer's grid: pose along the path source -> driver
JAWS = np.linspace(0.0, 1.2, 13)
TRAIN_RENDERS, TRAIN_STEPS, BATCH = 96, 325, 8
MODEL_OVERRIDES = ["model_params.kp_detector_params.scale_factor=0.5"]  # on configs/tiny.yaml
SEED = int(os.environ.get("DAGAN_MOTION_RENDER_SEED", "0"))  # the training seed (see the module docstring)
SHAPE = heads.HeadShape()
EYE_DEPTH = talking.LANDMARKS[6][2]  # object z of the eye landmarks


# The scene: one head, one camera, one background.
class Scene:
    def __init__(self, seed: int = 0, zoom: float = 1.0):
        """zoom: the camera's focal length times this (tests/test_eye_render.py fills the frame with the eyes)."""
        generator = torch.Generator().manual_seed(seed)
        self.intrinsics = heads.make_intrinsics(SIZE, generator)
        self.intrinsics[:2, :2] *= zoom
        self.background = heads.make_background_texture(generator)
        self.face = heads.prepare_face_texture(None, target_height=SIZE)

    def render(self, pose: np.ndarray, jaw: float, eyes: float = 0.0) -> heads.RenderedFrame:
        """pose: (yaw, pitch, roll, x, y); eyes: the eye closure (0 open, 1 shut)."""
        yaw, pitch, roll, x, y = (float(value) for value in pose)
        rotation = heads.rotation_from_angles(torch.tensor([yaw]), torch.tensor([pitch]), torch.tensor([roll]))[0]
        translation = torch.tensor([x, y, heads.HEAD_DISTANCE])
        return heads.render_frame(rotation, translation, float(jaw), self.intrinsics, SIZE, self.face, self.background,
                                  eye_closure=float(eyes))

    def project(self, points: np.ndarray, pose: np.ndarray, jaw: float) -> np.ndarray:
        """Object points (N, 3) at rest -> keypoint coordinates (N, 2) in [-1, 1] with the jaw opened and posed."""
        yaw, pitch, roll, x, y = (float(value) for value in pose)
        rotation = heads.rotation_from_angles(torch.tensor([yaw]), torch.tensor([pitch]), torch.tensor([roll]))[0]
        moved = heads.open_jaw(torch.tensor(points, dtype=torch.float32).T, float(jaw), SHAPE).double()  # (3, N)
        camera = rotation.double() @ moved + torch.tensor([x, y, heads.HEAD_DISTANCE], dtype=torch.float64)[:, None]
        pixels = self.intrinsics.double() @ camera
        pixels = (pixels[:2] / pixels[2:]).T.numpy()  # (N, 2) u, v
        return (pixels + 0.5) / SIZE * 2.0 - 1.0

    def keypoints(self, poses: np.ndarray, jaws: np.ndarray,
                  eyes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Ground-truth keypoints (T, K, 2) and Jacobians (T, K, 2, 2) of the renders; with eye closures (T,), the
        eye keypoints on the upper lids."""
        poses = np.asarray(poses, np.float32)
        translation = np.stack([poses[:, 3], poses[:, 4], np.full(len(poses), heads.HEAD_DISTANCE)], 1)
        return talking.project_landmarks(poses[:, :3], translation, np.asarray(jaws, np.float32),
                                         self.intrinsics.numpy(), SIZE, NUM_KP,
                                         eye_closure=None if eyes is None else np.asarray(eyes, np.float32))


def path_pose(alpha: float) -> np.ndarray:
    return DRIVER_POSE * alpha


def pose_pixels(scene: Scene) -> float:
    """Mean shift (px) of the rigid landmarks (nose, eyes, brows) from the source's pose to the driver's."""
    rigid = np.asarray(talking.LANDMARKS)[RIGID]
    shift = scene.project(rigid, path_pose(1.0), 0.0) - scene.project(rigid, path_pose(0.0), 0.0)
    return float(np.linalg.norm(shift, axis=1).mean() * SIZE / 2)


def jaw_openness(jaw: float) -> float:
    """The synthetic head's mouth openness in the units of dagan.motion.regions.openness: the dark gap between
    the lips (mouth_gap x jaw_drop x jaw) over the mouth width."""
    return SHAPE.mouth_gap * SHAPE.jaw_drop * jaw / (2 * SHAPE.mouth_half_width)


def landmarks_68(scene: Scene, pose: np.ndarray, jaw: float, eyes: float = 0.0) -> np.ndarray:
    """The head's 68 landmarks in the iBUG layout (keypoint coordinates), placed on its features: what a landmark
    detector would find if it found these 64 px faces (dlib does not). The eyes' are on their openings' ellipses
    (heads.upper_lid): the corners at its ends, the upper two on the lid's edge and the lower two on the lower arc,
    half way to the corners, so their eye aspect ratio is (1 - eyes) times the open eye's."""
    points = np.zeros((68, 3))
    along = (-1.0, -0.5, 0.5, 1.0, 0.5, -0.5)  # corner, two upper, corner, two lower (left to right in the image)
    for first, sign in ((36, -1), (42, 1)):
        for index, across in enumerate(along):
            if index in (0, 3):
                down = 0.0  # the corners
            elif index in (1, 2):
                down = heads.upper_lid(across, eyes)
            else:
                down = np.sqrt(1 - across ** 2)  # the lower arc
            x, y = heads.eye_point(sign * across, down, SHAPE)  # (|x|, y): mirrored for the image's left eye
            points[first + index] = (sign * x, y, EYE_DEPTH)
    points[17:22] = [(x, -0.075, -0.36) for x in np.linspace(-0.15, -0.05, 5)]
    points[22:27] = [(x, -0.075, -0.36) for x in np.linspace(0.05, 0.15, 5)]
    points[27:31] = [(0.0, y, z) for y, z in zip(np.linspace(-0.03, 0.085, 4), np.linspace(-0.355, -0.405, 4))]
    points[31:36] = [(x, 0.095, -0.37) for x in np.linspace(-0.03, 0.03, 5)]
    points[0:17] = [(0.2 * np.cos(a), -0.02 + 0.295 * np.sin(a), -0.25)
                    for a in np.linspace(np.pi, 0.0, 17)]  # the jaw line, ear to chin to ear
    half = SHAPE.mouth_half_width
    outer = np.linspace(-half, half, 7)
    points[48:55] = [(x, SHAPE.mouth_height - 0.02 * (1 - (x / half) ** 2), -0.34) for x in outer]
    points[55:60] = [(x, SHAPE.mouth_height + 0.025 * (1 - (x / half) ** 2), -0.33) for x in outer[5:0:-1]]
    points[60:65] = [(x, SHAPE.mouth_height - 0.002, -0.345) for x in np.linspace(-0.05, 0.05, 5)]
    points[65:68] = [(x, SHAPE.mouth_height + 0.002, -0.345) for x in (0.025, 0.0, -0.025)]
    return scene.project(points, pose, jaw)


# The model.
def train_tiny_model(scene: Scene, seed: int = SEED):
    """The tiny DaGAN of the module docstring, trained for TRAIN_STEPS steps (about 50 s on an idle core)."""
    rng = np.random.default_rng(seed)
    count = TRAIN_RENDERS // 2  # poses, each rendered with a nearly closed and an open mouth
    poses = np.stack([rng.uniform(-25, 25, count), rng.uniform(-12, 12, count), rng.uniform(-6, 6, count),
                      rng.uniform(-0.04, 0.04, count), rng.uniform(-0.03, 0.03, count)], 1).repeat(2, 0)
    jaws = np.stack([rng.uniform(0.0, 0.3, count), rng.uniform(0.5, 1.0, count)], 1).reshape(-1)
    frames = torch.stack([scene.render(pose, jaw).image for pose, jaw in zip(poses, jaws)])  # (N, 3, H, W)
    value, jacobian = (torch.from_numpy(array) for array in scene.keypoints(poses, jaws))

    def pick_pairs() -> tuple[np.ndarray, np.ndarray]:  # half: the same pose, the other jaw
        source = rng.integers(0, TRAIN_RENDERS, BATCH)
        return source, np.where(np.arange(BATCH) % 2 == 0, source ^ 1, rng.integers(0, TRAIN_RENDERS, BATCH))

    return fit_tiny_model(frames, value, jacobian, seed, TRAIN_STEPS, pick_pairs,
                          lambda driving: feature_weight(driving[:, :3].mean(1, keepdim=True), 0.15))


def fit_tiny_model(frames: torch.Tensor, value: torch.Tensor, jacobian: torch.Tensor, seed: int, steps: int,
                   pick_pairs, loss_weight):
    """A tiny DaGAN (``configs/tiny.yaml`` with NUM_KP keypoints, its depth network untrained and frozen) fitted
    for ``steps`` steps to renders ``frames`` (N, 3, H, W) and their true keypoints ``value`` (N, K, 2) and
    Jacobians (N, K, 2, 2): the keypoint detector learns the keypoints, and the generator reconstructs a driving
    render from a source render at their true keypoints (L1 weighted by ``loss_weight(driving keypoints (B, K, 2))``
    (B, 1, H, W), plus L1 at half resolution). pick_pairs() gives each step's (source, driving) indices (B,)."""
    from dagan.model import DaGAN

    config = load_config(config_path("tiny.yaml"), [f"model_params.common_params.num_kp={NUM_KP}", *MODEL_OVERRIDES])
    torch.manual_seed(seed)
    model = DaGAN(config)
    optimizer = torch.optim.Adam([*model.kp_detector.parameters(), *model.generator.parameters()], lr=2e-3,
                                 betas=(0.5, 0.999))
    with torch.no_grad():
        disparity = model.eval().depth(frames)
    model.kp_detector.train(), model.generator.train()
    for _ in range(steps):
        source, driving = (torch.from_numpy(indices) for indices in pick_pairs())
        both = torch.cat([source, driving])
        detected = model.kp_detector(torch.cat([frames[both], disparity[both]], 1))
        keypoint_loss = ((detected.value - value[both]).abs().mean()
                         + 0.1 * (detected.jacobian - jacobian[both]).abs().mean())
        prediction = model.generator(frames[source], Keypoints(value[source], jacobian[source]),
                                     Keypoints(value[driving], jacobian[driving]), source_depth=disparity[source],
                                     return_deformed=False).prediction
        target = frames[driving]
        loss = ((prediction - target).abs() * loss_weight(value[driving])).mean() + 10 * keypoint_loss
        loss = loss + (F.avg_pool2d(prediction, 2) - F.avg_pool2d(target, 2)).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def feature_weight(centres: torch.Tensor, sigma: float) -> torch.Tensor:
    """A reconstruction loss weight (B, 1, H, W): 1, plus 4 in a Gaussian of ``sigma`` (keypoint coordinates)
    around each of the points ``centres`` (B, P, 2) (the mouth, the eyes)."""
    rows, columns = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    bumps = torch.exp(-((columns - centres[..., 0, None, None]) ** 2 + (rows - centres[..., 1, None, None]) ** 2)
                      / (2 * sigma ** 2))  # (B, P, H, W)
    return 1 + 4 * bumps.sum(1, keepdim=True)


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of images (..., 3, H, W) (replicated borders); sigma 0 returns them as they are."""
    if sigma == 0:
        return images
    radius = int(3 * sigma) + 1
    kernel = torch.exp(-torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    flat = images.reshape(-1, 1, *images.shape[-2:])  # (N, 1, H, W)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return flat.reshape(images.shape)


class Measurer:
    """Pose (alpha along the path source -> driver) and jaw opening of an image of the head, by analysis by
    synthesis against ground-truth renders on the ALPHAS x JAWS grid (see the module docstring)."""

    def __init__(self, scene: Scene):
        grid = [[scene.render(path_pose(alpha), jaw) for jaw in JAWS] for alpha in ALPHAS]
        self.renders = torch.stack([torch.stack([frame.image for frame in row]) for row in grid])  # (A, J, 3, H, W)
        head = torch.stack([frame.head_mask for row in grid for frame in row]).any(0).float()  # (1, H, W)
        self.area = F.max_pool2d(head[None], 5, 1, 2)[0]  # the head's area, widened by 2 px
        self.sigma = 0.0
        self.templates = self.renders

    def calibrate(self, rendered: torch.Tensor, truth: torch.Tensor) -> float:
        """Blur the grid by the sigma (0-3 px, steps of 0.25) that best matches ``rendered`` (the model's image
        of a head) to ``truth`` (the ground-truth render of that head)."""
        self.sigma = min(np.arange(0.0, 3.01, 0.25), key=lambda sigma: float(
            ((blur(truth, sigma) - rendered).abs() * self.area).sum()))
        self.templates = blur(self.renders, self.sigma)
        return self.sigma

    def __call__(self, image) -> tuple[float, float]:
        """(alpha, jaw) of an image (H, W, 3) uint8 or (3, H, W) float in [0, 1]."""
        cost = ((self.templates - as_float(image)).abs() * self.area).sum((2, 3, 4)).numpy()  # (A, J)
        row, column = np.unravel_index(int(cost.argmin()), cost.shape)
        return refine(cost[:, column], row, ALPHAS), refine(cost[row], column, JAWS)


def as_float(image) -> torch.Tensor:
    """(3, H, W) float in [0, 1] of an image (H, W, 3) uint8 or (3, H, W) float."""
    if isinstance(image, np.ndarray):
        return torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    return image


def refine(cost: np.ndarray, index: int, values: np.ndarray) -> float:
    """The minimum of the parabola through the grid minimum and its neighbours (the grid value at an edge)."""
    if 0 < index < len(values) - 1:
        left, middle, right = cost[index - 1: index + 2]
        curvature = left - 2 * middle + right
        if curvature > 0:
            return float(values[index] + 0.5 * (left - right) / curvature * (values[1] - values[0]))
    return float(values[index])


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)


class Heads:
    """The trained model's pipeline, the scene, the measurer and the three heads of every test."""

    def __init__(self):
        from dagan.inference import DaGANPipeline

        self.scene = Scene()
        self.pipeline = DaGANPipeline(train_tiny_model(self.scene), device="cpu", batch_size=1)
        self.measure = Measurer(self.scene)
        self.source_pose, self.driver_pose = path_pose(0.0), path_pose(1.0)
        self.source = to_uint8(self.scene.render(self.source_pose, SOURCE_JAW).image)
        self.anchor = to_uint8(self.scene.render(self.source_pose, 0.0).image)  # the driver at rest
        self.driver = to_uint8(self.scene.render(self.driver_pose, DRIVER_JAW).image)
        self.state = self.pipeline.prepare_source(self.source)
        self.itself = self.pipeline.generate(self.state, self.state.keypoints).prediction[0]  # the source as rendered
        self.measure.calibrate(self.itself, self.scene.render(self.source_pose, SOURCE_JAW).image)
        self.pixels_per_alpha = pose_pixels(self.scene)

    def animate(self, control: MotionControl, driver: np.ndarray | None = None, regions=None) -> np.ndarray:
        """The frame (H, W, 3) uint8 of the source driven by ``driver`` (default: the driver head) relative to the
        anchor, through the motion edit of ``control``."""
        frames = self.pipeline.animate(self.source, [self.driver if driver is None else driver],
                                       driving_initial=self.anchor, edit=MotionEditor(control, regions))
        return next(iter(frames)).frame


@pytest.fixture(scope="module")
def trained() -> Heads:
    print(f"training seed {SEED} (DAGAN_MOTION_RENDER_SEED)")
    return Heads()


# The measurer.
def test_the_measurer_recovers_known_pose_and_jaw_and_the_model_reconstructs_them(trained):
    """Ground-truth renders between the grid points (blurred as the model renders) give back their pose and jaw;
    the model's plain reconstruction of a driver (relative motion, no edit) is measured at the driver's pose."""
    measure, scene = trained.measure, trained.scene
    print(f"blur sigma {measure.sigma} px; 1 alpha = {trained.pixels_per_alpha:.2f} px")
    for alpha, jaw in ((0.5, 0.45), (0.1, 0.9), (0.9, 0.1), (1.0, 0.7)):
        found_alpha, found_jaw = measure(blur(scene.render(path_pose(alpha), jaw).image, measure.sigma))
        print(f"truth alpha {alpha} jaw {jaw}: measured {found_alpha:.3f} {found_jaw:.3f}")
        assert abs(found_alpha - alpha) * trained.pixels_per_alpha < 0.3 and abs(found_jaw - jaw) < 0.08
    for alpha, jaw in ((0.5, 0.2), (1.0, 0.2), (0.0, 0.6), (1.0, 1.0)):
        driver = to_uint8(scene.render(path_pose(alpha), jaw).image)
        found_alpha, found_jaw = measure(trained.animate(MotionControl(), driver))
        print(f"reconstruction of alpha {alpha} jaw {jaw}: measured {found_alpha:.3f} {found_jaw:.3f}")
        # Measured 1.0-2.1 px short of the driver's pose (the tiny model under-moves), of a 9.8 px move.
        assert abs(found_alpha - alpha) * trained.pixels_per_alpha < 3.0
    print("the source as the model renders it:", trained.measure(trained.itself))


# Pose and expression apart.
def test_pose_only_follows_the_drivers_head_and_keeps_the_mouth(trained):
    """The output sits at the driver's pose (alpha 1) and its mouth is as open as the model's rendering of the
    wanted head (the source's mouth at the driver's pose: a plain reconstruction driven by the driver's head with
    the anchor's mouth, so that the relative motion carries the pose alone), while ``--animate all`` opens it
    measurably more: pose only does not pass the driver's open mouth through."""
    measure = trained.measure
    alpha, jaw = measure(trained.animate(MotionControl(animate="pose")))
    wanted = to_uint8(trained.scene.render(trained.driver_pose, 0.0).image)  # the anchor's jaw (0)
    wanted_alpha, wanted_jaw = measure(trained.animate(MotionControl(), wanted))
    _, full_jaw = measure(trained.animate(MotionControl()))
    print(f"pose only: alpha {alpha:.3f} ({abs(alpha - 1) * trained.pixels_per_alpha:.2f} px from the driver's "
          f"pose, {abs(alpha - wanted_alpha) * trained.pixels_per_alpha:.2f} px from the model's rendering of the "
          f"wanted head), jaw {jaw:.3f}; the wanted head: jaw {wanted_jaw:.3f}; --animate all: jaw {full_jaw:.3f}")
    assert abs(alpha - wanted_alpha) * trained.pixels_per_alpha < 1.0
    assert abs(alpha - 1.0) * trained.pixels_per_alpha < 2.0
    assert abs(jaw - wanted_jaw) < 0.1  # 10% of the jaw's range (0 closed, 1 wide open)
    assert full_jaw - jaw > 0.2  # the driver's mouth (jaw 1.0) against the source's (0.2)


def test_expression_only_keeps_the_head_and_follows_the_mouth(trained):
    """The output stays at the source's pose (as the model renders the source) and its mouth opens."""
    measure = trained.measure
    source_alpha, source_jaw = measure(trained.itself)
    alpha, jaw = measure(trained.animate(MotionControl(animate="expression")))
    shift = abs(alpha - source_alpha) * trained.pixels_per_alpha
    print(f"expression only: alpha {alpha:.3f} ({shift:.2f} px from the source's pose; the driver's is "
          f"{trained.pixels_per_alpha:.2f} px away), jaw {jaw:.3f} (the source's {source_jaw:.3f})")
    assert shift < 1.0
    assert jaw - source_jaw > 0.3


def test_expression_only_moves_the_nose_keypoint_by_its_parallax(trained):
    """The pose split is a 2-D affine map: under a 15 degree turn the nose tip (in front of the face) moves further
    than that map explains, so its parallax counts as expression and moves the nose keypoint by some pixels, while
    the eyes and brows stay within 1 px (and the rendered head within 1 px, the test above)."""
    pipeline = trained.pipeline
    driving, _ = pipeline.driving_keypoints(pipeline.to_tensor([trained.driver]))
    anchor, _ = pipeline.driving_keypoints(pipeline.to_tensor([trained.anchor]))
    moved, _ = pipeline.transfer(trained.state, driving, anchor, edit=MotionEditor(MotionControl(animate="expression")))
    offsets = ((moved.value[0, RIGID] - trained.state.keypoints.value[0, RIGID]).norm(dim=-1) * SIZE / 2).numpy()
    print("rigid keypoint offsets (px), nose, eyes, brows:", np.round(offsets, 2))
    assert offsets[0] > 1.5 and offsets[1:].max() < 1.0


# Regions.
def test_mouth_region_scale_zero_keeps_the_mouth_and_one_and_a_half_opens_it_more(trained):
    measure, driver = trained.measure, to_uint8(trained.scene.render(trained.driver_pose, SCALED_JAW).image)
    _, source_jaw = measure(trained.itself)
    jaws = {scale: measure(trained.animate(MotionControl(animate="expression", region_scales=(("mouth", scale),)),
                                           driver, KEYPOINT_REGIONS))[1] for scale in (0.0, 1.0, 1.5)}
    print(f"mouth region scale 0, 1, 1.5: jaw {jaws[0.0]:.3f} {jaws[1.0]:.3f} {jaws[1.5]:.3f} "
          f"(the source's {source_jaw:.3f})")
    assert abs(jaws[0.0] - source_jaw) < 0.1
    assert jaws[1.5] - jaws[1.0] > 0.1
    assert jaws[1.5] - source_jaw > 0.25


# Openness.
def test_mouth_openness_targets_are_reached_on_the_rendered_head(trained):
    """The openness solver (dagan.motion.openness) with the synthetic head's measurer in place of dlib's 68
    landmarks (which finds no face at 64 px): the source's keypoints get their regions from the head's 68
    landmarks, the mouth region is opened or closed, and the rendered opening reaches each target."""
    scene, pipeline, state = trained.scene, trained.pipeline, trained.state
    landmarks = landmarks_68(scene, trained.source_pose, SOURCE_JAW)
    regions = assign_regions(state.keypoints.value[0].double().numpy(), landmarks)
    assert regions.tolist() == KEYPOINT_REGIONS.tolist()
    face = SourceFace(landmarks, regions)

    def measure(amounts: dict[str, float]) -> dict[str, float]:
        frame = pipeline.generate(state, opened_keypoints(state, face, amounts)).prediction[0]
        return {"mouth": jaw_openness(trained.measure(frame)[1])}

    for target in OPENNESS_TARGETS:
        result = solve_openness(measure, {"mouth": target}, tolerance={"mouth": OPENNESS_TOLERANCE})
        print(result.describe(), f"{result.steps} renders")
        assert result.reached["mouth"] and abs(result.achieved["mouth"] - target) <= OPENNESS_TOLERANCE
        if abs(result.start["mouth"] - target) > OPENNESS_TOLERANCE:  # the source's own opening was off target
            assert abs(result.amounts["mouth"]) > 0.05

