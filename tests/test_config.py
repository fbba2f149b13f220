"""Config schema: official files load unchanged, errors name the dotted key, overrides and round trips."""
from __future__ import annotations

import re

import pytest
import yaml

from conftest import PARITY_DIR, config_path
from dagan.config import Config, ConfigError, config_to_dict, load_config, save_config


def official_style_yaml(tmp_path) -> str:
    """configs/vox-adv-256.yaml with this project's additions removed: only official keys remain."""
    text = open(config_path("vox-adv-256.yaml"), encoding="utf-8").read()
    values = yaml.safe_load(text)
    for key in ("generator", "kp_detector_input", "depth_params"):
        del values["model_params"][key]
    del values["train_params"]["vgg19_weights"]
    values["model_params"]["common_params"]["num_kp"] = 10
    values["dataset_params"]["root_dir"] = "/data/vox1_frames"
    values["dataset_params"]["pairs_list"] = "data/vox256.csv"
    path = tmp_path / "official.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_official_layout_loads_unchanged(tmp_path):
    config = load_config(official_style_yaml(tmp_path))
    assert config.model_params.common_params.num_kp == 10
    assert config.model_params.generator == "DepthAwareGenerator"
    assert config.model_params.kp_detector_channels == 4
    assert config.train_params.loss_weights.perceptual == [10.0] * 5
    assert config.dataset_params.pairs_list == "data/vox256.csv"


def test_parity_fixture_yaml_loads():
    config = load_config(PARITY_DIR / "model.yaml")
    assert config.model_params.kp_detector_params.block_expansion == 8
    assert config.model_params.generator_params.num_bottleneck_blocks == 2


@pytest.mark.parametrize("name", ["vox-adv-256.yaml", "vox-adv-256-spade.yaml", "tiny.yaml"])
def test_shipped_configs_load(name):
    assert isinstance(load_config(config_path(name)), Config)


def test_unknown_key_names_dotted_path(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model_params:\n  common_params:\n    num_kpp: 15\n")
    with pytest.raises(ConfigError, match=r"model_params\.common_params\.num_kpp: unknown key.*num_kp"):
        load_config(path)


@pytest.mark.parametrize("override, pattern", [
    ("model_params.common_params.num_kp=0", r"model_params\.common_params\.num_kp: must be >= 1"),
    ("model_params.common_params.num_kp=fifteen", r"model_params\.common_params\.num_kp: expected an integer"),
    ("model_params.generator=OtherGenerator", r"model_params\.generator: must be one of"),
    ("model_params.depth_params.num_layers=19", r"model_params\.depth_params\.num_layers: must be one of"),
    ("model_params.kp_detector_params.scale_factor=0.3", r"kp_detector_params\.scale_factor: must be 1/n"),
    ("dataset_params.frame_shape=[256, 256]", r"dataset_params\.frame_shape"),
    ("train_params.loss_weights.perceptual=[1, x]", r"train_params\.loss_weights\.perceptual\[1\]: expected a number"),
    ("model_params.common_params.estimate_jacobian=3", r"estimate_jacobian: expected true/false"),
    ("model_params.common_params=3", r"model_params\.common_params: expected a mapping"),
])
def test_bad_values_name_the_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(config_path("vox-adv-256.yaml"), [override])


def test_spade_needs_256_channels():
    with pytest.raises(ConfigError, match="SPADEDepthAwareGenerator"):
        load_config(config_path("tiny.yaml"), ["model_params.generator=SPADEDepthAwareGenerator"])


def test_overrides_apply_and_parse_yaml():
    config = load_config(config_path("vox-adv-256.yaml"),
                         ["model_params.common_params.num_kp=10", "train_params.lr_generator=1e-4",
                          "train_params.scales=[1, 0.5]", "model_params.depth_params.checkpoint_dir=/tmp/depth"])
    assert config.model_params.common_params.num_kp == 10
    assert config.train_params.lr_generator == pytest.approx(1e-4)  # "1e-4" is a YAML string; it is coerced
    assert config.train_params.scales == [1.0, 0.5]
    assert config.model_params.depth_params.checkpoint_dir == "/tmp/depth"


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(None, ["model_params.common_params.num_kp"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    path = tmp_path / "broken.yaml"
    path.write_text("model_params: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_round_trip(tmp_path):
    config = load_config(config_path("vox-adv-256-spade.yaml"), ["model_params.common_params.num_kp=12"])
    save_config(config, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == config
    assert config_to_dict(load_config(tmp_path / "resolved.yaml")) == config_to_dict(config)
    assert not [p for p in tmp_path.iterdir() if re.search(r"\.tmp$", p.name)]
