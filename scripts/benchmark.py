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
    python scripts/benchmark.py --faces --skip_naive  # + the per-frame cost of face crop and paste-back

``--faces`` times what ``demo.py --crop auto --paste_back`` adds per frame (cutting the driving face out of a
1280x720 frame, pasting the generated 256x256 face back into a 1920x1440 photo) against the model's per-frame
time, and, separately, the face detection that plans a driving clip's crop (once per clip, 12 sampled frames).
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
from dagan.inference import DaGANPipeline  # noqa: E402
from dagan.io.files import atomic_write_text  # noqa: E402
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
    """The pipeline's path (:class:`DaGANPipeline`): source state computed once, then batches of driving frames."""

    def __init__(self, model: DaGAN, source: torch.Tensor, initial: torch.Tensor, compile_model: bool = False,
                 precision: str = "fp32"):
        self.pipeline = DaGANPipeline(model, device=source.device, compile=compile_model, precision=precision)
        self.state = self.pipeline.source_state(source)
        self.source, self.disparity = source, self.state.disparity
        self.kp_source, self.features = self.state.keypoints, self.state.features
        with torch.no_grad():
            self.kp_initial = model.keypoints(initial)
            self.scale = adapt_movement_scale(self.kp_source, self.kp_initial)

    @torch.no_grad()
    def __call__(self, driving: torch.Tensor) -> torch.Tensor:
        kp_driving, _ = self.pipeline.driving_keypoints(driving)
        kp_norm = normalize_keypoints(self.kp_source, kp_driving, self.kp_initial, use_relative_movement=True,
                                      use_relative_jacobian=True, movement_scale=self.scale)
        return self.pipeline.generate(self.state, kp_norm).prediction


