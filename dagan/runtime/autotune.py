"""The speed settings measured on this machine, stored per machine and model shape.

``demo.py --autotune`` (the timing is :func:`dagan.inference.autotune`) times whole frames (driving keypoints + rendering, random inputs at the model's resolution)
for batch 1 and 2, NCHW and ``channels_last`` on torch, and batch 1 on OpenVINO when ``--backend auto`` may use it
(installed, exportable model, a CPU), keeps the fastest per frame (best of a few calls) and stores it in
``$DAGAN_CACHE/speed.json`` (default ``~/.cache/dagan``). Later runs with no speed flags use the stored entry for
the same machine, thread count, torch version and model shape; without one they use the measured table of
:mod:`dagan.runtime.defaults`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
from typing import Optional

import torch

from dagan.config import Config
from dagan.io.files import atomic_write_text
from dagan.runtime.cache import cache_root
from dagan.runtime.defaults import SpeedSettings, default_speed_settings

CANDIDATES = tuple(SpeedSettings(batch, channels_last) for batch in (1, 2) for channels_last in (False, True))


def machine_key(device: torch.device, config: Config) -> str:
    """What the measurement depends on: processor (or GPU), threads, torch version, model resolution and widths."""
    if device.type == "cuda":
        processor = torch.cuda.get_device_name(device)
    else:
        processor = platform.processor() or platform.machine()
    params = config.model_params
    shape = (tuple(config.dataset_params.frame_shape), params.generator, params.common_params.num_kp,
             params.generator_params.block_expansion, params.generator_params.num_bottleneck_blocks)
    return f"{device.type}|{processor}|threads={torch.get_num_threads()}|torch={torch.__version__}|{shape}"


def _cache_path() -> str:
    return os.path.join(cache_root(), "speed.json")


def _read_cache() -> dict:
    try:
        with open(_cache_path(), encoding="utf-8") as stream:
            return json.load(stream)
    except (OSError, ValueError):
        return {}


def cached_speed_settings(device: torch.device, config: Config) -> Optional[SpeedSettings]:
    """The stored auto-tune result for this machine and model shape, if any."""
    entry = _read_cache().get(machine_key(device, config))
    return SpeedSettings(**entry) if entry else None


def speed_settings(device: torch.device, config: Optional[Config]) -> SpeedSettings:
    """The auto-tuned settings when stored for this machine, else the measured per-device table."""
    tuned = cached_speed_settings(device, config) if config is not None else None
    return tuned or default_speed_settings(device)


def store_speed_settings(device: torch.device, config: Config, settings: SpeedSettings) -> None:
    """Keep ``settings`` as this machine's measured fastest for ``config``'s model shape (read back by
    :func:`speed_settings`)."""
    cache = _read_cache()
    cache[machine_key(device, config)] = dataclasses.asdict(settings)
    atomic_write_text(_cache_path(), json.dumps(cache, indent=1) + "\n")
