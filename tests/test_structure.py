"""Full-size structure: our state dicts have exactly the official keys, shapes and parameter counts."""
from __future__ import annotations

import re
from collections import OrderedDict

import pytest
import torch

from conftest import STATE_DICT_KEYS, config_path
from dagan.config import load_config
from dagan.model import DaGAN
from dagan.networks.blocks import count_parameters
from dagan.networks.depth import DepthDecoder, DepthEncoder

PARAMETER_COUNTS = {
    "generator [DepthAwareGenerator]": 46_096_917,
    "generator [SPADEDepthAwareGenerator]": 67_545_305,
    "kp_detector [KPDetector, 4-ch RGBD input]": 14_262_519,
    "discriminator [MultiScaleDiscriminator scales=[1]]": 2_774_209,
    "depth_encoder [ResnetEncoder(18) -- demo.py weights_19]": 11_689_512,
    "depth_decoder [DepthDecoder for ResNet18 enc]": 3_152_724,
    "depth_encoder [ResnetEncoder(50) -- modules/model.py training, depth_face_model_Voxceleb2_10w]": 25_557_032,
    "depth_decoder [DepthDecoder for ResNet50 enc]": 9_014_100,
}


def official_sections() -> dict[str, "OrderedDict[str, tuple[int, ...]]"]:
    """Parse dagan_state_dict_keys.txt into {section title: {key: shape}}."""
    sections, current = {}, None
    for line in STATE_DICT_KEYS.read_text().splitlines():
        if line.startswith("## "):
            current = sections.setdefault(line[3:].split(":")[0].strip(), OrderedDict())
        elif current is not None and line and not line.startswith(("#", "=", "-")):
            match = re.match(r"(\S+)\s+\(([\d, ]*)\)", line)
            shape = tuple(int(size) for size in match.group(2).replace(" ", "").split(",") if size)
            current[match.group(1)] = shape
    return sections


def assert_same_layout(network: torch.nn.Module, official: "OrderedDict[str, tuple[int, ...]]"):
    ours = {key: tuple(value.shape) for key, value in network.state_dict().items()}
    assert set(ours) == set(official), (sorted(set(ours) - set(official))[:5], sorted(set(official) - set(ours))[:5])
    wrong = {key: (ours[key], official[key]) for key in ours if ours[key] != official[key]}
    assert not wrong, list(wrong.items())[:5]


@pytest.fixture(scope="module")
def sections():
    return official_sections()


@pytest.mark.parametrize("config_name, generator_title", [
    ("vox-adv-256.yaml", "generator [DepthAwareGenerator]"),
    ("vox-adv-256-spade.yaml", "generator [SPADEDepthAwareGenerator]"),
])
def test_full_size_model_matches_release(sections, config_name, generator_title):
    model = DaGAN(load_config(config_path(config_name)))
    titles = {"generator": generator_title,
              "kp_detector": "kp_detector [KPDetector, 4-ch RGBD input]",
              "discriminator": "discriminator [MultiScaleDiscriminator scales=[1]]",
              "depth_encoder": "depth_encoder [ResnetEncoder(18) -- demo.py weights_19]",
              "depth_decoder": "depth_decoder [DepthDecoder for ResNet18 enc]"}
    for name, title in titles.items():
        network = getattr(model, name)
        assert_same_layout(network, sections[title])
        assert count_parameters(network) == PARAMETER_COUNTS[title], name


def test_resnet50_depth_matches_release(sections):
    encoder = DepthEncoder(50)
    decoder = DepthDecoder(encoder.num_ch_enc)
    encoder_title = "depth_encoder [ResnetEncoder(50) -- modules/model.py training, depth_face_model_Voxceleb2_10w]"
    assert_same_layout(encoder, sections[encoder_title])
    assert_same_layout(decoder, sections["depth_decoder [DepthDecoder for ResNet50 enc]"])
    assert count_parameters(encoder) == PARAMETER_COUNTS[encoder_title]
    assert count_parameters(decoder) == PARAMETER_COUNTS["depth_decoder [DepthDecoder for ResNet50 enc]"]
