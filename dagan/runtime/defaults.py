"""Speed settings the pipeline uses when the caller does not choose: picked per device from measurements.

Measured with ``scripts/benchmark.py`` (vox-adv-256, fp32; docs/speed.md):

* CPU: batch 1 is the fastest (activations of one 256x256 frame already exceed the caches: batch 8 was 1.35x
  slower per frame than batch 1, batch 2 1.13x); ``channels_last`` is 7% slower end to end (the convolutions gain
  little, grid sampling and attention lose); batch norms folded (5% faster, exact to 1e-6).
* CUDA: large batches fill the GPU; ``channels_last`` helps its convolutions (tensor cores).
* MPS: moderate batches; memory format left as it is.

Precision is never changed by default (outputs stay those of fp32); ask for bf16 on a GPU explicitly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


RUNTIMES = ("torch", "onnxruntime", "openvino")  # what runs the networks (dagan.runtime.backends)


@dataclass(frozen=True)
class SpeedSettings:
    """batch_size: driving frames per forward pass; channels_last: NHWC weights and activations;
    fold_batch_norm: batch norms folded into the convolutions of the frozen networks; backend: the runtime that
    ``--backend auto`` picks (only an auto-tune result sets anything but torch)."""

    batch_size: int
    channels_last: bool
    fold_batch_norm: bool = True
    backend: str = "torch"

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.backend not in RUNTIMES:
            raise ValueError(f"backend must be one of {', '.join(RUNTIMES)}, got {self.backend!r}")


DEVICE_DEFAULTS = {
    "cpu": SpeedSettings(batch_size=1, channels_last=False),
    "cuda": SpeedSettings(batch_size=16, channels_last=True),
    "mps": SpeedSettings(batch_size=8, channels_last=False),
}


def default_speed_settings(device: torch.device | str) -> SpeedSettings:
    """The measured fastest settings for a device type (the CPU's for unknown types)."""
    return DEVICE_DEFAULTS.get(torch.device(device).type, DEVICE_DEFAULTS["cpu"])
