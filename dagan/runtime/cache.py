"""Exported graphs cached per model: ``demo.py --backend onnxruntime|openvino`` with a torch checkpoint exports
once into ``$DAGAN_CACHE`` (default ``~/.cache/dagan``)/onnx/<digest of the config and weights> and reuses it."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Optional

from dagan.config import config_to_dict
from dagan.model import DaGAN
from dagan.runtime.export import export_onnx, is_export_folder

INFERENCE_NETWORKS = ("depth_encoder", "depth_decoder", "kp_detector", "generator")


def cache_root() -> str:
    return os.environ.get("DAGAN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dagan")


def model_digest(model: DaGAN) -> str:
    """SHA-256 (first 16 hex digits) of the config and every inference network's tensors."""
    digest = hashlib.sha256(json.dumps(config_to_dict(model.config), sort_keys=True).encode())
    for name in INFERENCE_NETWORKS:
        for key, tensor in getattr(model, name).state_dict().items():
            digest.update(f"{name}.{key}".encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def cached_export(model: DaGAN) -> str:
    """The export folder of ``model`` in the cache, written on first use."""
    directory = os.path.join(cache_root(), "onnx", model_digest(model))
    if not is_export_folder(directory):
        print(f"exporting the networks to ONNX once, into {directory} ...", file=sys.stderr)
        export_onnx(model, directory)
    return directory


def exported_pipeline(model: DaGAN, backend: str, batch_size: Optional[int] = None):
    """A :class:`~dagan.inference.DaGANPipeline` running ``model``'s cached export on ``backend``."""
    from dagan.inference import DaGANPipeline

    return DaGANPipeline.from_exported(cached_export(model), backend, batch_size=batch_size)
