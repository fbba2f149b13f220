"""Motion you can direct (dagan.motion): head pose and expression apart, region scales, openness targets, image
driving and motion files.

Keypoint level, exactly: synthetic heads with known pose and jaw opening (``dagan.data.synthetic.talking``'s
ground-truth keypoints: lips, chin, mouth corners, nose, eyes, brows and jaw, projected by a real camera) are
edited and transferred as DaGAN's relative motion does, and compared with the keypoints of the head the edit
asks for. Frame level: scales of 1 give today's frames bit for bit on the parity fixture, a motion file replays a
run's frames bit for bit, and the flags work end to end on the tiny model.
"""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from conftest import NEEDS_FACES, PARITY_DIR, REPO_ROOT, write_parity_release
from dagan.data.synthetic import talking
from dagan.geometry import Keypoints, normalize_keypoints
from dagan.motion import (REGIONS, MotionControl, MotionEditor, MotionFileError, MotionRecorder, assign_regions,
                          edit_keypoints, load_motion, parse_region_scales, save_motion, solve_openness)
from dagan.motion.regions import opening

SIZE = 256  # pixels of the synthetic camera: 1 px = 2 / 255 in keypoint coordinates
PX = (SIZE - 1) / 2.0
INTRINSICS = talking.make_intrinsics(SIZE, torch.Generator().manual_seed(3)).numpy()
NUM_KP = 12  # talking.LANDMARKS: 0 lower lip, 1 chin, 2 upper lip, 3-4 mouth corners, 5 nose, 6-7 eyes, 8-9 brows,
# 10-11 jaw
RIGID = [6, 7, 8, 9]  # eyes and brows: they move with the head only
SYNTHETIC_REGIONS = np.array([REGIONS.index(name) for name in (
    "mouth", "mouth", "mouth", "mouth", "mouth", "rest", "eyes", "eyes", "brows", "brows", "mouth", "mouth")])


def head(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0, mouth: float = 0.0, shift: float = 0.0) -> Keypoints:
    """Ground-truth keypoints (1, 12, ...) of the synthetic head at a pose (degrees) with a jaw opening in [0, 1]."""
    angles = np.array([[yaw, pitch, roll]], np.float32)
    translation = np.array([[shift, 0.0, talking.HEAD_DISTANCE]], np.float32)
    value, jacobian = talking.project_landmarks(angles, translation, np.array([mouth], np.float32), INTRINSICS, SIZE,
                                                NUM_KP)
    return Keypoints(torch.from_numpy(value), torch.from_numpy(jacobian))


def mouth_opening(keypoints: Keypoints) -> float:
    """Lip gap over the eye distance (scale free)."""
    value = keypoints.value[0].double()
    return float((value[0] - value[2]).norm() / (value[6] - value[7]).norm())


def rigid_offset_px(first: Keypoints, second: Keypoints) -> float:
    return float((first.value[0, RIGID] - second.value[0, RIGID]).abs().max() * PX)


def transfer(source: Keypoints, driving: Keypoints, anchor: Keypoints, control: MotionControl,
             regions=None) -> Keypoints:
    edited = MotionEditor(control, regions)(driving, anchor, 1.0)
    return normalize_keypoints(source, edited, anchor, use_relative_movement=True, use_relative_jacobian=True,
                               movement_scale=1.0)


SOURCE, ANCHOR = head(mouth=0.2), head(mouth=0.0)  # the portrait (lips parted a little) and the driver at rest
POSE, DRIVER_MOUTH = (10.0, 5.0, 5.0), 1.0
DRIVER = head(*POSE, mouth=DRIVER_MOUTH, shift=0.03)


# Pose and expression apart (keypoint level, exact geometry).
def test_pose_only_follows_the_head_and_keeps_the_mouth():
    output = transfer(SOURCE, DRIVER, ANCHOR, MotionControl(animate="pose"))
    wanted = head(*POSE, mouth=0.2, shift=0.03)  # the portrait's head at the driver's pose, its own mouth
    assert rigid_offset_px(output, wanted) < 1.0
    assert rigid_offset_px(output, SOURCE) > 10.0  # it did move
    assert abs(mouth_opening(output) / mouth_opening(SOURCE) - 1) < 0.10


