"""DaGAN++: attention at finer decoder levels (zero-gate equivalence, memory), pose-network uncertainty, fine-tuning
from the official release files, and export of extended models."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
import yaml

from conftest import PARITY_DIR, REPO_ROOT, config_path, load_script, write_parity_release
from dagan.checkpoint import CheckpointError, export_official, load_shared
from dagan.cli.train import main as train_main
from dagan.config import ConfigError, load_config
from dagan.geometry import Keypoints
from dagan.model import DaGAN
from dagan.networks.attention import WindowedDepthAttention
from dagan.networks.generator import build_generator

ALL_LEVELS = "model_params.generator_params.attention_layers=[0,1,2]"
SAMPLES = str(REPO_ROOT / "data" / "samples")
MiB = 2 ** 20


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The parity fixture's weights as official release files (keys with the DDP ``module.`` prefix)."""
    return write_parity_release(tmp_path_factory.mktemp("release"), module_prefix=True)


@pytest.fixture(scope="module")
def parity_call():
    inputs, expected = np.load(PARITY_DIR / "inputs.npz"), np.load(PARITY_DIR / "expected.npz")

    def keypoints(name):
        return Keypoints(torch.from_numpy(expected[f"{name}.value"]), torch.from_numpy(expected[f"{name}.jacobian"]))
    return (torch.from_numpy(inputs["source"]), keypoints("kp_source"), keypoints("kp_norm"),
            torch.from_numpy(expected["disp_source"]), torch.from_numpy(expected["generator.prediction"]))


# Attention at every level.
@torch.no_grad()
def test_zero_gates_reproduce_dagan_from_the_release_weights(release, parity_call):
    source, kp_source, kp_driving, depth, reference = parity_call
    model_yaml = str(PARITY_DIR / "model.yaml")
    dagan = DaGAN.from_official(release["checkpoint"], config=model_yaml)
    plus = DaGAN.from_official(release["checkpoint"], config=load_config(model_yaml, [ALL_LEVELS]))
    assert sorted(plus.generator.layer_attention) == ["1", "2"]
    assert set(dagan.generator.state_dict()) < set(plus.generator.state_dict())  # shared keys + new blocks only
    expected = dagan.generate(source, kp_source, kp_driving, source_depth=depth).prediction
    actual = plus.generate(source, kp_source, kp_driving, source_depth=depth).prediction
    assert float((actual - expected).abs().max()) <= 1e-6
    assert float((actual - reference).abs().max()) <= 2e-4  # and that is the reference implementation's frame
    for block in plus.generator.layer_attention.values():  # the new blocks are wired in: open gates change it
        block.gate.fill_(0.5)
    opened = plus.generate(source, kp_source, kp_driving, source_depth=depth).prediction
    assert float((opened - expected).abs().max()) > 1e-3


@torch.no_grad()
def test_zero_gates_reproduce_the_spade_generator():
    """SPADE decoder (fixed 256/512 widths) with the attention at its x2 and x4 levels, on 32x32 inputs."""
    config = load_config(config_path("tiny.yaml"), [
        "model_params.generator=SPADEDepthAwareGenerator", "model_params.generator_params.block_expansion=64",
        "model_params.generator_params.max_features=512"])
    params = config.model_params
    arguments = {**dataclasses.asdict(params.generator_params), **dataclasses.asdict(params.common_params)}
    torch.manual_seed(0)
    plain = build_generator(params.generator, **arguments).eval()
    plus = build_generator(params.generator, **{**arguments, "attention_layers": [0, 1, 2]}).eval()
    assert load_shared(plus, plain.state_dict(), "generator") == ["layer_attention.1", "layer_attention.2"]
    generator = torch.Generator().manual_seed(3)
    source, depth = torch.rand(1, 3, 32, 32, generator=generator), torch.rand(1, 1, 32, 32, generator=generator)
    kp_source = Keypoints(torch.rand(1, 5, 2, generator=generator) - 0.5, torch.eye(2).repeat(1, 5, 1, 1))
    kp_driving = Keypoints(kp_source.value + 0.05, kp_source.jacobian)
    expected = plain(source, kp_source, kp_driving, source_depth=depth).prediction
    assert float((plus(source, kp_source, kp_driving, source_depth=depth).prediction - expected).abs().max()) <= 1e-6
    for block in plus.layer_attention.values():
        block.gate.fill_(1.0)
    assert float((plus(source, kp_source, kp_driving, source_depth=depth).prediction - expected).abs().max()) > 1e-4


