"""Our checkpoint format (round trip, atomic writes) and the official importer/exporter with its errors."""
from __future__ import annotations

import os
from collections import OrderedDict

import pytest
import torch

from conftest import config_path
from dagan.checkpoint import CheckpointError, atomic_save, export_official, load_checkpoint, resnet_depth_of
from dagan.config import load_config
from dagan.model import DaGAN, load_official
from dagan.networks.depth import DepthEncoder


def randomize_buffers(model: DaGAN) -> DaGAN:
    """Give BatchNorm statistics non-default values so that a lost buffer shows up in the outputs."""
    generator = torch.Generator().manual_seed(5)
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean"):
            buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.1)
        elif name.endswith("running_var"):
            buffer.copy_(1 + torch.rand(buffer.shape, generator=generator))
    return model


@torch.no_grad()
def outputs(model: DaGAN, images: torch.Tensor) -> list[torch.Tensor]:
    source, driving = images[:1], images[1:]
    depth = model.depth(source)
    kp_source, kp_driving = model.keypoints(source, depth), model.keypoints(driving)
    prediction = model.generate(source, kp_source, kp_driving, source_depth=depth).prediction
    disc = model.discriminator({"prediction_1": prediction}, kp_driving.value).prediction_maps["1"]
    return [depth, kp_source.value, kp_source.jacobian, prediction, disc]


def test_round_trip_gives_identical_outputs(tiny_model, images, tmp_path):
    randomize_buffers(tiny_model)
    tiny_model.save(tmp_path / "model.pt", step=7)
    state = torch.load(tmp_path / "model.pt", weights_only=True)  # loadable without pickled code
    assert state["format"] == "dagan" and state["step"] == 7
    assert state["config"]["model_params"]["common_params"]["num_kp"] == 5
    restored = DaGAN.from_checkpoint(tmp_path / "model.pt")
    assert restored.config == tiny_model.config
    for ours, theirs in zip(outputs(tiny_model, images), outputs(restored, images)):
        assert torch.equal(ours, theirs)


def test_interrupted_save_leaves_old_file_intact(tiny_model, tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    tiny_model.save(path, step=1)
    before = path.read_bytes()

    def broken_save(obj, target, *args, **kwargs):
        target.write(b"partial")  # the open temporary file
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of a save

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        tiny_model.save(path, step=2)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]  # no temporary file left behind


def test_atomic_save_creates_directories(tmp_path):
    atomic_save({"a": torch.ones(1)}, tmp_path / "new" / "dir" / "x.pt")
    assert torch.load(tmp_path / "new" / "dir" / "x.pt", weights_only=True)["a"].item() == 1


def test_missing_and_foreign_files(tmp_path, tiny_model):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "run" / "models").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"is a folder; give the checkpoint file itself"):
        load_checkpoint(tmp_path / "run" / "models")
    tiny_model.save(tmp_path / "run" / "models" / "dagan.pt")
    with pytest.raises(CheckpointError, match=r"is a folder; give the checkpoint file inside it, e.g. .*dagan.pt"):
        load_checkpoint(tmp_path / "run" / "models")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(tmp_path / "text.pt")
    paths = export_official(tiny_model, tmp_path / "release")
    with pytest.raises(CheckpointError, match="from_official"):
        load_checkpoint(paths["checkpoint"])
    with pytest.raises(CheckpointError, match="depth encoder file"):
        load_official(paths["encoder"], None, config_path("tiny.yaml"))


def test_missing_or_unrecognised_files_point_to_the_checkpoints_readme(tmp_path):
    from conftest import REPO_ROOT

    (tmp_path / "other.pt").write_bytes(b"not a torch file")
    torch.save({"weights": torch.ones(1)}, tmp_path / "dict.pt")
    for call in (lambda: load_official(tmp_path / "missing.pth.tar", tmp_path, config_path("tiny.yaml")),
                 lambda: load_official(None, tmp_path / "no_depth_folder", config_path("tiny.yaml")),
                 lambda: load_official(tmp_path / "dict.pt", None, config_path("tiny.yaml")),
                 lambda: load_checkpoint(tmp_path / "other.pt"), lambda: load_checkpoint(tmp_path / "dict.pt")):
        with pytest.raises(CheckpointError, match="checkpoints/README.md"):
            call()
    readme = (REPO_ROOT / "checkpoints" / "README.md").read_text(encoding="utf-8")
    for name in ("DaGAN_vox_adv_256.pth.tar", "SPADE_DaGAN_vox_adv_256.pth.tar", "depth_face_model_Voxceleb2_10w",
                 "weights_19", "sharepoint.com"):
        assert name in readme


