"""ONNX export of the inference networks, as the pipeline runs them, plus a manifest.

Four graphs, each with a dynamic batch dimension ``batch`` on every input and output:

=================  =========================  ==========================================================
graph              runs                        inputs -> outputs
=================  =========================  ==========================================================
depth              per source and per frame   image (B, 3, H, W) -> disparity (B, 1, H, W)
keypoints          per source and per frame   image, disparity -> kp_value (B, K, 2), kp_jacobian (B, K, 2, 2)
source_encoder     per source                 source, source_disparity -> appearance, depth_features (B, C, h, w)
generator          per frame                  source, appearance, depth_features, kp_source_*, kp_driving_*
                                              -> prediction (B, 3, H, W): dense motion, feature warping,
                                              occlusion, cross-modal attention and the decoder
=================  =========================  ==========================================================

The relative-motion step (:func:`dagan.geometry.normalize_keypoints`, with the movement scale from
:func:`dagan.geometry.adapt_movement_scale`, a convex hull) runs outside the graphs, between ``keypoints`` and
``generator``: it is a few dozen floats per frame. Batch-1 source tensors are repeated to the frame batch
before ``generator``. Images are in [0, 1]; jacobian inputs and outputs exist only when the config estimates
Jacobians. ``manifest.json`` holds the config, the file, inputs, outputs, role and SHA-256 of every graph, and that
note; :func:`read_manifest` refuses a graph whose bytes changed since (an edited graph that still parses would
give wrong frames).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import warnings
from typing import Optional

import torch
from torch import nn

from dagan.config import Config, config_from_dict, config_to_dict
from dagan.io.files import content_digest, remove_stale_temporaries, temporary_sibling
from dagan.geometry import Keypoints
from dagan.model import DaGAN
from dagan.networks.generator import SourceFeatures
from dagan.runtime.fusion import frozen_for_inference

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "dagan-onnx"
MANIFEST_VERSION = 1
OPSET = 17  # GridSample (16) with bilinear sampling, and what ONNX Runtime and OpenVINO both run
BATCH_AXIS = "batch"
RELATIVE_MOTION_NOTE = (
    "Relative motion is computed outside the graphs, between 'keypoints' and 'generator': "
    "kp_driving_value = (kp_value(frame) - kp_value(initial)) * scale + kp_source_value and "
    "kp_driving_jacobian = kp_jacobian(frame) @ inv(kp_jacobian(initial)) @ kp_source_jacobian "
    "(dagan.geometry.normalize_keypoints), scale = sqrt(hull area(kp_source)) / sqrt(hull area(kp_initial)) "
    "with --adapt_scale, else 1. Batch-1 source tensors are repeated to the frame batch before 'generator'.")


class ExportError(RuntimeError):
    """A problem with an export folder (exists, incomplete, wrong format); the message says what to do."""


@dataclasses.dataclass(frozen=True)
class GraphSpec:
    """One exported graph: its file (relative to the manifest), input and output names, when it runs."""

    file: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    runs: str
    sha256: str = ""  # of the graph file as exported ("" in folders exported before digests were stored)


@dataclasses.dataclass(frozen=True)
class ExportManifest:
    """``manifest.json``: the model config and the four :class:`GraphSpec` entries by graph name."""

    config: Config
    graphs: dict[str, GraphSpec]
    opset: int = OPSET
    relative_motion: str = RELATIVE_MOTION_NOTE

    def to_json(self) -> str:
        graphs = {name: dataclasses.asdict(spec) for name, spec in self.graphs.items()}
        return json.dumps({"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "opset": self.opset,
                           "relative_motion": self.relative_motion, "graphs": graphs,
                           "config": config_to_dict(self.config)}, indent=1) + "\n"


def read_manifest(directory: str | os.PathLike, require_digests: bool = False) -> ExportManifest:
    """The manifest of an export folder, checked: right format, every graph file present and as exported (its
    SHA-256; ``require_digests``: a manifest without them is refused too)."""
    path = os.path.join(directory, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise ExportError(f"{os.fspath(directory)!r} has no {MANIFEST_NAME}; create it with "
                          "scripts/export_onnx.py --checkpoint ... --output DIR")
    with open(path, encoding="utf-8") as stream:
        values = json.load(stream)
    if values.get("format") != MANIFEST_FORMAT or values.get("version") != MANIFEST_VERSION:
        raise ExportError(f"{path!r} is not a {MANIFEST_FORMAT} v{MANIFEST_VERSION} manifest; export again")
    graphs = {name: GraphSpec(spec["file"], tuple(spec["inputs"]), tuple(spec["outputs"]), spec["runs"],
                              spec.get("sha256", "")) for name, spec in values["graphs"].items()}
    for name, spec in graphs.items():
        if not os.path.isfile(os.path.join(directory, spec.file)):
            raise ExportError(f"{os.fspath(directory)!r} lacks {spec.file} (graph {name!r}); export again")
        if require_digests and not spec.sha256:
            raise ExportError(f"{path!r} stores no SHA-256 of {spec.file}; export again")
        if spec.sha256 and content_digest(os.path.join(directory, spec.file)) != spec.sha256:
            raise ExportError(f"{os.path.join(os.fspath(directory), spec.file)!r} changed since it was exported (its "
                              "SHA-256 differs from the manifest's); export again")
    return ExportManifest(config_from_dict(values["config"]), graphs, values["opset"], values["relative_motion"])


def is_export_folder(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(path, MANIFEST_NAME))


# The graphs: thin modules with tensor-only signatures around the model's inference calls.
class DepthGraph(nn.Module):
    def __init__(self, model: DaGAN):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.depth(image)


class KeypointGraph(nn.Module):
    def __init__(self, model: DaGAN):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, disparity: torch.Tensor) -> tuple[torch.Tensor, ...]:
        keypoints = self.model.keypoints(image, disparity)
        return tuple(tensor for tensor in keypoints if tensor is not None)


class SourceEncoderGraph(nn.Module):
    def __init__(self, model: DaGAN):
        super().__init__()
        self.model = model

    def forward(self, source: torch.Tensor, source_disparity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.encode_source(source, source_disparity)
        return features.appearance, features.depth


class GeneratorGraph(nn.Module):
    def __init__(self, model: DaGAN):
        super().__init__()
        self.model = model

    def forward(self, source: torch.Tensor, appearance: torch.Tensor, depth_features: torch.Tensor,
                kp_source_value: torch.Tensor, kp_driving_value: torch.Tensor,
                kp_source_jacobian: Optional[torch.Tensor] = None,
                kp_driving_jacobian: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.model.generate(source, Keypoints(kp_source_value, kp_source_jacobian),
                                   Keypoints(kp_driving_value, kp_driving_jacobian),
                                   source_features=SourceFeatures(appearance, depth_features),
                                   return_deformed=False).prediction


def graph_specs(config: Config) -> dict[str, GraphSpec]:
    """Names of every graph's inputs and outputs for ``config`` (jacobians only when estimated)."""
    jacobian = config.model_params.common_params.estimate_jacobian
    kp_outputs = ("kp_value", "kp_jacobian") if jacobian else ("kp_value",)
    generator_inputs = ("source", "appearance", "depth_features", "kp_source_value", "kp_driving_value")
    if jacobian:
        generator_inputs += ("kp_source_jacobian", "kp_driving_jacobian")
    return {
        "depth": GraphSpec("depth.onnx", ("image",), ("disparity",), "per source and per frame"),
        "keypoints": GraphSpec("keypoints.onnx", ("image", "disparity"), kp_outputs, "per source and per frame"),
        "source_encoder": GraphSpec("source_encoder.onnx", ("source", "source_disparity"),
                                    ("appearance", "depth_features"), "per source"),
        "generator": GraphSpec("generator.onnx", generator_inputs, ("prediction",), "per frame"),
    }


