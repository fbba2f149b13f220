"""Exported graphs cached per model: ``demo.py --backend onnxruntime|openvino`` with a torch checkpoint exports
once into ``$DAGAN_CACHE`` (default ``~/.cache/dagan``)/onnx/<digest of the config and weights> and reuses it."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys

import torch

from dagan.config import config_to_dict
from dagan.model import DaGAN
from dagan.io.files import first_line, remove_stale_temporaries, temporary_sibling
from dagan.runtime.export import ExportError, export_onnx, is_export_folder, read_manifest

INFERENCE_NETWORKS = ("depth_encoder", "depth_decoder", "kp_detector", "generator")


def cache_root() -> str:
    return os.environ.get("DAGAN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dagan")


def code_files() -> list[str]:
    """The source files that decide what the exported graphs compute: the networks and the exporter."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    networks = os.path.join(package, "networks")
    return sorted([os.path.join(networks, name) for name in os.listdir(networks) if name.endswith(".py")]
                  + [os.path.join(package, "geometry.py"), os.path.join(package, "runtime", "export.py")])


def model_digest(model: DaGAN) -> str:
    """SHA-256 (first 16 hex digits) of the config, every inference network's tensors, the torch version and the
    code that builds the graphs (so an upgrade of either never reuses a stale export)."""
    digest = hashlib.sha256(json.dumps(config_to_dict(model.config), sort_keys=True).encode())
    digest.update(torch.__version__.encode())
    for path in code_files():
        with open(path, "rb") as stream:
            digest.update(stream.read())
    for name in INFERENCE_NETWORKS:
        for key, tensor in getattr(model, name).state_dict().items():
            digest.update(f"{name}.{key}".encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def cached_export(model: DaGAN) -> str:
    """The export folder of ``model`` in the cache, written on first use; a damaged one (a graph changed since, or
    a manifest without digests) is exported again, once, with one line saying so."""
    directory = os.path.join(cache_root(), "onnx", model_digest(model))
    remove_stale_temporaries(os.path.dirname(directory))  # what killed exports left, however long ago
    if is_export_folder(directory):
        try:
            read_manifest(directory, require_digests=True)
        except (ExportError, ValueError, KeyError, OSError) as error:
            print(f"the cached export {directory} is damaged ({first_line(error)}); exporting it again",
                  file=sys.stderr)
            discard(directory)
    if not is_export_folder(directory):
        print(f"exporting the networks to ONNX once, into {directory} ...", file=sys.stderr)
        try:
            export_onnx(model, directory)
        except (ExportError, OSError):
            if not is_export_folder(directory):  # not another process finishing the same export first
                raise
    return directory


def discard(directory: str) -> None:
    """Remove a cached export folder of ours: renamed to a temporary name first (a reader sees it whole or not at
    all; a kill in between leaves a temporary that the next export clears)."""
    doomed = str(temporary_sibling(directory))
    try:
        os.replace(directory, doomed)
    except OSError:  # another process repaired it first
        return
    shutil.rmtree(doomed, ignore_errors=True)