def test_windowed_attention_is_softmax_attention_within_each_window():
    torch.manual_seed(0)
    block = WindowedDepthAttention(depth_channels=8, appearance_channels=16, out_channels=12, window=4)
    block.gate.data.fill_(0.7)
    depth, warped, decoder = torch.randn(2, 8, 10, 12), torch.randn(2, 16, 10, 12), torch.randn(2, 12, 10, 12)
    with torch.no_grad():
        out = block(depth, warped, decoder)
        pad = (0, 0, 0, 2)  # 10 rows -> 12: edge-padded for the attention, cropped back
        query = torch.relu(block.query_conv(torch.nn.functional.pad(depth, pad, mode="replicate")))
        key = torch.relu(block.key_conv(torch.nn.functional.pad(warped, pad, mode="replicate")))
        value = torch.relu(block.value_conv(torch.nn.functional.pad(warped, pad, mode="replicate")))
        expected = torch.zeros(2, 12, 12, 12)
        for top in range(0, 12, 4):
            for left in range(0, 12, 4):
                tile = (slice(None), slice(None), slice(top, top + 4), slice(left, left + 4))
                q, k, v = (x[tile].flatten(2) for x in (query, key, value))  # (B, C, 16)
                weights = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # (B, 16, 16), scale 1 as in DaGAN
                expected[tile] = (v @ weights.transpose(1, 2)).reshape(2, 12, 4, 4)
    assert torch.allclose(out, decoder + 0.7 * expected[:, :, :10], atol=1e-5)


def largest_allocation(function) -> int:
    """Bytes of the largest single CPU allocation made while ``function()`` runs (torch profiler memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        function()
    return max(event.nbytes() for event in profiler.profiler.kineto_results.events() if event.name() == "[memory]")


def test_largest_allocation_sees_big_tensors():
    assert largest_allocation(lambda: torch.empty(300 * MiB, dtype=torch.uint8)) >= 300 * MiB


def test_every_level_at_256_stays_under_256_mib_per_allocation():
    """vox-adv-256 widths, 256x256 frames, attention at 64x64 (global), 128x128 and 256x256 (windows)."""
    config = load_config(config_path("dagan++-vox-256.yaml"))
    params = config.model_params
    assert params.generator_params.attention_layers == [0, 1, 2]
    generator = build_generator(params.generator, **dataclasses.asdict(params.generator_params),
                                **dataclasses.asdict(params.common_params)).eval()
    generator.requires_grad_(False)
    source, depth = torch.rand(1, 3, 256, 256), torch.rand(1, 1, 256, 256)
    kp_source = Keypoints(torch.rand(1, 15, 2) - 0.5, torch.eye(2).repeat(1, 15, 1, 1))
    kp_driving = Keypoints(kp_source.value * 0.9, kp_source.jacobian)
    largest = largest_allocation(lambda: generator(source, kp_source, kp_driving, source_depth=depth))
    print(f"largest single allocation: {largest / MiB:.1f} MiB")
    assert largest <= 256 * MiB


def test_attention_layers_are_validated():
    key = "model_params.generator_params.attention_layers"
    with pytest.raises(ConfigError, match="must include 0"):
        load_config(config_path("tiny.yaml"), [f"{key}=[1, 2]"])
    with pytest.raises(ConfigError, match=r"among \[0, 1, 2\]"):
        load_config(config_path("tiny.yaml"), [f"{key}=[0, 3]"])
    with pytest.raises(ConfigError, match="twice"):
        load_config(config_path("tiny.yaml"), [f"{key}=[0, 1, 1]"])


# Export.
def test_extended_model_saves_loads_and_is_refused_by_export_official(tmp_path):
    torch.manual_seed(0)
    model = DaGAN(load_config(config_path("tiny.yaml"), [ALL_LEVELS])).eval()
    for block in model.generator.layer_attention.values():
        block.gate.data.fill_(0.3)
    model.save(tmp_path / "plus.pt")
    loaded = DaGAN.from_checkpoint(tmp_path / "plus.pt")
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.reconstruct(images, images.flip(0)).prediction,
                           loaded.reconstruct(images, images.flip(0)).prediction)
    with pytest.raises(CheckpointError, match="reference DaGAN code builds the attention at the bottleneck only"):
        export_official(model, tmp_path / "release")
    assert not (tmp_path / "release").exists()
    assert load_script("export_checkpoint").main(["--checkpoint", str(tmp_path / "plus.pt"),
                                                  "--official", str(tmp_path / "release")]) == 1


# Uncertainty.
def test_uncertainty_config_accepts_the_older_boolean():
    assert load_config(None, ["depth_train_params.uncertainty=true"]).depth_train_params.uncertainty == "image"
    assert load_config(None, ["depth_train_params.uncertainty=false"]).depth_train_params.uncertainty == "none"
    assert load_config(None, ["depth_train_params.uncertainty=pose"]).depth_train_params.uncertainty == "pose"
    with pytest.raises(ConfigError, match="depth_train_params.uncertainty"):
        load_config(None, ["depth_train_params.uncertainty=maybe"])


def test_photometric_term_weighs_the_chosen_view_by_its_uncertainty():
    from dagan.training.depth_stage import photometric_term
    errors = torch.tensor([0.2, 0.4]).view(1, 2, 1, 1)
    identity = torch.tensor([0.3, 0.5]).view(1, 2, 1, 1)
    assert float(photometric_term(errors, identity)) == pytest.approx(0.2)
    # view 0 stays chosen (raw errors decide) even when its uncertainty makes view 1 look cheaper
    uncertainty = torch.tensor([0.01, 10.0]).view(1, 2, 1, 1)
    assert float(photometric_term(errors, identity, uncertainty)) == pytest.approx(0.2 / 0.01 + np.log(0.01), rel=1e-5)
    # the term is minimal at s = e (no collapse to s -> 0 or s -> infinity)
    values = [float(photometric_term(errors, identity, torch.full((1, 2, 1, 1), s))) for s in (0.02, 0.2, 2.0)]
    assert values[1] < values[0] and values[1] < values[2]
    # a pixel the static camera explains better keeps its plain identity error
    static = torch.tensor([0.01, 0.5]).view(1, 2, 1, 1)
    assert float(photometric_term(errors, static, uncertainty)) == pytest.approx(0.01)


def run_train(config: str, log_dir, overrides, *extra: str) -> int:
    arguments = ["--config", config, "--log_dir", str(log_dir), *extra]
    for override in overrides:
        arguments += ["--set", override]
    return train_main(arguments)


def astronaut_triplets() -> list[torch.Tensor]:
    """(previous, target, next) batches of 2: 64x64 crops of skimage's astronaut, shifted by a few pixels."""
    from skimage import data
    image = torch.from_numpy(data.astronaut()[::6, ::6].copy()).permute(2, 0, 1).float() / 255  # (3, 86, 86)
    def crops(dx: int, dy: int) -> torch.Tensor:
        return torch.stack([image[:, 8 + dy:72 + dy, 8 + dx:72 + dx], image[:, 10 - dy:74 - dy, 12 - dx:76 - dx]])
    return [crops(-2, 1), crops(0, 0), crops(2, -1)]