@torch.no_grad()
def example_inputs(model: DaGAN, batch: int = 2) -> dict[str, tuple[torch.Tensor, ...]]:
    """Inputs of every graph at the model's resolution (random images, the model's own intermediate outputs)."""
    height, width = model.config.dataset_params.frame_shape[:2]
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 3, height, width, generator=generator)
    disparity = model.depth(image)
    keypoints = model.keypoints(image, disparity)
    features = model.encode_source(image, disparity)
    driving = Keypoints(keypoints.value.flip(0), None if keypoints.jacobian is None else keypoints.jacobian.flip(0))
    generator_inputs = (image, features.appearance, features.depth, keypoints.value, driving.value)
    if keypoints.jacobian is not None:
        generator_inputs += (keypoints.jacobian, driving.jacobian)
    return {"depth": (image,), "keypoints": (image, disparity), "source_encoder": (image, disparity),
            "generator": generator_inputs}


def export_graph(module: nn.Module, inputs: tuple[torch.Tensor, ...], spec: GraphSpec, path: str,
                 opset: int = OPSET) -> None:
    """Trace ``module`` on ``inputs`` into an ONNX file with a dynamic batch on every input and output."""
    dynamic_axes = {name: {0: BATCH_AXIS} for name in spec.inputs + spec.outputs}
    with warnings.catch_warnings():  # tracer notes about Python-side shape arithmetic (the shapes are static)
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, path, input_names=list(spec.inputs), output_names=list(spec.outputs),
                          dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False, do_constant_folding=True)


