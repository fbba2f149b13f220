#!/usr/bin/env python
"""Inference speed of the 256x256 DaGAN model with random weights: frames per second and per-module milliseconds.

Runs, in one process and on the same weights and inputs:
* naive   - what the reference demo does per driving frame: source depth/keypoints/encoders recomputed,
            the 4096x4096 attention matrix materialised, the warped full-resolution image computed, batch 1;
* cached  - this project's pipeline path: source work done once, fused attention, no unused outputs,
            at each --batch_sizes value;
and checks that both give the same frames. On a GPU it adds bf16/fp16, channels_last and torch.compile variants.

    python scripts/benchmark.py                      # CPU, batch sizes 1 and 8
    python scripts/benchmark.py --device cuda --batch_sizes 1 8 32 --output benchmark.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dagan.config import load_config  # noqa: E402
from dagan.geometry import adapt_movement_scale, normalize_keypoints, warp_by_deformation  # noqa: E402
from dagan.model import DaGAN  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "vox-adv-256.yaml")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(function: Callable, device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        function()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


class Frames:
    """Random but structured 256x256 inputs: a source and a pool of driving frames."""

    def __init__(self, device: torch.device, count: int, dtype=torch.float32):
        generator = torch.Generator().manual_seed(0)
        base = torch.rand(1, 3, 32, 32, generator=generator)
        self.source = torch.nn.functional.interpolate(base, size=256, mode="bilinear", align_corners=False)
        noise = torch.rand(count, 3, 256, 256, generator=generator) * 0.1
        self.driving = (self.source + noise).clamp(0, 1)
        self.source, self.driving = self.source.to(device), self.driving.to(device)


@torch.no_grad()
def naive_frame(model: DaGAN, source: torch.Tensor, driving: torch.Tensor, initial: torch.Tensor) -> torch.Tensor:
    """One driving frame the reference demo's way (everything recomputed, attention materialised)."""
    disparity_source = model.depth(source)
    kp_source = model.keypoints(source, disparity_source)
    kp_initial = model.keypoints(initial)
    kp_driving = model.keypoints(driving)
    kp_norm = normalize_keypoints(kp_source, kp_driving, kp_initial, True, True, True)
    return model.generate(source, kp_source, kp_norm, source_depth=disparity_source, return_deformed=True,
                          return_attention=True).prediction


class Cached:
    """The pipeline's path: source state computed once, then batches of driving frames."""

    def __init__(self, model: DaGAN, source: torch.Tensor, initial: torch.Tensor):
        with torch.no_grad():
            self.model, self.source = model, source
            self.disparity = model.depth(source)
            self.kp_source = model.keypoints(source, self.disparity)
            self.features = model.encode_source(source, self.disparity)
            self.kp_initial = model.keypoints(initial)
            self.scale = adapt_movement_scale(self.kp_source, self.kp_initial)

    @torch.no_grad()
    def __call__(self, driving: torch.Tensor) -> torch.Tensor:
        batch = driving.shape[0]
        kp_driving = self.model.keypoints(driving)
        kp_norm = normalize_keypoints(self.kp_source, kp_driving, self.kp_initial, use_relative_movement=True,
                                      use_relative_jacobian=True, movement_scale=self.scale)
        return self.model.generate(self.source.expand(batch, -1, -1, -1), self.kp_source, kp_norm,
                                   source_features=self.features.expand(batch), return_deformed=False).prediction


@torch.no_grad()
def module_times(model: DaGAN, cached: Cached, driving: torch.Tensor, device: torch.device,
                 repeats: int) -> dict[str, float]:
    """Median milliseconds per frame of each stage of the cached path (batch = driving.shape[0])."""
    batch = driving.shape[0]
    generator = model.generator
    kp_driving = model.keypoints(driving)
    kp_norm = normalize_keypoints(cached.kp_source, kp_driving, cached.kp_initial, True, True, True)
    source = cached.source.expand(batch, -1, -1, -1)
    features = cached.features.expand(batch)
    motion = generator.dense_motion_network(source, cached.kp_source, kp_norm)
    warped = warp_by_deformation(features.appearance, motion.deformation) * motion.occlusion_map
    refined, _ = generator.AttnModule(features.depth, warped)
    disparity = model.depth(driving)
    stages = {
        "depth (driving)": lambda: model.depth(driving),
        "keypoints (driving)": lambda: model.kp_detector(model.keypoint_input(driving, disparity)),
        "dense motion": lambda: generator.dense_motion_network(source, cached.kp_source, kp_norm),
        "feature warp + occlusion": lambda: warp_by_deformation(features.appearance, motion.deformation)
        * motion.occlusion_map,
        "attention": lambda: generator.AttnModule(features.depth, warped),
        "attention (materialised)": lambda: generator.AttnModule(features.depth, warped, return_attention=True),
        "decoder: bottleneck": lambda: generator.bottleneck(refined),
        "decoder: up blocks + final": lambda: _up(generator, refined),
        "source encoders (cached)": lambda: model.encode_source(source, cached.disparity.expand(batch, -1, -1, -1)),
    }
    return {name: 1000 * statistics.median(timed(stage, device, repeats)) / batch for name, stage in stages.items()}


