"""512-pixel models grown from the 256 release (``model_params.highres_levels``): the released weights load
unchanged, the first grown output is the released output upsampled, and the tiny 512 structure trains both stages,
resumes bit-exactly, exports to ONNX and animates."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import PARITY_DIR, REPO_ROOT, config_path, write_parity_release
from dagan.checkpoint import export_official_depth, read_file, read_official_checkpoint
from dagan.cli.train import main as train_main
from dagan.config import ConfigError, load_config
from dagan.geometry import halve, normalize_keypoints
from dagan.inference import DaGANPipeline
from dagan.model import DaGAN
from dagan.runtime.export import export_onnx

# The grown model's first output against the released model's output on the grown model's inputs halved (2x2 box
# average, what the grown model hands its released networks), upsampled bilinearly: measured 0 (bit-exact) on the
# parity fixture's weights and images, both for 512 inputs made by nearest upsampling (whose halves are the
# fixture's 256 images themselves) and by bilinear upsampling. The bound leaves room for other CPUs' float rounding.
GROWTH_TOLERANCE = 1e-5
SAMPLES = str(REPO_ROOT / "data" / "samples")
GROWN = ["model_params.highres_levels=1", "dataset_params.frame_shape=[512,512,3]",
         "model_params.discriminator_params.scales=[1,0.5]"]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_parity_release(tmp_path_factory.mktemp("release"))


def animate(model: DaGAN, source: torch.Tensor, driving_initial: torch.Tensor, driving: torch.Tensor) -> torch.Tensor:
    """The demo's relative animation of ``source`` by ``driving`` (all (1, 3, H, W)) -> prediction."""
    disparity = {name: model.depth(image) for name, image in
                 (("source", source), ("initial", driving_initial), ("driving", driving))}
    kp_source = model.keypoints(source, disparity["source"])
    kp_norm = normalize_keypoints(kp_source, model.keypoints(driving, disparity["driving"]),
                                  model.keypoints(driving_initial, disparity["initial"]), adapt_movement_scale_=True,
                                  use_relative_movement=True, use_relative_jacobian=True)
    return model.generate(source, kp_source, kp_norm, source_depth=disparity["source"]).prediction


@torch.no_grad()
def test_growing_from_the_release_keeps_its_keys_and_starts_at_its_upsampled_output(release):
    depth_dir = os.path.dirname(release["encoder"])
    released = DaGAN.from_official(release["checkpoint"], depth_dir, config=str(PARITY_DIR / "model.yaml"))
    grown = DaGAN.from_official(release["checkpoint"], depth_dir,
                                config=load_config(str(PARITY_DIR / "model.yaml"), GROWN))
    official = read_official_checkpoint(release["checkpoint"])
    for name in ("generator", "kp_detector"):  # every released key, unchanged
        own = getattr(grown, name).state_dict()
        for key, value in official[name].items():
            assert torch.equal(own[key], value), f"{name}.{key}"
    own = grown.discriminator.state_dict()
    for key, value in official["discriminator"].items():  # the released discriminator sees released-size images
        assert torch.equal(own[key.replace("discs.1.", "discs.0-5.")], value), key
    new = {key.split(".")[0] for key in grown.generator.state_dict() if key not in official["generator"]}
    assert new == {"highres"}
    inputs = np.load(PARITY_DIR / "inputs.npz")
    images = [torch.from_numpy(inputs[name]) for name in ("source", "driving_initial", "driving")]
    for upsample in ("nearest", "bilinear"):
        large = [F.interpolate(image, scale_factor=2, mode=upsample) for image in images]
        released_output = animate(released, *[halve(image, 1) for image in large])
        reference = F.interpolate(released_output, scale_factor=2, mode="bilinear", align_corners=False)
        difference = (animate(grown, *large) - reference).abs()
        print(f"{upsample} 512 inputs: max |grown - upsampled released| {float(difference.max()):.2e}")
        assert float(difference.max()) <= GROWTH_TOLERANCE, upsample
        if upsample == "nearest":  # then the reference is the released output on the fixture's own images
            assert all(torch.equal(halve(image, 1), small) for image, small in zip(large, images))
    grown.generator.highres.to_image[0].bias.data.fill_(0.1)  # the new level is wired in
    assert float((animate(grown, *large) - reference).abs().mean()) > 0.05


