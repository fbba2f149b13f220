"""Checkpoints: this project's format, and import/export of the official DaGAN release files.

Our format is a plain dict loadable with ``torch.load(..., weights_only=True)``::

    {"format": "dagan", "version": 1, "config": <nested dict>, "step": int,
     "networks": {"generator": state_dict, "kp_detector": ..., "discriminator": ...,
                  "depth_encoder": ..., "depth_decoder": ...},
     ...training extras (optimizers, schedulers, RNG states)}

The official release is a main file (``DaGAN_vox_adv_256.pth.tar`` or ``SPADE_DaGAN_vox_adv_256.pth.tar``: dicts of
``generator``, ``kp_detector``, ``discriminator`` state_dicts, keys possibly prefixed ``module.``) plus a depth folder
(``encoder.pth`` with extra non-tensor entries, and ``depth.pth``). Every write is atomic: a temporary file in the
same folder, then ``os.replace``; a failed save never damages the previous file.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from typing import Any, Optional

import torch

from dagan.config import Config
from dagan.io.files import OutputError, atomic_write, first_line
from dagan.networks.discriminator import scale_key

FORMAT_NAME = "dagan"
FORMAT_VERSION = 1
MAIN_NETWORKS = ("generator", "kp_detector", "discriminator")
ENCODER_EXTRAS = {"height": 256, "width": 256, "use_stereo": False}  # what the release's encoder.pth also holds
BASIC_BLOCK_DEPTHS = {2: 18, 6: 34}  # blocks in layer3 -> ResNet depth (BasicBlock)
BOTTLENECK_DEPTHS = {6: 50, 23: 101, 36: 152}  # blocks in layer3 -> ResNet depth (Bottleneck)
RELEASE_HELP = "checkpoints/README.md lists the official files, where to download them and where each goes"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the model; the message says what to do."""


# Atomic I/O.
def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file next to ``path``, fsync it, then rename it into place.

    A full disk or an unwritable folder raises :class:`CheckpointError` naming the file and the cause; the
    previous file at ``path`` is never damaged.
    """
    try:
        atomic_write(path, lambda stream: torch.save(obj, stream))
    except OutputError as error:
        raise CheckpointError(str(error)) from None


def read_file(path: str | os.PathLike, map_location: str = "cpu", what: str = "checkpoint",
              hint: str = RELEASE_HELP) -> Any:
    """``torch.load(weights_only=True)`` with one-line errors for missing, empty, truncated or foreign files, and
    for files that hold pickled Python objects (a whole model), which only unsafe unpickling could read: never
    done here. ``hint`` ends the messages (where the right file comes from)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        inside = sorted(name for name in os.listdir(path) if name.endswith((".pt", ".pth", ".tar", ".ckpt")))
        raise CheckpointError(f"{what} {path!r} is a folder; give the {what} file" + (
            f" inside it, e.g. {os.path.join(path, inside[0])!r}" if inside else f" itself ({hint})"))
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} file {path!r} does not exist ({hint})")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{what} file {path!r} is empty (0 bytes): its save was interrupted or the disk was "
                              "full; use an older checkpoint or download the file again")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if found:  # e.g. a whole pickled nn.Module
            raise CheckpointError(f"{what} file {path!r} holds pickled Python objects ({found.group(1)}), not only "
                                  "tensors: only unsafe unpickling (torch.load(weights_only=False)) could read it, "
                                  "which dagan never does; if you trust the file, re-save its state_dict() with "
                                  f"torch.save ({hint})") from None
        raise CheckpointError(f"{what} file {path!r} could not be read as a torch file "
                              f"({type(error).__name__}: {first_line(error)}); it may be truncated or not a "
                              f"checkpoint ({hint})") from None