@torch.no_grad()
def module_times(model: DaGAN, cached: Cached, driving: torch.Tensor, device: torch.device,
                 repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` milliseconds per frame of each stage of the cached path (batch = driving.shape[0])."""
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
    return {name: 1000 * min(timed(stage, device, repeats)) / batch for name, stage in stages.items()}


def _up(generator, features: torch.Tensor) -> torch.Tensor:
    out = features
    for block in generator.up_blocks:
        out = block(out)
    return torch.sigmoid(generator.final(out))


def run_variant(name: str, model: DaGAN, frames: Frames, batch_size: int, device: torch.device, repeats: int,
                precision: str = "fp32", compile_model: bool = False) -> dict:
    cached = Cached(model, frames.source, frames.driving[:1], compile_model, precision)
    times = timed(lambda: cached(frames.driving[:batch_size]), device, repeats, warmup=2 if compile_model else 1)
    return summary(name, batch_size, times)


def summary(name: str, batch_size: int, times: list[float]) -> dict:
    """Median and best time per frame; on a shared machine the best of several runs is the steadier figure."""
    median, best = statistics.median(times) / batch_size, min(times) / batch_size
    return {"variant": name, "batch_size": batch_size, "ms_per_frame": 1000 * median, "best_ms_per_frame": 1000 * best,
            "fps": 1.0 / median, "latency_ms": 1000 * statistics.median(times)}


def face_overhead(model_ms_per_frame: float, repeats: int) -> dict:
    """Milliseconds per frame of the face crop and paste-back, their share of the model's time, and the seconds
    of driving-clip face detection per clip (needs the [faces] extra for the last figure)."""
    import numpy as np
    from skimage import data as skimage_data

    from dagan.faces.alignment import CropBox, warp_to_crop
    from dagan.faces.paste import PasteBack
    from dagan.faces.plans import DEFAULT_SAMPLES

    generator = np.random.default_rng(0)
    driving = generator.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    picture = generator.integers(0, 256, (1440, 1920, 3), dtype=np.uint8)
    generated = generator.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    driving_crop = CropBox(640.0, 360.0, 600.0).transform((256, 256))
    paste = PasteBack(CropBox(900.0, 600.0, 700.0, 0.1).transform((256, 256)), picture.shape[:2])
    cpu = torch.device("cpu")
    crop_ms = 1000 * min(timed(lambda: warp_to_crop(driving, driving_crop), cpu, repeats * 4))
    paste_ms = 1000 * min(timed(lambda: paste(picture.copy(), generated), cpu, repeats * 4))
    result = {"driving_crop_ms_per_frame": crop_ms, "paste_back_ms_per_frame": paste_ms,
              "model_ms_per_frame": model_ms_per_frame,
              "overhead_percent": 100 * (crop_ms + paste_ms) / model_ms_per_frame}
    try:
        from dagan.faces import get_face_analyzer

        analyzer = get_face_analyzer("auto", detect_max_side=1280)
    except ImportError:
        return result
    frame = np.full((720, 1280, 3), 90, np.uint8)
    frame[100:612, 400:912] = skimage_data.astronaut()
    seconds = min(timed(lambda: analyzer.landmarks(frame, analyzer.detect(frame)[0]), cpu, repeats))
    result["driving_detection_s_per_clip"] = seconds * DEFAULT_SAMPLES
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip_naive", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (on GPUs it always runs)")
    parser.add_argument("--faces", action="store_true", help="also time the face crop and paste-back per frame "
                        "(demo.py --crop auto) against the model")
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
    if args.compile:
        compiled = Cached(model, frames.source, frames.driving[:1], compile_model=True)
        results["max_abs_diff_naive_vs_compiled"] = float((naive - compiled(frames.driving[1:2])).abs().max())

    if not args.skip_naive:
        times = timed(lambda: naive_frame(model, frames.source, frames.driving[1:2], frames.driving[:1]), device,
                      args.repeats)
        results["runs"].append(summary("naive fp32", 1, times))
    for batch_size in args.batch_sizes:
        results["runs"].append(run_variant("cached fp32", model, frames, batch_size, device, args.repeats))
    if args.compile:
        for batch_size in args.batch_sizes:
            results["runs"].append(run_variant("cached fp32 compile", model, frames, batch_size, device,
                                               args.repeats, compile_model=True))
    results["module_ms_per_frame"] = {str(batch): module_times(model, cached, frames.driving[:batch], device,
                                                               args.repeats) for batch in args.batch_sizes}
    if device.type == "cuda":
        for precision in ("bf16", "fp16"):
            for batch_size in args.batch_sizes:
                results["runs"].append(run_variant(f"cached {precision}", model, frames, batch_size, device,
                                                   args.repeats, precision))
        model = model.to(memory_format=torch.channels_last)
        frames.source = frames.source.contiguous(memory_format=torch.channels_last)
        frames.driving = frames.driving.contiguous(memory_format=torch.channels_last)
        for batch_size in args.batch_sizes:
            results["runs"].append(run_variant("cached bf16 channels_last", model, frames, batch_size, device,
                                               args.repeats, "bf16"))
            results["runs"].append(run_variant("cached bf16 channels_last compile", model, frames, batch_size,
                                               device, args.repeats, "bf16", compile_model=True))
        results["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    if args.faces:
        best_cpu_run = min(run["ms_per_frame"] for run in results["runs"] if run["variant"] == "cached fp32")
        results["face_overhead"] = face_overhead(best_cpu_run, args.repeats)
    print_table(results)
    atomic_write_text(args.output, json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


def print_table(results: dict) -> None:
    print(f"device: {results['device']}  threads: {results['threads']}  torch {results['torch']}")
    print(f"max |naive - cached| on one frame: {results['max_abs_diff_naive_vs_cached']:.2e}")
    if "max_abs_diff_naive_vs_compiled" in results:
        print(f"max |naive - compiled| on one frame: {results['max_abs_diff_naive_vs_compiled']:.2e}")
    print(f"{'variant':40s} {'batch':>5s} {'ms/frame':>10s} {'best ms':>8s} {'fps':>8s} {'latency ms':>11s}")
    for run in results["runs"]:
        print(f"{run['variant']:40s} {run['batch_size']:5d} {run['ms_per_frame']:10.1f} {run['best_ms_per_frame']:8.1f} "
              f"{run['fps']:8.2f} {run['latency_ms']:11.1f}")
    for batch, stages in results["module_ms_per_frame"].items():
        print(f"per-module ms per frame, cached fp32, batch {batch}:")
        for name, milliseconds in stages.items():
            print(f"  {name:30s} {milliseconds:8.1f}")
    if "face_overhead" in results:
        faces = results["face_overhead"]
        print(f"face crop + paste-back per frame: {faces['driving_crop_ms_per_frame']:.2f} + "
              f"{faces['paste_back_ms_per_frame']:.2f} ms = {faces['overhead_percent']:.1f}% of the model's "
              f"{faces['model_ms_per_frame']:.0f} ms")
        if "driving_detection_s_per_clip" in faces:
            print(f"driving-clip face detection (once per clip): {faces['driving_detection_s_per_clip']:.2f} s")


if __name__ == "__main__":
    sys.exit(main())