def test_expression_only_keeps_the_head_and_follows_the_mouth():
    output = transfer(SOURCE, DRIVER, ANCHOR, MotionControl(animate="expression"))
    assert rigid_offset_px(output, SOURCE) < 1.0
    everything = transfer(SOURCE, DRIVER, ANCHOR, MotionControl())
    assert mouth_opening(output) > 1.8 * mouth_opening(SOURCE)
    assert abs(mouth_opening(output) / mouth_opening(everything) - 1) < 0.10  # as open as with the full motion


def test_scales_zero_keep_the_source_and_above_one_exaggerate():
    still = transfer(SOURCE, DRIVER, ANCHOR, MotionControl(pose_scale=0.0, expression_scale=0.0))
    assert float((still.value - SOURCE.value).abs().max() * PX) < 1e-3
    assert torch.allclose(still.jacobian, SOURCE.jacobian, atol=1e-5)
    openings = [mouth_opening(transfer(SOURCE, DRIVER, ANCHOR, MotionControl(animate="expression",
                                                                             expression_scale=scale)))
                for scale in (0.5, 1.0, 1.5)]
    assert openings[0] < openings[1] < openings[2]
    half = transfer(SOURCE, DRIVER, ANCHOR, MotionControl(pose_scale=0.5, expression_scale=0.0))
    full = transfer(SOURCE, DRIVER, ANCHOR, MotionControl(pose_scale=1.0, expression_scale=0.0))
    assert float((half.value - SOURCE.value).norm()) == pytest.approx(0.5 * float((full.value - SOURCE.value).norm()),
                                                                      rel=0.05)


def test_identity_control_passes_the_keypoints_through_and_the_composition_is_exact():
    assert MotionControl().is_identity and MotionControl(animate="all", pose_scale=1.0).is_identity
    assert MotionEditor(MotionControl())(DRIVER, ANCHOR, 1.3) is DRIVER
    composed = edit_keypoints(DRIVER, ANCHOR, MotionControl())  # the split and its inverse, without the shortcut
    assert torch.allclose(composed.value, DRIVER.value, atol=1e-6)
    assert torch.allclose(composed.jacobian, DRIVER.jacobian, atol=1e-5)


# Regions.
def test_mouth_region_scale_zero_keeps_the_mouth_and_more_opens_it_more():
    def opened(scales: str) -> float:
        control = MotionControl(animate="expression", region_scales=parse_region_scales(scales))
        return mouth_opening(transfer(SOURCE, DRIVER, ANCHOR, control, SYNTHETIC_REGIONS))

    assert abs(opened("mouth=0") / mouth_opening(SOURCE) - 1) < 0.10
    assert opened("mouth=1.5") > opened("mouth=1.0") > 1.5 * mouth_opening(SOURCE)
    still = transfer(SOURCE, DRIVER, ANCHOR, MotionControl(still=("mouth",)), SYNTHETIC_REGIONS)
    assert abs(mouth_opening(still) / mouth_opening(SOURCE) - 1) < 0.10
    assert rigid_offset_px(still, SOURCE) > 10.0  # the head still moves


@pytest.fixture(scope="module")
def face_template() -> np.ndarray:
    """68 landmarks (pixels) of the real face in data/samples/source.png, found once by dlib (needs [faces])."""
    pytest.importorskip("dlib", reason=NEEDS_FACES)
    from dagan.faces import get_face_analyzer
    from dagan.io import read_image_uint8

    return get_face_analyzer("dlib").landmarks(read_image_uint8(REPO_ROOT / "data" / "samples" / "source.png"))


def test_each_keypoint_gets_the_region_of_its_nearest_landmark(face_template):
    landmarks = face_template
    keypoints = np.stack([landmarks[37] + 1, landmarks[19], landmarks[57], landmarks[8], landmarks[30],
                          landmarks[0], np.array([5.0, 5.0])])  # eye, brow, lip, chin, nose, jaw line, corner
    names = [REGIONS[index] for index in assign_regions(keypoints, landmarks)]
    assert names == ["eyes", "brows", "mouth", "mouth", "rest", "rest", "rest"]