def test_export_import_official_round_trip(tiny_model, images, tmp_path):
    randomize_buffers(tiny_model)
    paths = export_official(tiny_model, tmp_path / "release")
    encoder = torch.load(paths["encoder"], weights_only=True)
    assert encoder["height"] == 256 and encoder["use_stereo"] is False  # the release's extra entries
    main = torch.load(paths["checkpoint"], weights_only=True)
    assert set(main) >= {"generator", "kp_detector", "discriminator", "epoch"}
    # Prefix every key with "module." as DDP-trained release files have it.
    main = {name: OrderedDict((f"module.{key}", value) for key, value in main[name].items())
            if name in ("generator", "kp_detector", "discriminator") else main[name] for name in main}
    torch.save(main, paths["checkpoint"])
    restored = load_official(paths["checkpoint"], os.path.dirname(paths["encoder"]), config_path("tiny.yaml"))
    for ours, theirs in zip(outputs(tiny_model, images), outputs(restored, images)):
        assert torch.equal(ours, theirs)


def test_discriminator_is_optional(tiny_model, tmp_path):
    paths = export_official(tiny_model, tmp_path / "release")
    main = torch.load(paths["checkpoint"], weights_only=True)
    del main["discriminator"]
    torch.save(main, paths["checkpoint"])
    restored = load_official(paths["checkpoint"], os.path.dirname(paths["encoder"]), config_path("tiny.yaml"))
    assert "discriminator" not in restored.loaded_networks


def test_config_inferred_from_files(tiny_model, tmp_path):
    """Without a config, the keypoint count, generator and detector input come from the files."""
    paths = export_official(tiny_model, tmp_path / "release")
    with pytest.raises(CheckpointError, match="do not fit the config.*block_expansion"):
        load_official(paths["checkpoint"], os.path.dirname(paths["encoder"]), None)  # default widths are full-size
    from dagan.checkpoint import infer_model_settings, read_official_checkpoint, read_official_depth
    settings = infer_model_settings(read_official_checkpoint(paths["checkpoint"]),
                                    read_official_depth(os.path.dirname(paths["encoder"]))[0])
    assert settings == {"model_params.generator": "DepthAwareGenerator", "model_params.common_params.num_kp": 5,
                        "model_params.common_params.estimate_jacobian": True,
                        "model_params.kp_detector_input": "rgbd", "model_params.depth_params.num_layers": 18}


def test_wrong_keypoint_count_names_value(tiny_model, tmp_path):
    paths = export_official(tiny_model, tmp_path / "release")
    config = load_config(config_path("tiny.yaml"), ["model_params.common_params.num_kp=10"])
    with pytest.raises(CheckpointError, match=r"holds 5 keypoints.*--kp_num 5"):
        load_official(paths["checkpoint"], None, config)


def test_spade_file_with_plain_generator_names_spade(tmp_path):
    config = load_config(config_path("tiny.yaml"), [
        "model_params.generator=SPADEDepthAwareGenerator", "model_params.generator_params.block_expansion=64",
        "model_params.generator_params.max_features=256"])
    paths = export_official(DaGAN(config), tmp_path / "spade")
    plain = load_config(config_path("tiny.yaml"), ["model_params.generator_params.block_expansion=64",
                                                    "model_params.generator_params.max_features=256"])
    with pytest.raises(CheckpointError, match="holds a SPADEDepthAwareGenerator.*--generator SPADEDepthAwareGenerator"):
        load_official(paths["checkpoint"], None, plain)
    assert load_official(paths["checkpoint"], None, config).config.model_params.generator == "SPADEDepthAwareGenerator"


def test_resnet50_depth_into_resnet18_says_so(tiny_model, tmp_path):
    encoder_state = DepthEncoder(50).state_dict()
    assert resnet_depth_of(encoder_state) == 50 and resnet_depth_of(DepthEncoder(18).state_dict()) == 18
    depth_dir = tmp_path / "depth50"
    depth_dir.mkdir()
    torch.save({**encoder_state, "height": 256, "width": 256, "use_stereo": False}, depth_dir / "encoder.pth")
    from dagan.networks.depth import DepthDecoder
    torch.save(DepthDecoder(DepthEncoder(50).num_ch_enc).state_dict(), depth_dir / "depth.pth")
    with pytest.raises(CheckpointError, match=r"ResNet-50 encoder but the config builds ResNet-18.*num_layers=50"):
        load_official(None, depth_dir, config_path("tiny.yaml"))
    config = load_config(config_path("tiny.yaml"), ["model_params.depth_params.num_layers=50"])
    assert load_official(None, depth_dir, config).loaded_networks == ("depth_encoder", "depth_decoder")


def test_missing_depth_folder(tmp_path):
    with pytest.raises(CheckpointError, match="encoder.pth and depth.pth"):
        load_official(None, tmp_path / "nowhere", config_path("tiny.yaml"))