def _up(generator, features: torch.Tensor) -> torch.Tensor:
    out = features
    for block in generator.up_blocks:
        out = block(out)
    return torch.sigmoid(generator.final(out))


def run_variant(name: str, model: DaGAN, frames: Frames, batch_size: int, device: torch.device, repeats: int,
                dtype: torch.dtype = torch.float32, compile_model: bool = False) -> dict:
    cached = Cached(model, frames.source, frames.driving[:1])
    call = torch.compile(cached.__call__, mode="max-autotune-no-cudagraphs") if compile_model else cached.__call__
    batch = frames.driving[:batch_size]
    context = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else torch.autocast(device.type,
                                                                                                    enabled=False)
    with context:
        times = timed(lambda: call(batch), device, repeats, warmup=3 if compile_model else 1)
    seconds_per_frame = statistics.median(times) / batch_size
    return {"variant": name, "batch_size": batch_size, "ms_per_frame": 1000 * seconds_per_frame,
            "fps": 1.0 / seconds_per_frame, "latency_ms": 1000 * statistics.median(times)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip_naive", action="store_true")
    parser.add_argument("--output", default="benchmark.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = DaGAN(load_config(CONFIG)).eval().to(device)
    frames = Frames(device, max(args.batch_sizes) + 1)
    results: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or
                     platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__, "runs": []}

    # Same frames from both paths.
    cached = Cached(model, frames.source, frames.driving[:1])
    naive = naive_frame(model, frames.source, frames.driving[1:2], frames.driving[:1])
    results["max_abs_diff_naive_vs_cached"] = float((naive - cached(frames.driving[1:2])).abs().max())

    if not args.skip_naive:
        times = timed(lambda: naive_frame(model, frames.source, frames.driving[1:2], frames.driving[:1]), device,
                      args.repeats)
        seconds = statistics.median(times)
        results["runs"].append({"variant": "naive fp32", "batch_size": 1, "ms_per_frame": 1000 * seconds,
                                "fps": 1 / seconds, "latency_ms": 1000 * seconds})
    for batch_size in args.batch_sizes:
        results["runs"].append(run_variant("cached fp32", model, frames, batch_size, device, args.repeats))
    results["module_ms_per_frame"] = {str(batch): module_times(model, cached, frames.driving[:batch], device,
                                                               args.repeats) for batch in args.batch_sizes}
    if device.type == "cuda":
        for dtype_name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            for batch_size in args.batch_sizes:
                results["runs"].append(run_variant(f"cached {dtype_name}", model, frames, batch_size, device,
                                                   args.repeats, dtype))
        channels_last = model.to(memory_format=torch.channels_last)
        for batch_size in args.batch_sizes:
            results["runs"].append(run_variant("cached bf16 channels_last", channels_last, frames, batch_size, device,
                                               args.repeats, torch.bfloat16))
            results["runs"].append(run_variant("cached bf16 channels_last compile", channels_last, frames,
                                               batch_size, device, args.repeats, torch.bfloat16, compile_model=True))
        results["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    print_table(results)
    with open(args.output, "w") as handle:
        json.dump(results, handle, indent=1)
    print(f"wrote {args.output}")
    return 0


def print_table(results: dict) -> None:
    print(f"device: {results['device']}  threads: {results['threads']}  torch {results['torch']}")
    print(f"max |naive - cached| on one frame: {results['max_abs_diff_naive_vs_cached']:.2e}")
    print(f"{'variant':40s} {'batch':>5s} {'ms/frame':>10s} {'fps':>8s} {'latency ms':>11s}")
    for run in results["runs"]:
        print(f"{run['variant']:40s} {run['batch_size']:5d} {run['ms_per_frame']:10.1f} {run['fps']:8.2f} "
              f"{run['latency_ms']:11.1f}")
    for batch, stages in results["module_ms_per_frame"].items():
        print(f"per-module ms per frame, cached fp32, batch {batch}:")
        for name, milliseconds in stages.items():
            print(f"  {name:30s} {milliseconds:8.1f}")


if __name__ == "__main__":
    sys.exit(main())