def test_openness_of_a_real_face_and_opening_a_region(face_template):
    from dagan.motion.regions import MIN_STRETCH, face_down, openness

    landmarks = face_template
    measured = openness(landmarks)
    assert 0.2 < measured["eyes"] < 0.45 and 0.0 <= measured["mouth"] < 0.3
    keypoints = np.stack([landmarks[57], landmarks[8], landmarks[51], landmarks[37], landmarks[30]])
    regions = assign_regions(keypoints, landmarks)
    moved = opening(keypoints, landmarks, regions, {"mouth": 0.5, "eyes": -1.0})
    down = face_down(landmarks)
    assert moved.mask.tolist() == [True, True, True, True, False]
    assert moved.displacement[1] @ down > moved.displacement[0] @ down > 0  # the chin drops more than the lip
    assert np.allclose(moved.displacement[4], 0)  # the nose is no region of these targets
    shut = keypoints[3] + moved.displacement[3]  # -1: the upper lid comes down onto the lower lid's line
    assert abs((shut - landmarks[[40, 41]].mean(0)) @ down) < 1e-9
    # ... while its Jacobian keeps MIN_STRETCH of its vertical extent: DaGAN inverts it (0 gave NaN frames).
    assert np.allclose(moved.stretch[3] @ down, MIN_STRETCH * down) and abs(np.linalg.det(moved.stretch[3])) > 0.05


def test_openness_solver_reaches_targets_and_reports_what_it_cannot():
    def measure(amounts):
        return {"mouth": 0.08 + 0.35 * amounts["mouth"] - 0.05 * amounts["mouth"] ** 2,
                "eyes": 0.30 * (1 + amounts["eyes"])}

    result = solve_openness(measure, {"mouth": 0.45, "eyes": 0.12})
    assert all(result.reached.values()) and result.steps <= 8
    assert abs(result.achieved["mouth"] - 0.45) <= 0.05 and abs(result.achieved["eyes"] - 0.12) <= 0.03
    flat = solve_openness(lambda amounts: {"eyes": 0.3}, {"eyes": 0.1})
    assert not flat.reached["eyes"] and "NOT reached" in flat.describe()


@pytest.mark.parametrize("arguments, message", [
    ({"animate": "face"}, "--animate must be one of"), ({"pose_scale": -1.0}, "--pose_scale must be in"),
    ({"eye_openness": 2.0}, "--eye_openness must be in"), ({"still": ("nose",)}, "unknown region")])
def test_bad_motion_settings_are_one_clear_line(arguments, message):
    with pytest.raises(ValueError, match=message):
        MotionControl(**arguments)
    with pytest.raises(ValueError, match="REGION=SCALE"):
        parse_region_scales("lips=2")


# Frames: bit-exact identity on the parity fixture.
@pytest.fixture(scope="module")
def parity_pipeline(tmp_path_factory):
    from dagan.inference import DaGANPipeline
    from dagan.model import load_official

    paths = write_parity_release(tmp_path_factory.mktemp("release"))
    model = load_official(paths["checkpoint"], os.path.dirname(paths["encoder"]), str(PARITY_DIR / "model.yaml"))
    return DaGANPipeline(model, device="cpu", batch_size=2)