@pytest.mark.parametrize("mode", ["image", "pose"])
def test_uncertainty_variants_train_with_a_varying_uncertainty(mode):
    """A few optimizer steps of the depth stage's step module, built as train_depth builds it for the mode."""
    from dagan.networks.depth import PoseNetwork
    from dagan.training.depth_stage import DepthStep, UncertaintyNetwork
    from dagan.training.run import adam
    torch.manual_seed(0)
    config = load_config(config_path("tiny.yaml"), [f"depth_train_params.uncertainty={mode}"])
    pose = PoseNetwork(predict_uncertainty=mode == "pose")
    step = DepthStep(DaGAN(config), pose, config.depth_train_params,
                     UncertaintyNetwork() if mode == "image" else None).train()
    optimizer = adam([p for p in step.parameters() if p.requires_grad], lr=1e-3)
    frames, noise = astronaut_triplets(), torch.zeros(2, 2, 64, 64)
    for _ in range(3):
        output = step(*frames, noise)
        assert all(bool(torch.isfinite(value)) for value in output.losses.values())
        sum(output.losses.values()).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert output.uncertainty.shape == (2, 2 if mode == "pose" else 1, 64, 64)
    assert float(output.uncertainty.detach().std()) > 1e-4 and bool((output.uncertainty >= 1e-3).all())
    assert (mode == "pose") == any(key.startswith("uncertainty_head.") for key in pose.state_dict())