def test_train_init_grows_the_release(release):
    """``train.py --init`` (dagan.training.finetune) grows the release the same way, and says what is new."""
    from dagan.training.finetune import initialize_from
    model = DaGAN(load_config(str(PARITY_DIR / "model.yaml"), GROWN))
    report = initialize_from(model, release["checkpoint"], "gan")
    assert report.loaded == ["generator", "kp_detector", "discriminator"]
    assert report.new == ["generator.highres", "discriminator.discs.1"]
    assert "grown levels' image residuals at 0" in report.line()
    official = read_official_checkpoint(release["checkpoint"])
    for key, value in official["generator"].items():
        assert torch.equal(model.generator.state_dict()[key], value), key
    assert float(model.generator.highres.to_image[0].weight.detach().abs().max()) == 0


def test_grown_frame_shape_must_divide(tmp_path):
    with pytest.raises(ConfigError, match="dataset_params.frame_shape"):
        load_config(config_path("tiny-512.yaml"), ["dataset_params.frame_shape=[100,100,3]"])


@pytest.fixture(scope="module")
def depth_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("depth")
    export_official_depth(DaGAN(load_config(config_path("tiny-512.yaml"))), folder)
    return str(folder)


def run_train(log_dir, overrides, *extra: str) -> int:
    arguments = ["--config", config_path("tiny-512.yaml"), "--log_dir", str(log_dir), *extra]
    for override in ["train_params.vgg19_weights=random", "train_params.num_workers=0",
                     f"dataset_params.root_dir={SAMPLES}", "train_params.log_every=1", "train_params.image_every=2",
                     *overrides]:
        arguments += ["--set", override]
    return train_main(arguments)


@pytest.mark.slow
def test_tiny_512_trains_both_stages_resumes_exactly_exports_and_animates(tmp_path, depth_dir, capsys):
    depth = ["train_params.stage=depth", "depth_train_params.num_steps=2", "depth_train_params.batch_size=2",
             "train_params.checkpoint_every=2"]
    assert run_train(tmp_path / "depth", depth) == 0
    assert read_file(tmp_path / "depth" / "depth" / "encoder.pth")["encoder.conv1.weight"].shape[0] == 64
    gan = [f"model_params.depth_params.checkpoint_dir={depth_dir}", "train_params.checkpoint_every=1"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_train(straight, [*gan, "train_params.num_steps=2"]) == 0
    assert run_train(resumed, [*gan, "train_params.num_steps=1"]) == 0
    assert run_train(resumed, [*gan, "train_params.num_steps=2"], "--resume", "auto") == 0
    a, b = (read_file(run / "checkpoints" / "00000002.pt") for run in (straight, resumed))
    for network in ("generator", "kp_detector", "discriminator"):
        for key, value in a["networks"][network].items():
            assert torch.equal(value, b["networks"][network][key]), f"{network}.{key}"
    assert any(key.startswith("highres.") for key in a["networks"]["generator"])
    assert set(a["networks"]["discriminator"]) >= {"discs.1.conv.weight", "discs.0-5.conv.weight"}

    model = DaGAN.from_checkpoint(straight / "checkpoints" / "00000002.pt")
    export_onnx(model, tmp_path / "export")
    random = np.random.default_rng(0)
    source = random.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    driving = [random.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(3)]
    frames = {"torch": [frame.frame for frame in DaGANPipeline(model, device="cpu").animate(source, driving)]}
    for backend in ("onnxruntime", "openvino"):
        pipeline = DaGANPipeline.from_exported(str(tmp_path / "export"), backend)
        frames[backend] = [frame.frame for frame in pipeline.animate(source, driving)]
    assert frames["torch"][0].shape == (128, 128, 3)
    for backend in ("onnxruntime", "openvino"):
        for ours, theirs in zip(frames[backend], frames["torch"], strict=True):
            assert np.abs(ours.astype(int) - theirs).max() <= 2, backend
