"""Face restoration (dagan.faces.restore): small ONNX graphs with each supported signature, exported here, run
inside the face pipeline on ONNX Runtime and OpenVINO; the frame is unchanged outside the paste-back mask; unknown
graphs are refused in one line; stabilisation lowers the flicker of a synthetic clip."""
from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from conftest import config_path
from dagan.config import load_config
from dagan.faces.alignment import CropBox
from dagan.faces.animation import FaceAnimator
from dagan.faces.paste import PasteBack
from dagan.faces.plans import FacePlan, VideoCrops
from dagan.faces.restore import FaceRestorer, RestorationModel, RestoreError, crop_five_points, relative_flicker
from dagan.inference import DaGANPipeline
from dagan.io import open_video, read_image_uint8, write_png
from dagan.model import DaGAN

RUNTIMES = ("onnxruntime", "openvino")


class SharpeningRestorer(nn.Module):
    """A stand-in restoration model: (1, 3, S, S) in [-1, 1] -> the same, brightened by 0.2 and with its high
    frequencies amplified (as restorers invent detail, this one invents it from the noise too); CodeFormer-like with
    a fidelity input."""

    def __init__(self, gain: float = 3.0):
        super().__init__()
        self.blur = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.gain = gain

    def forward(self, image: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        detail = torch.tanh(self.gain * 8 * (image - self.blur(image))) * 0.25
        if weight is not None:
            detail = detail * (1.0 - weight.float().view(1, 1, 1, 1) * 0.5)
        return (image + 0.2 + detail).clamp(-1, 1)


def export(path, size: int, fidelity: bool = False, channels: int = 3, dynamic: bool = False) -> str:
    image = torch.zeros(1, channels, size, size)
    inputs = (image, torch.zeros(1, dtype=torch.float64)) if fidelity else (image,)
    names = ["input", "weight"] if fidelity else ["input"]
    axes = {"input": {2: "height", 3: "height"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(SharpeningRestorer(), inputs, str(path), input_names=names, output_names=["output"],
                          opset_version=17, dynamo=False, dynamic_axes=axes)
    return str(path)


SIGNATURES = {"gfpgan_1.4": dict(size=512), "gpen_bfr_256": dict(size=256),
              "codeformer": dict(size=512, fidelity=True)}


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("restorers")
    return {name: export(folder / f"{name}.onnx", **settings) for name, settings in SIGNATURES.items()}


@pytest.fixture(scope="module")
def pipeline():
    torch.manual_seed(0)
    return DaGANPipeline(DaGAN(load_config(config_path("tiny.yaml"))).eval(), device="cpu", batch_size=2)


def needs(runtime: str) -> None:
    if importlib.util.find_spec(runtime) is None:
        pytest.skip(f"{runtime} is not installed")


def test_signatures_are_detected(graphs):
    needs("onnxruntime")
    for name, path in graphs.items():
        model = RestorationModel(path)
        assert model.signature.name == name and model.size == SIGNATURES[name]["size"]
        assert (model.fidelity_input is not None) == SIGNATURES[name].get("fidelity", False)
    assert RestorationModel(graphs["gfpgan_1.4"], model="restoreformer_plus_plus").signature.size == 512


def test_unknown_signatures_are_refused_in_one_line(graphs, tmp_path):
    odd = export(tmp_path / "odd.onnx", 300)
    grey = export(tmp_path / "grey.onnx", 512, channels=1)
    for path in (odd, grey):
        with pytest.raises(RestoreError) as error:
            RestorationModel(path)
        assert "\n" not in str(error.value) and "expected one float input (1, 3, S, S)" in str(error.value)
    with pytest.raises(RestoreError, match="does not look like codeformer"):
        RestorationModel(graphs["gfpgan_1.4"], model="codeformer")
    dynamic = export(tmp_path / "dynamic.onnx", 512, dynamic=True)
    with pytest.raises(RestoreError, match="not fixed.*--restore_model"):
        RestorationModel(dynamic)
    assert RestorationModel(dynamic, model="gpen_bfr_1024").size == 1024
    with pytest.raises(RestoreError, match="PyTorch weights.*torchvision"):
        (tmp_path / "GFPGANv1.4.pth").write_bytes(b"weights")
        RestorationModel(str(tmp_path / "GFPGANv1.4.pth"))
    with pytest.raises(RestoreError, match="could not be read as an ONNX model"):
        (tmp_path / "text.onnx").write_text("not a graph")
        RestorationModel(str(tmp_path / "text.onnx"))


def test_crop_points_follow_the_framing():
    points = crop_five_points((256, 256))
    assert points[0, 0] < points[2, 0] < points[1, 0] and points[0, 1] < points[2, 1] < points[3, 1]
    eyes_and_mouth = (points[:2].mean(axis=0) + points[3:].mean(axis=0)) / 2  # the crop centre sits 0.1 side above
    assert np.allclose(eyes_and_mouth, [127.5, 127.5 + 0.1 * 256], atol=0.5)
    assert np.allclose(crop_five_points((512, 512)), 2 * points + 0.5, atol=1e-6)  # pixel centres scale


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_restoration_in_the_pipeline_changes_only_the_masked_face(graphs, pipeline, runtime):
    needs(runtime)
    random = np.random.default_rng(0)
    picture = random.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    transform = CropBox(80.0, 60.0, 70.0).transform(pipeline.image_size)
    faces = [FacePlan(transform, None, None)]
    driving = [random.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    crops = VideoCrops(None, (64, 64))
    plain = [frame.frame for frame in FaceAnimator(pipeline).animate_picture(picture, faces, driving, crops)]
    outside = PasteBack(transform, picture.shape[:2]).mask[..., 0] == 0  # footprint pixels the mask leaves alone
    region = PasteBack(transform, picture.shape[:2]).region
    for name, path in graphs.items():
        model = RestorationModel(path, runtime)
        animator = FaceAnimator(pipeline, restorer=lambda model=model: FaceRestorer(model, pipeline.image_size))
        restored = [frame.frame for frame in animator.animate_picture(picture, faces, driving, crops)]
        for ours, theirs in zip(restored, plain, strict=True):
            x0, y0, x1, y1 = region
            elsewhere = np.ones(picture.shape[:2], bool)
            elsewhere[y0:y1, x0:x1] = outside
            assert np.array_equal(ours[elsewhere], picture[elsewhere]), name  # bit-exact outside the mask
            assert np.array_equal(theirs[elsewhere], picture[elsewhere])
            assert np.abs(ours.astype(int) - theirs).max() > 10, name  # and restored inside it


def synthetic_clip(frames: int = 12, size: int = 64) -> list[np.ndarray]:
    """A still face-like crop with sensor noise (sigma 3 grey levels) and a slow brightness drift."""
    import cv2
    from skimage.data import astronaut

    face = cv2.resize(astronaut()[20:220, 140:340], (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    random = np.random.default_rng(1)
    return [np.clip(face + 0.5 * index + random.normal(0, 3, face.shape), 0, 255).astype(np.uint8)
            for index in range(frames)]


def test_stabilisation_lowers_the_flicker(graphs):
    needs("onnxruntime")
    from dagan.faces.paste import face_mask

    model = RestorationModel(graphs["gpen_bfr_256"])
    clip = synthetic_clip()
    region = face_mask((64, 64)) > 0.5
    figures = {}
    for stabilize in (False, True):
        restorer = FaceRestorer(model, (64, 64), stabilize=stabilize)
        figures[stabilize] = relative_flicker([restorer(frame) for frame in clip], clip, region)
    print(f"relative flicker: per frame {figures[False]:.2f}, stabilised {figures[True]:.2f}")
    assert figures[False] > 1.2  # the stand-in restorer flickers, as real ones do
    assert figures[True] < 0.8 * figures[False]


def test_demo_restores_with_one_flag_and_refuses_bad_models_first(graphs, tiny_checkpoint, tmp_path, capsys):
    needs("onnxruntime")
    from conftest import REPO_ROOT, make_test_clip
    from dagan.cli.demo import main as demo_main

    driving = make_test_clip(tmp_path / "driving.mp4")  # 12 frames
    common = ["--checkpoint", tiny_checkpoint, "--source_image", str(REPO_ROOT / "data" / "samples" / "source.png"),
              "--driving_video", str(driving), "--crop", "none",
              "--relative", "--adapt_scale", "--backend", "torch"]
    assert demo_main([*common, "--restore", str(tmp_path / "missing.onnx"), "--result_video",
                      str(tmp_path / "a.mp4")]) == 1
    errors = capsys.readouterr().err
    assert "missing.onnx' does not exist" in errors and "animating" not in errors
    assert demo_main([*common, "--restore", graphs["gpen_bfr_256"], "--restore_strength", "0.5", "--result_video",
                      str(tmp_path / "frames") + "/"]) == 0
    assert "restoring faces with gpen_bfr_256 (256x256) on onnxruntime, strength 0.5" in capsys.readouterr().err
    assert len(list((tmp_path / "frames").glob("*.png"))) == 12


def test_stabilisation_follows_motion_without_ghosts(graphs):
    """Where the animation moves, the stabilised frame keeps the current frame's restoration (no trail of the
    previous position): a face sliding 4 pixels per frame."""
    needs("onnxruntime")
    from dagan.faces.paste import face_mask

    model = RestorationModel(graphs["gpen_bfr_256"])
    still = synthetic_clip(frames=1, size=96)[0]
    clip = [np.ascontiguousarray(still[16:80, 4 * index:4 * index + 64]) for index in range(8)]
    region = face_mask((64, 64)) > 0.5
    per_frame = FaceRestorer(model, (64, 64), stabilize=False)
    stabilised = FaceRestorer(model, (64, 64), stabilize=True)
    for frame in clip:
        plain, steady = per_frame(frame).astype(np.float32), stabilised(frame).astype(np.float32)
    change = np.abs(plain - clip[-1])[region].mean()
    lag = np.abs(steady - plain)[region].mean()
    print(f"moving clip: restoration change {change:.1f}, stabilised vs per frame {lag:.1f} grey levels")
    assert lag < 0.25 * change


def test_live_mode_restores_each_shown_frame_and_refuses_bad_models_first(graphs, tiny_checkpoint, tmp_path, capsys):
    """scripts/live.py --restore: each frame it shows is the unrestored live frame passed through the same
    FaceRestorer, and a missing model is refused before anything is opened."""
    needs("onnxruntime")
    from conftest import REPO_ROOT
    from dagan.cli.live import main as live_main

    clip = tmp_path / "clip"
    clip.mkdir()
    for index, frame in zip(range(6), open_video(REPO_ROOT / "data" / "samples" / "driving.mp4")):
        write_png(clip / f"{index:04d}.png", frame)
    common = ["--source_image", str(REPO_ROOT / "data" / "samples" / "source.png"), "--checkpoint", tiny_checkpoint,
              "--driving_video", str(clip), "--backend", "torch", "--device", "cpu", "--crop", "none",
              "--driving_crop", "none"]
    assert live_main([*common, "--restore", str(tmp_path / "missing.onnx"), "--record", str(tmp_path / "x") + "/"]) == 1
    assert "missing.onnx' does not exist" in capsys.readouterr().err
    assert live_main([*common, "--record", str(tmp_path / "plain") + "/"]) == 0
    assert live_main([*common, "--restore", graphs["gpen_bfr_256"], "--no-restore_stabilize", "--record",
                      str(tmp_path / "restored") + "/"]) == 0
    assert "restoring the face with gpen_bfr_256" in capsys.readouterr().err
    plain, restored = (distinct([read_image_uint8(path) for path in sorted((tmp_path / name).glob("*.png"))])
                       for name in ("plain", "restored"))  # the recording repeats a shown frame to keep time
    assert len(plain) == len(restored) >= 2
    restorer = FaceRestorer(RestorationModel(graphs["gpen_bfr_256"], "onnxruntime"), plain[0].shape[:2],
                            stabilize=False)
    assert all(np.array_equal(got, restorer(frame)) for got, frame in zip(restored, plain))
    assert all(not np.array_equal(got, frame) for got, frame in zip(restored, plain))


def distinct(frames: list[np.ndarray]) -> list[np.ndarray]:
    """``frames`` without consecutive repeats."""
    return [frame for index, frame in enumerate(frames) if index == 0 or not np.array_equal(frame, frames[index - 1])]