# Fine-tuning.
def held_out_split(root) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames 0-71 of the sample clip as root/train/clip (128x128 PNGs); (source, driving) pairs from 72-95."""
    from dagan.data.frames import resize_frame
    from dagan.io import open_video
    from dagan.io.images import write_png
    frames = [resize_frame(frame, (128, 128)) for frame in open_video(os.path.join(SAMPLES, "driving.mp4"))]
    (root / "train" / "clip").mkdir(parents=True)
    for index, frame in enumerate(frames[:72]):
        write_png(root / "train" / "clip" / f"{index:04d}.png", (frame * 255).round().astype(np.uint8))
    held_out = torch.from_numpy(np.stack(frames[72:])).permute(0, 3, 1, 2)
    return held_out[[0, 0, 12, 12]], held_out[[8, 23, 4, 20]]


def finetune_config(tmp_path) -> str:
    """configs/finetune-person.yaml with the parity fixture's narrow model at 128x128 (its detector needs >= 128)."""
    values = yaml.safe_load(open(config_path("finetune-person.yaml")))
    values["model_params"].update({key: value for key, value in
                                   yaml.safe_load(open(PARITY_DIR / "model.yaml"))["model_params"].items()})
    values["dataset_params"]["frame_shape"] = [128, 128, 3]
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_finetune_from_the_release_loads_everything_and_improves_held_out_frames(tmp_path, release, capsys,
                                                                                monkeypatch):
    import dagan.training.gan_stage as gan_stage
    from dagan.checkpoint import read_official_checkpoint, read_official_depth
    source, driving = held_out_split(tmp_path / "data")
    depth_dir = os.path.dirname(release["encoder"])
    official = read_official_checkpoint(release["checkpoint"])
    official["depth_encoder"], official["depth_decoder"] = read_official_depth(depth_dir)
    seen = {}
    original_forward = gan_stage.GeneratorStep.forward

    def forward(self, *args, **kwargs):  # the weights the first step starts from
        if not seen:
            seen.update({name: {key: value.clone() for key, value in state.items()}
                         for name, state in self.parts.model.network_state_dicts().items()})
        return original_forward(self, *args, **kwargs)
    monkeypatch.setattr(gan_stage.GeneratorStep, "forward", forward)
    overrides = [f"dataset_params.root_dir={tmp_path / 'data'}", f"model_params.depth_params.checkpoint_dir={depth_dir}",
                 "train_params.vgg19_weights=random", "train_params.num_workers=0", "train_params.num_steps=6",
                 "train_params.batch_size=2", "train_params.scales=[0.5]", "train_params.checkpoint_every=6",
                 "train_params.image_every=100", "train_params.log_every=3", "train_params.lr_generator=2e-4",
                 "train_params.loss_weights.generator_gan=0", ALL_LEVELS]  # small and quick: no GAN terms
    assert run_train(finetune_config(tmp_path), tmp_path / "run", overrides, "--init", release["checkpoint"]) == 0
    line = capsys.readouterr().err
    assert "loaded generator, kp_detector, discriminator" in line
    assert "generator.layer_attention.1, generator.layer_attention.2" in line
    for name, state in official.items():
        for key, value in state.items():
            assert torch.equal(seen[name][key], value), f"{name}.{key} differs from the release file"
    assert all(float(seen["generator"][f"layer_attention.{level}.gate"]) == 0 for level in (1, 2))

    tuned = DaGAN.from_checkpoint(tmp_path / "run" / "checkpoints" / "00000006.pt")
    for key, value in official["kp_detector"].items():  # finetune-person.yaml freezes depth and keypoints
        assert torch.equal(tuned.kp_detector.state_dict()[key], value), key
    assert float(tuned.generator.layer_attention["1"].gate.detach().abs()) > 0  # the new blocks train
    start = DaGAN.from_official(release["checkpoint"], depth_dir, config=load_config(finetune_config(tmp_path)))

    def reconstruction_l1(model: DaGAN) -> float:
        with torch.no_grad():
            return float((model.eval().reconstruct(source, driving).prediction - driving).abs().mean())
    before, after = reconstruction_l1(start), reconstruction_l1(tuned)
    print(f"held-out reconstruction L1: release {before:.4f}, fine-tuned 6 steps {after:.4f}")
    assert after < 0.9 * before


def test_init_errors_name_the_problem(tmp_path, release):
    from dagan.training.finetune import freeze, initialize_from
    model = DaGAN(load_config(str(PARITY_DIR / "model.yaml")))
    with pytest.raises(CheckpointError, match="none of the networks that the depth stage trains"):
        initialize_from(model, release["checkpoint"], "depth")
    with pytest.raises(CheckpointError, match="15 keypoints"):
        initialize_from(DaGAN(load_config(config_path("tiny.yaml"))), release["checkpoint"], "gan")
    report = initialize_from(model, os.path.dirname(release["encoder"]), "depth")
    assert report.loaded == ["depth_encoder", "depth_decoder"]
    with pytest.raises(CheckpointError, match="no submodule 'nothing'"):
        freeze({"generator": model.generator}, ["generator.nothing"])
    with pytest.raises(ConfigError, match=r"train_params.freeze\[0\]"):
        load_config(None, ["train_params.freeze=[vgg]"])
