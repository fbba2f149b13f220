#!/usr/bin/env python
"""Cost of the depth-aware attention per decoder level and of the whole generator per frame, for DaGAN and
DaGAN++ configs and grown (512) models: FLOPs (torch FlopCounterMode, 2 x multiply-adds), parameters, the largest
single CPU allocation of a forward pass (torch profiler memory events) and CPU wall time (batch 1, the config's frame
size, 2 threads, no_grad).

    python scripts/attention_cost.py                       # vox-adv-256, dagan++-vox-256 and their SPADE variants
    python scripts/attention_cost.py --configs configs/dagan++-vox-256.yaml --repeats 5
    python scripts/attention_cost.py --configs configs/vox-adv-256.yaml configs/vox-512.yaml --no_spade
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from dagan.config import load_config  # noqa: E402
from dagan.geometry import Keypoints  # noqa: E402
from dagan.networks.generator import build_generator  # noqa: E402

CONFIGS = ("configs/vox-adv-256.yaml", "configs/dagan++-vox-256.yaml")
SPADE = "model_params.generator=SPADEDepthAwareGenerator"


def largest_allocation(function) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        function()
    return max(event.nbytes() for event in profiler.profiler.kineto_results.events() if event.name() == "[memory]")


@torch.no_grad()
def measure(config_path: str, overrides: list[str], repeats: int) -> None:
    config = load_config(config_path, overrides)
    params = config.model_params
    generator = build_generator(params.generator, **dataclasses.asdict(params.generator_params),
                                **dataclasses.asdict(params.common_params), highres_levels=params.highres_levels).eval()
    frame = config.dataset_params.frame_shape[0]
    size = frame // 2 ** params.highres_levels  # the released networks' size (256 for grown 512 models)
    source, depth = torch.rand(1, 3, frame, frame), torch.rand(1, 1, size, size)
    kp_source = Keypoints(torch.rand(1, params.common_params.num_kp, 2) - 0.5,
                          torch.eye(2).repeat(1, params.common_params.num_kp, 1, 1))
    kp_driving = Keypoints(kp_source.value * 0.9, kp_source.jacobian)

    def forward():
        return generator(source, kp_source, kp_driving, source_depth=depth, return_deformed=False)
    with FlopCounterMode(display=False) as counter:
        forward()
    flops = counter.get_flop_counts()
    name = type(generator).__name__
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward()
        times.append(time.perf_counter() - start)
    label = f"{os.path.basename(config_path)} {' '.join(overrides)}".strip()
    print(f"\n{label}: {name}, attention_layers {params.generator_params.attention_layers}, "
          f"{sum(p.numel() for p in generator.parameters()):,} parameters")
    print(f"  per frame: {counter.get_total_flops() / 1e9:.1f} GFLOP, median {statistics.median(times) * 1e3:.0f} ms "
          f"(N={repeats}), largest allocation {largest_allocation(forward) / 2 ** 20:.0f} MiB")
    blocks = {"0": generator.AttnModule, **generator.layer_attention}
    for level, block in blocks.items():
        key = f"{name}.AttnModule" if level == "0" else f"{name}.layer_attention.{level}"
        side = size // 2 ** (generator.num_down_blocks - int(level))
        kind = "global" if level == "0" else f"{block.window}x{block.window} windows"
        print(f"  level {level}: {side}x{side}, {kind}: {sum(flops.get(key, {}).values()) / 1e9:.2f} GFLOP, "
              f"{sum(p.numel() for p in block.parameters()):,} parameters")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--no_spade", action="store_true", help="skip the SPADE variants (slow on a CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    for path in args.configs:
        measure(path, [], args.repeats)
        if not args.no_spade:
            measure(path, [SPADE, "model_params.generator_params.num_bottleneck_blocks=0"], args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