def test_scales_of_one_give_todays_frames_bit_for_bit(parity_pipeline):
    inputs = np.load(PARITY_DIR / "inputs.npz")
    driving = [inputs["driving_initial_uint8"], inputs["driving_uint8"]]
    source = inputs["source_uint8"]
    today = list(parity_pipeline.animate(source, driving, relative=True, adapt_scale=True))
    for control in (MotionControl(animate="all", pose_scale=1.0, expression_scale=1.0,
                                  region_scales=(("mouth", 1.0),)),):  # the default MotionControl() is the same
        recorder = MotionRecorder(25.0)
        edited = list(parity_pipeline.animate(source, driving, relative=True, adapt_scale=True,
                                              edit=MotionEditor(control, recorder=recorder)))
        for before, after in zip(today, edited, strict=True):
            assert np.array_equal(before.frame, after.frame)
            assert torch.equal(before.keypoints.value, after.keypoints.value)
            assert torch.equal(before.keypoints.jacobian, after.keypoints.jacobian)
    # The frame still matches the reference implementation's prediction (uint8 rounding).
    expected = np.load(PARITY_DIR / "expected.npz")
    reference = np.round(expected["generator.prediction"][0].transpose(1, 2, 0) * 255)
    assert np.abs(today[1].frame.astype(float) - reference).max() <= 1
    # A recorded motion replays the same frames bit for bit.
    replayed = list(parity_pipeline.animate_keypoints(source, recorder.motion().batches(2), recorder.motion().anchor))
    assert all(np.array_equal(a.frame, b.frame) for a, b in zip(today, replayed, strict=True))
    # Other settings do change the frames.
    expression = list(parity_pipeline.animate(source, driving, edit=MotionEditor(MotionControl(animate="expression"))))
    assert not np.array_equal(expression[1].frame, today[1].frame)


# Motion files.
def test_motion_file_round_trip_and_refusals(tmp_path):
    motion = MotionRecorder(30.0, "video")
    motion(DRIVER, ANCHOR)
    motion(head(mouth=0.5), ANCHOR)
    saved = motion.save(tmp_path / "motion.npz")
    loaded = load_motion(tmp_path / "motion.npz", num_kp=NUM_KP)
    assert loaded.fps == 30.0 and loaded.num_frames == 2 and loaded.driver == "video"
    assert torch.equal(loaded.keypoints.value, saved.keypoints.value)
    assert torch.equal(loaded.anchor.jacobian, saved.anchor.jacobian)
    assert loaded.pose.shape == (2, 6) and loaded.local.shape == (2, 6 * NUM_KP)
    with np.load(tmp_path / "motion.npz", allow_pickle=False) as archive:
        assert {"keypoints", "jacobians", "anchor", "anchor_jacobians", "pose", "local", "fps"} <= set(archive.files)

    with pytest.raises(MotionFileError, match="holds 12 keypoints per frame but the model has 15"):
        load_motion(tmp_path / "motion.npz", num_kp=15)
    pickled = tmp_path / "pickled.npz"
    pickled.write_bytes(pickle.dumps({"keypoints": np.zeros((2, 12, 2))}))
    with pytest.raises(MotionFileError, match="pickled data"):
        load_motion(pickled)
    objects = tmp_path / "objects.npz"
    np.savez(objects, keypoints=np.array([{"a": 1}], dtype=object), anchor=np.zeros((1, 12, 2)), fps=25.0)
    with pytest.raises(MotionFileError, match="pickled data"):
        load_motion(objects)
    truncated = tmp_path / "truncated.npz"
    data = (tmp_path / "motion.npz").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(MotionFileError, match="truncated or damaged"):
        load_motion(truncated)
    misshapen = tmp_path / "misshapen.npz"
    save_motion(misshapen, saved._replace(pose=torch.zeros(3, 6)))
    with pytest.raises(MotionFileError, match="pose must have shape"):
        load_motion(misshapen)
    with pytest.raises(MotionFileError, match="does not exist"):
        load_motion(tmp_path / "nothing.npz")


