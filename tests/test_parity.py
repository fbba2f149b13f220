"""Numerical parity with the reference DaGAN implementation, through the official-release importer.

The shared fixture holds narrow-width random weights in the release format, real input images and the
reference outputs; tolerances come from its tolerances.json ("stage": each network fed the stored upstream
arrays; "end_to_end": everything computed from the images).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from conftest import PARITY_DIR, write_parity_release
from dagan.geometry import Keypoints, adapt_movement_scale, normalize_keypoints
from dagan.model import DaGAN

IMAGES = ("source", "driving_initial", "driving")
GENERATOR_FIELDS = ("prediction", "deformed", "occlusion_map", "mask", "sparse_deformed")


@pytest.fixture(scope="module")
def fixture_data():
    inputs = dict(np.load(PARITY_DIR / "inputs.npz"))
    expected = dict(np.load(PARITY_DIR / "expected.npz"))
    tolerances = json.loads((PARITY_DIR / "tolerances.json").read_text())["arrays"]
    return inputs, expected, tolerances


@pytest.fixture(scope="module", params=[False, True], ids=["plain-keys", "module-prefix"])
def official_model(request, tmp_path_factory, fixture_data):
    paths = write_parity_release(tmp_path_factory.mktemp("release"), module_prefix=request.param)
    depth_dir = os.path.dirname(paths["encoder"])
    return DaGAN.from_official(paths["checkpoint"], depth_dir=depth_dir, config=str(PARITY_DIR / "model.yaml"))


class Checker:
    """Collects max-abs diffs against expected arrays and their per-array bounds."""

    def __init__(self, expected, tolerances, mode):
        self.expected, self.tolerances, self.mode = expected, tolerances, mode
        self.failures, self.diffs = [], {}

    def __call__(self, name: str, actual: torch.Tensor) -> None:
        reference = self.expected[name]
        assert tuple(actual.shape) == reference.shape, f"{name}: shape {tuple(actual.shape)} vs {reference.shape}"
        diff = float(np.abs(actual.detach().double().numpy() - reference).max())
        bound = self.tolerances[name][self.mode]
        self.diffs[name] = diff
        if not diff <= bound:
            self.failures.append(f"{name}: max abs diff {diff:.3g} > {bound:g}")

    def assert_ok(self):
        print(f"\n{self.mode} parity (max abs diff / bound):")  # shown with pytest -s
        for name, diff in self.diffs.items():
            print(f"  {name:40s} {diff:9.2e} / {self.tolerances[name][self.mode]:g}")
        assert not self.failures, "; ".join(self.failures)


def keypoints(expected, name):
    return Keypoints(torch.from_numpy(expected[f"{name}.value"]), torch.from_numpy(expected[f"{name}.jacobian"]))


def run_generator_and_discriminator(model, check, source, kp_source, kp_norm, disp_source):
    out = model.generate(source, kp_source, kp_norm, source_depth=disp_source, return_attention=True)
    for field in GENERATOR_FIELDS:
        check(f"generator.{field}", getattr(out, field))
    check("generator.dense_motion.deformation", out.deformation)
    rows = torch.from_numpy(check.expected["generator.attention_row_index"])
    check("generator.attention_rows", out.attention[:, rows])
    return out


def run_discriminator(model, check, prediction, kp_norm):
    result = model.discriminator({"prediction_1": prediction}, kp_norm.value)
    for index, feature_map in enumerate(result.feature_maps["1"]):
        check(f"discriminator.feature_maps_1.{index}", feature_map)
    check("discriminator.prediction_map_1", result.prediction_maps["1"])


@torch.no_grad()
def test_stage_parity(official_model, fixture_data):
    inputs, expected, tolerances = fixture_data
    check = Checker(expected, tolerances, "stage")
    image = {name: torch.from_numpy(inputs[name]) for name in IMAGES}
    for name in IMAGES:
        check(f"disp_{name}", official_model.depth(image[name]))
        kp = official_model.keypoints(image[name], torch.from_numpy(expected[f"disp_{name}"]))
        check(f"kp_{name}.value", kp.value)
        check(f"kp_{name}.jacobian", kp.jacobian)
    kp_s, kp_d0, kp_d = (keypoints(expected, f"kp_{name}") for name in IMAGES)
    assert adapt_movement_scale(kp_s, kp_d0) == pytest.approx(float(expected["adapt_movement_scale"]), rel=1e-9)
    for name, adapt, relative in (("kp_norm", True, True), ("kp_norm_noadapt", False, True),
                                  ("kp_norm_abs", True, False)):
        normalized = normalize_keypoints(kp_s, kp_d, kp_d0, adapt_movement_scale_=adapt,
                                         use_relative_movement=relative, use_relative_jacobian=relative)
        check(f"{name}.value", normalized.value)
        check(f"{name}.jacobian", normalized.jacobian)
    run_generator_and_discriminator(official_model, check, image["source"], kp_s, keypoints(expected, "kp_norm"),
                                    torch.from_numpy(expected["disp_source"]))
    run_discriminator(official_model, check, torch.from_numpy(expected["generator.prediction"]),
                      keypoints(expected, "kp_norm"))
    check.assert_ok()


@torch.no_grad()
def test_end_to_end_parity(official_model, fixture_data):
    inputs, expected, tolerances = fixture_data
    check = Checker(expected, tolerances, "end_to_end")
    image = {name: torch.from_numpy(inputs[name]) for name in IMAGES}
    disparity = {name: official_model.depth(image[name]) for name in IMAGES}
    kp = {name: official_model.keypoints(image[name], disparity[name]) for name in IMAGES}
    for name in IMAGES:
        check(f"disp_{name}", disparity[name])
        check(f"kp_{name}.value", kp[name].value)
        check(f"kp_{name}.jacobian", kp[name].jacobian)
    kp_norm = normalize_keypoints(kp["source"], kp["driving"], kp["driving_initial"], adapt_movement_scale_=True,
                                  use_relative_movement=True, use_relative_jacobian=True)
    check("kp_norm.value", kp_norm.value)
    check("kp_norm.jacobian", kp_norm.jacobian)
    out = run_generator_and_discriminator(official_model, check, image["source"], kp["source"], kp_norm,
                                          disparity["source"])
    run_discriminator(official_model, check, out.prediction, kp_norm)
    check.assert_ok()


@torch.no_grad()
def test_fused_attention_matches_materialised(official_model, fixture_data):
    """The default path (scaled_dot_product_attention, no 4096x4096 matrix) gives the same prediction."""
    inputs, expected, _ = fixture_data
    source = torch.from_numpy(inputs["source"])
    args = (source, keypoints(expected, "kp_source"), keypoints(expected, "kp_norm"))
    depth = torch.from_numpy(expected["disp_source"])
    fused = official_model.generate(*args, source_depth=depth)
    materialised = official_model.generate(*args, source_depth=depth, return_attention=True)
    assert fused.attention is None
    assert float((fused.prediction - materialised.prediction).abs().max()) < 1e-5
    assert float(np.abs(fused.prediction.numpy() - expected["generator.prediction"]).max()) < 2e-4


def test_loaded_networks_recorded(official_model):
    assert set(official_model.loaded_networks) == {"generator", "kp_detector", "discriminator", "depth_encoder",
                                                   "depth_decoder"}
