"""The parity fixture's weights in the official release layout, written by the project's own code.

``weights.npz`` stores, for each network, its state_dict keys in order (``__keys__/<network>``) and each entry
either raw (counters, fixed blur kernels) or as int8 codes with a float32 scale (``<network>/<key>`` and
``<network>/<key>:scale``; value = float32(codes) * scale, exact in float32).
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

NETWORKS = ("generator", "kp_detector", "discriminator", "depth_encoder", "depth_decoder")
MAIN_NETWORKS = ("generator", "kp_detector", "discriminator")


def decode_state_dicts(weights: Path) -> dict[str, OrderedDict]:
    """{network: OrderedDict(key -> tensor)} from the fixture's compact weights file."""
    result = {}
    with np.load(weights, allow_pickle=False) as archive:
        names = set(archive.files)
        for network in NETWORKS:
            state = OrderedDict()
            for key in archive[f"__keys__/{network}"].tolist():
                array = archive[f"{network}/{key}"]
                scale_name = f"{network}/{key}:scale"
                if scale_name in names:
                    array = array.astype(np.float32) * archive[scale_name]
                state[key] = torch.from_numpy(np.array(array, copy=True))
            result[network] = state
    return result


def write_official_release(weights: Path, out_dir: Path, module_prefix: bool = False) -> dict[str, str]:
    """Write checkpoint.pth.tar and depth/{encoder,depth}.pth as the official release does; return their paths."""
    out_dir = Path(out_dir)
    states = decode_state_dicts(weights)
    prefix = "module." if module_prefix else ""
    release = {network: OrderedDict((prefix + key, value) for key, value in states[network].items())
               for network in MAIN_NETWORKS}
    release.update(optimizer_generator={}, optimizer_kp_detector={}, optimizer_discriminator={}, epoch=0)
    encoder = OrderedDict(states["depth_encoder"])
    encoder.update(height=256, width=256, use_stereo=False)  # the release's non-tensor entries
    (out_dir / "depth").mkdir(parents=True, exist_ok=True)
    paths = {"checkpoint": str(out_dir / "checkpoint.pth.tar"), "encoder": str(out_dir / "depth" / "encoder.pth"),
             "decoder": str(out_dir / "depth" / "depth.pth")}
    torch.save(release, paths["checkpoint"])
    torch.save(encoder, paths["encoder"])
    torch.save(OrderedDict(states["depth_decoder"]), paths["decoder"])
    return paths