# The command line (tiny model, whole-image mode).
@pytest.fixture(scope="module")
def media(tmp_path_factory):
    from dagan.io import write_png

    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:64, 0:64]
    write_png(root / "source.png", np.stack([x * 4, y * 4, (x + y) * 2], -1).astype(np.uint8))
    (root / "driving").mkdir()
    for index in range(5):
        write_png(root / "driving" / f"{index}.png", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    write_png(root / "photo.png", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return root


def demo(checkpoint, media, *arguments) -> int:
    from dagan.cli.demo import main

    return main(["--checkpoint", checkpoint, "--crop", "none", "--cpu", "--source_image", str(media / "source.png"),
                 "--relative", "--adapt_scale", "--batch_size", "2", *map(str, arguments)])


def frames_of(folder) -> list[np.ndarray]:
    from dagan.io import read_image_uint8

    return [read_image_uint8(path) for path in sorted(folder.glob("*.png"))]


def test_demo_flags_scales_of_one_and_a_motion_file_round_trip(tiny_checkpoint, media, tmp_path, capsys):
    driving = media / "driving"
    assert demo(tiny_checkpoint, media, "--driving_video", driving, "--result_video", f"{tmp_path / 'today'}/") == 0
    assert demo(tiny_checkpoint, media, "--driving_video", driving, "--animate", "all", "--pose_scale", "1",
                "--expression_scale", "1", "--save_motion", tmp_path / "motion.npz",
                "--result_video", f"{tmp_path / 'ones'}/") == 0
    today, ones = frames_of(tmp_path / "today"), frames_of(tmp_path / "ones")
    assert len(today) == 5 and all(np.array_equal(a, b) for a, b in zip(today, ones, strict=True))
    # Replayed without the video: the same frames, bit for bit.
    assert demo(tiny_checkpoint, media, "--driving_motion", tmp_path / "motion.npz",
                "--result_video", f"{tmp_path / 'replayed'}/") == 0
    assert all(np.array_equal(a, b) for a, b in zip(today, frames_of(tmp_path / "replayed"), strict=True))
    motion = load_motion(tmp_path / "motion.npz", num_kp=5)
    assert motion.num_frames == 5 and motion.driver == "video" and motion.fps == 25.0
    # Expression only and pose only change the frames; a motion file plays with the edits too.
    assert demo(tiny_checkpoint, media, "--driving_motion", tmp_path / "motion.npz", "--animate", "expression",
                "--result_video", f"{tmp_path / 'expression'}/") == 0
    assert not all(np.array_equal(a, b) for a, b in zip(today, frames_of(tmp_path / "expression")))
    # A motion file of another model is refused in one line.
    other = MotionRecorder(25.0)
    seven = Keypoints(head().value[:, :7], head().jacobian[:, :7])
    other(seven, seven)
    other.save(tmp_path / "other.npz")
    capsys.readouterr()
    assert demo(tiny_checkpoint, media, "--driving_motion", tmp_path / "other.npz",
                "--result_video", tmp_path / "other.mp4") == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("error: ") and "holds 7 keypoints per frame but the model has 5" in error[-1]


def test_demo_drives_a_photo_with_a_photo(tiny_checkpoint, media, tmp_path):
    from dagan.io import read_image_uint8

    assert demo(tiny_checkpoint, media, "--driving_image", media / "photo.png", "--save_motion", tmp_path / "m.npz",
                "--result_video", tmp_path / "still.png") == 0
    still = read_image_uint8(tmp_path / "still.png")
    assert still.shape == (64, 64, 3)
    assert load_motion(tmp_path / "m.npz").driver == "image"
    # Driven by itself, a portrait stays as the model renders it at its own keypoints.
    assert demo(tiny_checkpoint, media, "--driving_image", media / "source.png",
                "--result_video", tmp_path / "self.png") == 0
    from dagan.inference import DaGANPipeline

    pipeline = DaGANPipeline.load(tiny_checkpoint, device="cpu")
    state = pipeline.prepare_source(read_image_uint8(media / "source.png"))
    from dagan.inference import to_uint8_batch

    itself = to_uint8_batch(pipeline.generate(state, state.keypoints).prediction)[0]
    assert np.abs(read_image_uint8(tmp_path / "self.png").astype(int) - itself.astype(int)).max() <= 1


@pytest.mark.parametrize("arguments, message", [
    (["--region_scale", "lips=2"], "REGION=SCALE"),
    (["--pose_scale", "5"], "--pose_scale must be in"),
    (["--driving_image", "x.png"], "give one driver"),
    (["--save_motion", "motion.txt"], "--save_motion writes a .npz"),
])
def test_demo_motion_errors_are_one_line(tiny_checkpoint, media, tmp_path, capsys, arguments, message):
    code = demo(tiny_checkpoint, media, "--driving_video", media / "driving", "--result_video", tmp_path / "r.mp4",
                *arguments)
    assert code == 1
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_face_mode_assigns_regions_from_the_source_landmarks_and_shows_them(parity_pipeline, face_template, tmp_path,
                                                                         capsys):
    """The default face mode on a real face: the keypoints' regions come from the source's 68 landmarks, are
    printed, coloured in --visualize, and --still mouth keeps the mouth keypoints at the source's."""
    from dagan.cli.demo import main
    from dagan.io import open_video, read_image_uint8, write_png
    from dagan.motion.regions import REGION_COLORS

    folder = tmp_path / "driving"
    folder.mkdir()
    for index, frame in zip(range(2), open_video(REPO_ROOT / "data" / "samples" / "driving.mp4")):
        write_png(folder / f"{index}.png", frame)
    release = write_parity_release(tmp_path / "release")
    arguments = ["--checkpoint", release["checkpoint"], "--depth_checkpoint", os.path.dirname(release["encoder"]),
                 "--config", str(PARITY_DIR / "model.yaml"), "--cpu", "--batch_size", "2", "--relative",
                 "--adapt_scale", "--source_image", str(REPO_ROOT / "data" / "samples" / "source.png"),
                 "--face_backend", "dlib"]
    assert main([*arguments, "--driving_video", str(folder), "--still", "mouth", "--visualize", "--save_motion",
                 str(tmp_path / "motion.npz"), "--result_video", f"{tmp_path / 'still'}/"]) == 0
    printed = capsys.readouterr().err
    assert "face regions of the 15 keypoints: eyes" in printed
    panels = read_image_uint8(tmp_path / "still_visualization" / "000000.png")
    colours = {tuple(pixel) for pixel in panels.reshape(-1, 3)}
    assert sum(tuple(colour) in colours for colour in REGION_COLORS.values()) >= 2
    # The motion file replays the same whole pictures without the driving video.
    assert main([*arguments, "--driving_motion", str(tmp_path / "motion.npz"), "--still", "mouth",
                 "--result_video", f"{tmp_path / 'replayed'}/"]) == 0
    first, replayed = frames_of(tmp_path / "still"), frames_of(tmp_path / "replayed")
    assert len(first) == 2 and all(np.array_equal(a, b) for a, b in zip(first, replayed, strict=True))
    # A photo drives the photo: one still picture.
    assert main([*arguments, "--driving_image", str(folder / "1.png"), "--result_video",
                 str(tmp_path / "photo.jpg")]) == 0
    assert read_image_uint8(tmp_path / "photo.jpg").shape == (256, 256, 3)



def test_web_app_motion_sliders_and_one_frame_preview(tiny_checkpoint, short_clip, media, tmp_path):
    pytest.importorskip("gradio")
    from dagan.app import AnimationRequest, Animator, AppSettings

    animator = Animator(AppSettings(checkpoint=tiny_checkpoint, search_root=str(tmp_path), device="cpu",
                                    work_dir=str(tmp_path / "work")))
    base = dict(source_image=str(media / "source.png"), driving_video=str(short_clip), checkpoint=tiny_checkpoint,
                device="cpu", crop="none", preview_frame=10)
    plain = animator.preview(AnimationRequest(**base))
    assert plain.frame.shape == (64, 64, 3) and plain.index == 10 and plain.status.startswith("Preview of driving")
    expression = animator.preview(AnimationRequest(**base, animate="expression"))
    still = animator.preview(AnimationRequest(**base, pose_scale=0.0, expression_scale=0.0))
    assert not np.array_equal(plain.frame, expression.frame)
    # Scales of 0: the portrait as the model renders it at its own keypoints, whatever the driving frame.
    from dagan.inference import DaGANPipeline, to_uint8_batch

    pipeline = DaGANPipeline.load(tiny_checkpoint, device="cpu")
    state = pipeline.prepare_source(np.asarray(__import__("PIL.Image").Image.open(media / "source.png")))
    itself = to_uint8_batch(pipeline.generate(state, state.keypoints).prediction)[0]
    assert np.abs(still.frame.astype(int) - itself.astype(int)).max() <= 1
    # The preview is the whole video's frame at that index.
    video = animator(AnimationRequest(**base, animate="expression"))
    from dagan.io import open_video

    frame = [f for index, f in enumerate(open_video(video.video)) if index == 10][0]
    assert np.abs(frame.astype(int) - expression.frame.astype(int)).mean() < 3  # H.264 vs the exact frame