def unexported_attention_levels(config: Config) -> list[int]:
    """The DaGAN++ decoder levels with attention (``attention_layers`` other than 0), which the graphs do not cover."""
    return [level for level in config.model_params.generator_params.attention_layers if level]


def export_onnx(model: DaGAN, output_dir: str | os.PathLike, progress=None) -> ExportManifest:
    """Export the frozen, batch-norm-folded inference networks of ``model`` into the new folder ``output_dir``.

    The folder must not exist (or be empty): everything is written to a temporary sibling and renamed into place,
    so a failed export leaves nothing behind. ``progress``: optional callable given each graph name.
    """
    output_dir = os.fspath(output_dir)
    if os.path.exists(output_dir) and (not os.path.isdir(output_dir) or os.listdir(output_dir)):
        raise ExportError(f"{output_dir!r} already exists and is not empty; choose a new folder")
    levels = unexported_attention_levels(model.config)
    if levels:
        raise ExportError("ONNX export covers DaGAN's attention at the bottleneck only; this model also attends at "
                          f"decoder levels {levels}: run it with --backend torch")
    frozen = frozen_for_inference(model).cpu().float()
    specs = graph_specs(model.config)
    inputs = example_inputs(frozen)
    modules = {"depth": DepthGraph(frozen), "keypoints": KeypointGraph(frozen),
               "source_encoder": SourceEncoderGraph(frozen), "generator": GeneratorGraph(frozen)}
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(parent)  # what killed exports left
    temporary = str(temporary_sibling(os.path.abspath(output_dir)))
    os.mkdir(temporary)
    try:
        for name, spec in specs.items():
            if progress is not None:
                progress(name)
            export_graph(modules[name], inputs[name], spec, os.path.join(temporary, spec.file))
            specs[name] = dataclasses.replace(spec, sha256=content_digest(os.path.join(temporary, spec.file)))
        manifest = ExportManifest(model.config, specs)
        with open(os.path.join(temporary, MANIFEST_NAME), "w", encoding="utf-8") as stream:
            stream.write(manifest.to_json())
        if os.path.isdir(output_dir):
            os.rmdir(output_dir)  # empty (checked above)
        os.replace(temporary, output_dir)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return manifest