# Our format.
def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` (config, step, networks, extras) in our format, atomically."""
    atomic_save({"format": FORMAT_NAME, "version": FORMAT_VERSION, **state}, path)


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict:
    """Read a checkpoint of our format; an official release file gets a pointer to the importer."""
    state = read_file(path, map_location)
    if isinstance(state, dict) and state.get("format") == FORMAT_NAME:
        return state
    if isinstance(state, dict) and "generator" in state and "kp_detector" in state:
        raise CheckpointError(f"{os.fspath(path)!r} is an official DaGAN release file; load it with "
                              "DaGAN.from_official(checkpoint, depth_dir) (demo.py does this automatically)")
    raise CheckpointError(f"{os.fspath(path)!r} is not a dagan checkpoint; {RELEASE_HELP}")


# Official release: reading and diagnosing.
def strip_module_prefix(state_dict: dict[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Remove the ``module.`` that DistributedDataParallel training puts in front of every key."""
    return OrderedDict((re.sub(r"(^|\.)module\.", r"\1", key), value) for key, value in state_dict.items())


def read_official_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict[str, dict]:
    """The main release file's ``generator``, ``kp_detector`` and (when present) ``discriminator`` state dicts."""
    state = read_file(path, map_location, "DaGAN checkpoint")
    if not isinstance(state, dict) or "generator" not in state or "kp_detector" not in state:
        keys = list(state)[:3] if isinstance(state, dict) else []
        if any(str(key).startswith("encoder.") for key in keys):
            raise CheckpointError(f"{os.fspath(path)!r} is a depth encoder file (encoder.pth), not the DaGAN "
                                  "checkpoint; pass its folder as --depth_checkpoint / depth_dir")
        if any(str(key).startswith("decoder.") for key in keys):
            raise CheckpointError(f"{os.fspath(path)!r} is a depth decoder file (depth.pth), not the DaGAN "
                                  "checkpoint; pass its folder as --depth_checkpoint / depth_dir")
        raise CheckpointError(f"{os.fspath(path)!r} has no 'generator' and 'kp_detector' entries: it is not a "
                              f"DaGAN release checkpoint; {RELEASE_HELP}")
    return {name: strip_module_prefix(state[name]) for name in MAIN_NETWORKS if isinstance(state.get(name), dict)}


def read_official_depth(depth_dir: str | os.PathLike, map_location: str = "cpu") -> tuple[dict, dict]:
    """Tensor entries of ``encoder.pth`` (its ``height``/``width``/``use_stereo`` are dropped) and ``depth.pth``."""
    depth_dir = os.fspath(depth_dir)
    if not os.path.isdir(depth_dir):
        raise CheckpointError(f"depth folder {depth_dir!r} does not exist; it must hold encoder.pth and depth.pth "
                              f"(the release's depth/models/weights_19; {RELEASE_HELP})")
    encoder = read_file(os.path.join(depth_dir, "encoder.pth"), map_location, "depth encoder")
    decoder = read_file(os.path.join(depth_dir, "depth.pth"), map_location, "depth decoder")
    encoder = OrderedDict((key, value) for key, value in strip_module_prefix(encoder).items()
                          if isinstance(value, torch.Tensor))
    return encoder, strip_module_prefix(decoder)


def resnet_depth_of(encoder_state: dict[str, torch.Tensor]) -> Optional[int]:
    """ResNet depth (18/34/50/101/152) of a depth-encoder state dict, from its block type and layer3 length."""
    blocks = {int(match.group(1)) for key in encoder_state
              if (match := re.match(r"encoder\.layer3\.(\d+)\.", key))}
    if not blocks:
        return None
    table = BOTTLENECK_DEPTHS if "encoder.layer1.0.conv3.weight" in encoder_state else BASIC_BLOCK_DEPTHS
    return table.get(max(blocks) + 1)


def generator_type_of(generator_state: dict[str, torch.Tensor]) -> str:
    """Which released generator a state dict belongs to."""
    return "SPADEDepthAwareGenerator" if any(key.startswith("decoder.") for key in generator_state) \
        else "DepthAwareGenerator"


def infer_model_settings(networks: dict[str, dict], encoder_state: Optional[dict] = None) -> dict[str, Any]:
    """Dotted config overrides implied by official state dicts (keypoint count, generator, detector input, depth
    encoder); ``networks`` may hold any of the main networks, or none."""
    settings: dict[str, Any] = {}
    if "generator" in networks:
        settings["model_params.generator"] = generator_type_of(networks["generator"])
    kp_state = networks.get("kp_detector")
    if kp_state is not None:
        settings["model_params.common_params.num_kp"] = int(kp_state["kp.weight"].shape[0])
        settings["model_params.common_params.estimate_jacobian"] = "jacobian.weight" in kp_state
        channels = int(kp_state["predictor.encoder.down_blocks.0.conv.weight"].shape[1])
        inputs = {4: "rgbd", 3: "rgb", 1: "depth"}
        if channels in inputs:
            settings["model_params.kp_detector_input"] = inputs[channels]
    if encoder_state is not None and resnet_depth_of(encoder_state) is not None:
        settings["model_params.depth_params.num_layers"] = resnet_depth_of(encoder_state)
    return settings


def check_fits(config: Config, networks: dict[str, dict], encoder_state: Optional[dict] = None) -> None:
    """Raise a :class:`CheckpointError` that says which setting to change when files and config disagree."""
    params = config.model_params
    found = infer_model_settings(networks, encoder_state)
    if found.get("model_params.generator", params.generator) != params.generator:
        raise CheckpointError(
            f"the checkpoint holds a {found['model_params.generator']} but the config builds a {params.generator}: "
            f"use --generator {found['model_params.generator']} (model_params.generator"
            + ("; or configs/vox-adv-256-spade.yaml)" if found["model_params.generator"].startswith("SPADE") else ")"))
    if found.get("model_params.common_params.num_kp", params.common_params.num_kp) != params.common_params.num_kp:
        value = found["model_params.common_params.num_kp"]
        raise CheckpointError(f"the checkpoint holds {value} keypoints but the config has "
                              f"{params.common_params.num_kp}: use --kp_num {value} "
                              f"(model_params.common_params.num_kp={value})")
    jacobian = found.get("model_params.common_params.estimate_jacobian", params.common_params.estimate_jacobian)
    if jacobian != params.common_params.estimate_jacobian:
        value = found["model_params.common_params.estimate_jacobian"]
        raise CheckpointError(f"the checkpoint {'has' if value else 'has no'} keypoint Jacobians: set "
                              f"model_params.common_params.estimate_jacobian={str(value).lower()}")
    if found.get("model_params.kp_detector_input", params.kp_detector_input) != params.kp_detector_input:
        value = found["model_params.kp_detector_input"]
        raise CheckpointError(f"the keypoint detector in the checkpoint takes {value!r} input but the config says "
                              f"{params.kp_detector_input!r}: set model_params.kp_detector_input={value}")
    layers = found.get("model_params.depth_params.num_layers")
    if layers is not None and layers != params.depth_params.num_layers:
        raise CheckpointError(f"the depth files hold a ResNet-{layers} encoder but the config builds "
                              f"ResNet-{params.depth_params.num_layers}: set model_params.depth_params.num_layers="
                              f"{layers} (the release's weights_19 folder is ResNet-18, "
                              "depth_face_model_Voxceleb2_10w is ResNet-50)")


def load_strict(network: torch.nn.Module, state_dict: dict, name: str,
                hint: str = "the file was trained with other model_params (e.g. block_expansion, max_features, "
                            "num_blocks)") -> None:
    """Strict load whose error lists the first differing keys and shapes instead of a wall of text; ``hint`` ends
    the message (the likely cause)."""
    own = network.state_dict()
    missing = [key for key in own if key not in state_dict]
    unexpected = [key for key in state_dict if key not in own]
    wrong = [f"{key} {tuple(state_dict[key].shape)} vs {tuple(own[key].shape)}" for key in own
             if key in state_dict and state_dict[key].shape != own[key].shape]
    if missing or unexpected or wrong:
        details = "; ".join(part for part in (
            f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
            f"shape (file vs model) {wrong[:3]}" if wrong else "") if part)
        raise CheckpointError(f"{name} weights do not fit the config ({details}); {hint}")
    network.load_state_dict(state_dict, strict=True)


# Blocks that released weights lack: the generator's zero-gated DaGAN++ attention levels and the levels of grown
# (512) models (whose image residual starts at zero), the pose network's uncertainty head.
NEW_MODULE_PREFIXES = ("layer_attention.", "uncertainty_head.", "highres.")


def load_shared(network: torch.nn.Module, state_dict: dict, name: str, new_prefixes: tuple[str, ...] = ()) -> list[str]:
    """Load every key of ``state_dict`` strictly (all must exist with the same shapes) and allow the network's own
    new blocks (:data:`NEW_MODULE_PREFIXES`, and ``new_prefixes``: a grown model's new discriminator scale) to be
    missing from the file: they keep their initialisation. Returns the names of those new blocks (e.g.
    ``["layer_attention.1"]``)."""
    own = network.state_dict()
    new = [key for key in own if key not in state_dict and key.startswith(NEW_MODULE_PREFIXES + new_prefixes)]
    if new:
        state_dict = {**state_dict, **{key: own[key] for key in new}}
    load_strict(network, state_dict, name)
    return sorted({".".join(key.split(".")[:2 if key.startswith(("layer_attention.", "discs.")) else 1])
                   for key in new})


def grow_states(networks: dict[str, dict], levels: int, model_scales: list[float]) -> tuple[dict[str, dict], dict]:
    """State dicts of a released-size model (the 256 release, or one of our 256 checkpoints) for a model grown by
    ``levels`` (``model_params.highres_levels``): the discriminator of scale s, trained on released-size images,
    becomes the grown model's scale s / 2^levels; every other key is unchanged. Returns the states and, per
    network, the key prefixes the grown model adds (its discriminator scales that the file lacks, for
    :func:`load_shared`). Files that are already grown (their generator has ``highres.*`` keys) pass unchanged."""
    generator = networks.get("generator", {})
    if not levels or any(key.startswith("highres.") for key in generator):
        return networks, {}
    grown = dict(networks)
    if "discriminator" in networks:
        renames = {f"discs.{scale_key(_plain(2 ** levels * scale))}.": f"discs.{scale_key(_plain(scale))}."
                   for scale in model_scales}
        grown["discriminator"] = OrderedDict(
            (_renamed(key, renames), value) for key, value in networks["discriminator"].items())
    present = {".".join(key.split(".")[:2]) + "." for key in grown.get("discriminator", {})}
    lacking = tuple(prefix for prefix in (f"discs.{scale_key(_plain(scale))}." for scale in model_scales)
                    if prefix not in present)
    return grown, {"discriminator": lacking}


def _plain(scale: float) -> float | int:
    return int(scale) if float(scale).is_integer() else scale


def _renamed(key: str, renames: dict[str, str]) -> str:
    for old, new in renames.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def export_official_depth(model, depth_dir: str | os.PathLike) -> dict[str, str]:
    """Write ``encoder.pth`` (with the release's extra entries) and ``depth.pth`` into ``depth_dir``."""
    paths = {"encoder": os.path.join(os.fspath(depth_dir), "encoder.pth"),
             "decoder": os.path.join(os.fspath(depth_dir), "depth.pth")}
    encoder = model_state(model.depth_encoder)
    encoder.update(ENCODER_EXTRAS)
    atomic_save(encoder, paths["encoder"])
    atomic_save(model_state(model.depth_decoder), paths["decoder"])
    return paths


# Official release: writing.
def export_official(model, out_dir: str | os.PathLike, name: str = "checkpoint.pth.tar",
                    epoch: int = 0) -> dict[str, str]:
    """Write ``out_dir/<name>`` and ``out_dir/depth/{encoder,depth}.pth`` in the release layout (unprefixed keys),
    usable by the reference demo (``--checkpoint``; copy the depth files to its depth/models/weights_19)."""
    check_exportable(model.config)
    out_dir = os.fspath(out_dir)
    paths = {"checkpoint": os.path.join(out_dir, name)}
    main = {network: model_state(getattr(model, network)) for network in MAIN_NETWORKS}
    main.update({"optimizer_generator": {}, "optimizer_kp_detector": {}, "optimizer_discriminator": {}, "epoch": epoch})
    atomic_save(main, paths["checkpoint"])
    paths.update(export_official_depth(model, os.path.join(out_dir, "depth")))
    return paths


def check_exportable(config: Config) -> None:
    """Refuse models that the reference code cannot build (DaGAN++ attention beyond the bottleneck)."""
    layers = config.model_params.generator_params.attention_layers
    if sorted(layers) != [0]:
        raise CheckpointError(
            f"this model has depth-aware attention at decoder levels {sorted(layers)} "
            "(model_params.generator_params.attention_layers); the reference DaGAN code builds the attention at the "
            "bottleneck only, so it could not load these weights. Keep it in this project's format "
            "(scripts/export_checkpoint.py --inference, or model.save)")


def model_state(network: torch.nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """A CPU copy of a network's state dict."""
    return OrderedDict((key, value.detach().cpu().clone()) for key, value in network.state_dict().items())



def is_our_checkpoint(path: str | os.PathLike) -> bool:
    """True for files written by this project (checked by loading them; they are plain tensors and dicts)."""
    state = read_file(path)
    return isinstance(state, dict) and state.get("format") == FORMAT_NAME
