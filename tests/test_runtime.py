"""Inference runtime: batch-norm folding, per-device speed defaults, ONNX export, ONNX Runtime / OpenVINO backends.

The export tests share one module-scoped export of the parity fixture's release weights (256x256, full ResNet-18
depth network, narrow generator); backends that are not installed skip with the install step in the reason.
"""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from conftest import PARITY_DIR, config_path, write_parity_release
from dagan.model import load_official
from dagan.config import load_config
from dagan.cli.demo import main as demo_main
from dagan.inference import DaGANPipeline
from dagan.model import DaGAN
from dagan.networks.blocks import ResBlock2d
from dagan.inference import autotune
from dagan.runtime.autotune import CANDIDATES, cached_speed_settings, machine_key
from dagan.runtime.backends import BackendError, ExportedNetworks, choose_backend, default_backend
from dagan.runtime.defaults import SpeedSettings, default_speed_settings
from dagan.runtime.export import ExportError, export_onnx, read_manifest
from dagan.runtime.fusion import fold_batch_norms, frozen_for_inference
from dagan.runtime.verify import graph_differences


def randomize_batch_norms(model: nn.Module) -> None:
    """Non-trivial running statistics and affine parameters, so that folding has something to fold."""
    generator = torch.Generator().manual_seed(3)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            count = module.num_features
            module.running_mean.copy_(torch.rand(count, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(count, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(count, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(count, generator=generator) * 0.4 - 0.2)


def count_batch_norms(module: nn.Module) -> int:
    return sum(isinstance(child, nn.BatchNorm2d) for child in module.modules())


def uint8_frames(pipeline: DaGANPipeline, source: np.ndarray, frames: list[np.ndarray]) -> list[np.ndarray]:
    return [result.frame.astype(int) for result in pipeline.animate(source, frames, relative=True, adapt_scale=True)]


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """No auto-tune result or cached export of the user's (~/.cache/dagan) changes these tests."""
    monkeypatch.setenv("DAGAN_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def random_frames():
    rng = np.random.default_rng(0)
    return rng.random((64, 64, 3), dtype=np.float32), [rng.random((64, 64, 3), dtype=np.float32) for _ in range(3)]


# Batch-norm folding.
@torch.no_grad()
def test_batch_norm_folding_is_exact(tiny_model, images):
    randomize_batch_norms(tiny_model)
    frozen = frozen_for_inference(tiny_model)
    residual_blocks = sum(isinstance(module, ResBlock2d) for module in tiny_model.modules())
    assert count_batch_norms(frozen) == residual_blocks  # only the pre-activation norm1 of each block stays
    assert count_batch_norms(tiny_model) > 30 and tiny_model.discriminator is not None  # the original is untouched
    assert frozen.discriminator is None
    disparity = tiny_model.depth(images)
    assert float((frozen.depth(images) - disparity).abs().max()) < 1e-5
    keypoints, folded_keypoints = tiny_model.keypoints(images, disparity), frozen.keypoints(images, disparity)
    assert float((folded_keypoints.value - keypoints.value).abs().max()) < 1e-5
    assert float((folded_keypoints.jacobian - keypoints.jacobian).abs().max()) < 1e-5
    driving = keypoints.index(torch.tensor([1, 0]))
    reference = tiny_model.generate(images, keypoints, driving, source_depth=disparity).prediction
    folded = frozen.generate(images, keypoints, driving, source_depth=disparity).prediction
    assert float((folded - reference).abs().max()) < 1e-5
    assert fold_batch_norms(frozen) == 0  # nothing left to fold


# Speed defaults.
def test_cpu_defaults_and_validation():
    assert default_speed_settings("cpu") == SpeedSettings(batch_size=1, channels_last=False)
    assert default_speed_settings("cuda").batch_size > 1
    with pytest.raises(ValueError, match="batch_size"):
        SpeedSettings(batch_size=0, channels_last=False)


def test_default_pipeline_matches_plain_nchw_batch_1(tiny_model, random_frames):
    randomize_batch_norms(tiny_model)
    source, frames = random_frames
    plain = DaGANPipeline(tiny_model, device="cpu", batch_size=1, channels_last=False, fold_batch_norm=False)
    default = DaGANPipeline(tiny_model, device="cpu")
    assert default.batch_size == 1 and count_batch_norms(default.model) < count_batch_norms(tiny_model)
    channels_last = DaGANPipeline(tiny_model, device="cpu", batch_size=3, channels_last=True)
    reference = uint8_frames(plain, source, frames)
    for pipeline in (default, channels_last):
        for ours, theirs in zip(uint8_frames(pipeline, source, frames), reference, strict=True):
            assert np.abs(ours - theirs).max() <= 1  # within 1/255


def test_autotune_result_is_cached_and_becomes_the_default(tiny_model):
    device = torch.device("cpu")
    assert cached_speed_settings(device, tiny_model.config) is None
    tuned = autotune(tiny_model, device, repeats=1)
    assert tuned in CANDIDATES and cached_speed_settings(device, tiny_model.config) == tuned
    stored = json.loads(open(os.path.join(os.environ["DAGAN_CACHE"], "speed.json")).read())
    stored[machine_key(device, tiny_model.config)] = {"batch_size": 2, "channels_last": True, "fold_batch_norm": True}
    with open(os.path.join(os.environ["DAGAN_CACHE"], "speed.json"), "w") as stream:
        json.dump(stored, stream)
    pipeline = DaGANPipeline(tiny_model, device="cpu")
    assert pipeline.batch_size == 2 and pipeline.networks.memory_format == torch.channels_last
    assert DaGANPipeline(tiny_model, device="cpu", batch_size=1).batch_size == 1  # explicit values win


# ONNX export and the backends.
@pytest.fixture(scope="module")
def parity_model(tmp_path_factory):
    paths = write_parity_release(tmp_path_factory.mktemp("release"))
    return load_official(paths["checkpoint"], os.path.dirname(paths["encoder"]), str(PARITY_DIR / "model.yaml"))


@pytest.fixture(scope="module")
def exported(parity_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("onnx") / "graphs"
    export_onnx(parity_model, directory)
    return str(directory)


@pytest.fixture(scope="module")
def parity_images():
    inputs = np.load(PARITY_DIR / "inputs.npz")
    return torch.from_numpy(np.concatenate([inputs[name] for name in ("source", "driving_initial", "driving")]))


BACKEND_PACKAGES = {"onnxruntime": "onnx", "openvino": "openvino"}


def needs(backend: str) -> None:
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed: pip install -e \".[{BACKEND_PACKAGES[backend]}]\"")


@pytest.fixture(scope="module")
def sessions(exported):
    """ExportedNetworks by backend, created once (session creation dominates these tests)."""
    cache: dict[str, ExportedNetworks] = {}

    def get(backend: str) -> ExportedNetworks:
        needs(backend)
        if backend not in cache:
            cache[backend] = ExportedNetworks(exported, backend)
        return cache[backend]
    return get


@pytest.fixture(scope="module")
def parity_frames():
    """The parity fixture's source and two driving frames (uint8), and the torch pipeline's frames."""
    inputs = np.load(PARITY_DIR / "inputs.npz")
    return inputs["source_uint8"], [inputs["driving_initial_uint8"], inputs["driving_uint8"]]


@pytest.fixture(scope="module")
def torch_frames(parity_model, parity_frames):
    return uint8_frames(DaGANPipeline(parity_model, device="cpu"), *parity_frames)


def test_manifest_lists_every_graph(exported, parity_model):
    manifest = read_manifest(exported)
    assert set(manifest.graphs) == {"depth", "keypoints", "source_encoder", "generator"}
    assert manifest.graphs["generator"].inputs[-2:] == ("kp_source_jacobian", "kp_driving_jacobian")
    assert manifest.config == parity_model.config and "normalize_keypoints" in manifest.relative_motion
    values = json.loads((open(os.path.join(exported, "manifest.json")).read()))
    assert values["graphs"]["source_encoder"]["runs"] == "per source"


def test_export_refuses_a_non_empty_folder_and_reports_missing_files(parity_model, exported, tmp_path):
    with pytest.raises(ExportError, match="not empty"):
        export_onnx(parity_model, exported)
    with pytest.raises(ExportError, match="export_onnx.py"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_exported_graphs_match_torch_on_parity_inputs(backend, parity_model, sessions, parity_images):
    exported = sessions(backend)
    differences = graph_differences(parity_model, exported, parity_images)  # batch 3
    assert max(differences.values()) < 1e-4, differences
    disparity = exported.depth(parity_images[:1])  # batch 1
    assert disparity.shape == (1, 1, 256, 256)
    assert exported.keypoints(parity_images[:1], disparity).jacobian.shape == (1, 15, 2, 2)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_backend_pipeline_gives_the_torch_frames(backend, sessions, parity_frames, torch_frames, exported):
    exported_networks = sessions(backend)
    pipeline = DaGANPipeline(None, device="cpu", batch_size=2, networks=exported_networks,
                             config=exported_networks.manifest.config)
    assert pipeline.model is None  # no torch weights
    for ours, theirs in zip(uint8_frames(pipeline, *parity_frames), torch_frames, strict=True):
        assert np.abs(ours - theirs).max() <= 1


def test_demo_runs_an_export_folder(exported, tmp_path, capsys):
    needs("onnxruntime")
    from PIL import Image

    inputs = np.load(PARITY_DIR / "inputs.npz")
    source, frames = tmp_path / "source.png", tmp_path / "frames"
    Image.fromarray(inputs["source_uint8"]).save(source)
    frames.mkdir()
    for index, name in enumerate(("driving_initial_uint8", "driving_uint8")):
        Image.fromarray(inputs[name]).save(frames / f"{index}.png")
    common = ["--checkpoint", exported, "--source_image", str(source), "--driving_video", str(frames), "--relative"]
    assert demo_main(common + ["--backend", "onnxruntime", "--result_video", f"{tmp_path / 'out'}/"]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == [".dagan-result", "000000.png", "000001.png"]
    assert demo_main(common + ["--result_video", str(tmp_path / "torch.mp4")]) == 1
    assert "--backend onnxruntime" in capsys.readouterr().err


def test_missing_backend_names_the_extra(exported, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_openvino(name, *args, **kwargs):
        if name == "openvino":
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_openvino)
    with pytest.raises(BackendError, match=r"\[openvino\]"):
        ExportedNetworks(exported, "openvino")


# --backend auto (demo.py's default).
def test_auto_backend_prefers_openvino_on_cpus_only(tiny_model, monkeypatch):
    from dagan.runtime import backends

    cpu = torch.device("cpu")
    monkeypatch.setattr(backends, "is_installed", lambda backend: True)
    assert choose_backend(cpu, tiny_model).backend == "openvino"
    assert choose_backend(torch.device("cuda"), tiny_model).backend == "torch"
    assert choose_backend(cpu, tiny_model, torch_only="--compile") == ("torch", "torch (--compile needs it)")
    plus = DaGAN(load_config(config_path("tiny.yaml"), ["model_params.generator_params.attention_layers=[0,1]"]))
    assert "decoder levels [1]" in choose_backend(cpu, plus).reason
    monkeypatch.setattr(backends, "is_installed", lambda backend: backend == "torch")
    choice = choose_backend(cpu, tiny_model)
    assert choice.backend == "torch" and "[onnx,openvino]" in choice.reason


def test_autotune_can_choose_the_backend(tiny_model):
    needs("openvino")
    cpu = torch.device("cpu")
    tuned = autotune(tiny_model, cpu, repeats=1, backends=("torch", "openvino"))
    assert cached_speed_settings(cpu, tiny_model.config) == tuned
    choice = choose_backend(cpu, tiny_model)
    assert choice.backend == tuned.backend and "auto-tuned" in choice.reason
    # A stored torch result keeps torch even where OpenVINO is installed (a CPU where it measured slower).
    from dagan.runtime.autotune import _cache_path

    with open(_cache_path(), "w", encoding="utf-8") as stream:
        json.dump({machine_key(cpu, tiny_model.config): {"batch_size": 2, "channels_last": True}}, stream)
    assert choose_backend(cpu, tiny_model) == ("torch", "torch (auto-tuned as the fastest on this machine)")
    with pytest.raises(ValueError, match="backend must be one of"):
        SpeedSettings(1, False, backend="tensorflow")


def test_backend_default_comes_from_the_environment(monkeypatch, capsys):
    monkeypatch.setenv("DAGAN_BACKEND", "openvino")
    assert default_backend() == "openvino"
    monkeypatch.delenv("DAGAN_BACKEND")
    assert default_backend() == "auto"
    monkeypatch.setenv("DAGAN_BACKEND", "fast")
    assert demo_main(["--checkpoint", "x"]) == 2
    assert "DAGAN_BACKEND='fast' is not a backend" in capsys.readouterr().err


def test_demo_auto_backend_runs_openvino_with_the_torch_frames(tiny_checkpoint, tmp_path, capsys):
    needs("openvino")
    from PIL import Image

    rng = np.random.default_rng(0)
    source, frames = tmp_path / "source.png", tmp_path / "frames"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(source)
    frames.mkdir()
    for index in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(frames / f"{index}.png")
    common = ["--checkpoint", tiny_checkpoint, "--source_image", str(source), "--driving_video", str(frames),
              "--relative", "--crop", "none"]
    assert demo_main(common + ["--backend", "auto", "--result_video", f"{tmp_path / 'auto'}/"]) == 0
    assert "backend: OpenVINO" in capsys.readouterr().err
    assert len(os.listdir(os.environ["DAGAN_CACHE"] + "/onnx")) == 1  # exported once, into the cache
    assert demo_main(common + ["--backend", "torch", "--result_video", f"{tmp_path / 'torch'}/"]) == 0
    for name in ("000000.png", "000001.png"):
        auto, reference = (np.asarray(Image.open(tmp_path / folder / name), dtype=int) for folder in ("auto", "torch"))
        assert np.abs(auto - reference).max() <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (and a CUDA build of torch)")
def test_gpu_defaults_and_bf16_channels_last_compile(tiny_model, random_frames):
    source, frames = random_frames
    reference = uint8_frames(DaGANPipeline(tiny_model, device="cpu", batch_size=1), source, frames)
    fast = DaGANPipeline(tiny_model, device="cuda", precision="bf16", batch_size=32, channels_last=True, compile=True)
    assert fast.batch_size == 32 and DaGANPipeline(tiny_model, device="cuda").batch_size == 16
    for ours, theirs in zip(uint8_frames(fast, source, frames), reference, strict=True):
        assert np.abs(ours - theirs).mean() < 8  # bf16: close on average, not bit-exact
