#!/usr/bin/env python
"""Inference speed and memory of the 256x256 DaGAN model with random weights, every path side by side.

Runs, in one process, on the same weights and inputs, with the repetitions of all variants interleaved (so that
a busy machine slows them alike):
* naive    - what the reference demo does per driving frame: source depth/keypoints/encoders recomputed,
             the 4096x4096 attention matrix materialised, the warped full-resolution image computed, batch 1;
* plain    - the pipeline before speed defaults: source cached, fused attention, NCHW, batch norms unfolded;
* default  - the pipeline as demo.py runs it with no speed flags (device defaults, batch norms folded);
* channels_last, compile (--compile), onnxruntime / openvino (--backends), and on a GPU bf16/fp16,
  channels_last + compile and CUDA graphs;
at each --batch_sizes value, checks they all give the naive path's frames, measures peak memory per frame (CPU
RSS, GPU max allocated) and the largest batch that fits 24 GiB of CPU / 80 GiB of GPU memory. --demo_frames 17
also times demo.py itself (default flags) on 1 and 17 frames of data/samples/driving.mp4 against the naive path.

    python scripts/benchmark.py --threads 2 --backends torch onnxruntime openvino --demo_frames 17
    python scripts/benchmark.py --device cuda --batch_sizes 1 8 32 --compile --output benchmark.json
On a shared machine, --clock cpu (process CPU time, with --threads 1) gives steadier ratios than wall time.

``--faces`` also times what ``demo.py --crop auto --paste_back`` adds per frame (cutting the driving face out of a
1280x720 frame, pasting the generated 256x256 face back into a 1920x1440 photo) against the default path's
per-frame time, and, separately, the face detection that plans a driving clip's crop (once per clip).

512 models: ``--config configs/vox-512.yaml`` measures a grown model the same way. ``--flops`` adds the FLOPs of one
driving frame on the default path (driving depth and keypoints, generator with the source cached; torch
FlopCounterMode, 2 x multiply-adds). ``--restore MODEL.onnx`` adds face restoration of the model's output crop
(:class:`dagan.faces.restore.FaceRestorer`: alignment, the restoration graph, blending, stabilisation) on ONNX
Runtime and OpenVINO, ms per frame and peak memory; ``--restore identity512`` times the same with a pass-through
512 graph exported on the spot, i.e. everything but a real model's own inference.

    python scripts/benchmark.py --config configs/vox-512.yaml --batch_sizes 1 --skip_naive --flops
    python scripts/benchmark.py --batch_sizes 1 --skip_naive --no_modules --restore identity512
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dagan.config import load_config  # noqa: E402
from dagan.geometry import adapt_movement_scale, normalize_keypoints, warp_by_deformation  # noqa: E402
from dagan.inference import DaGANPipeline  # noqa: E402
from dagan.io.files import OutputError, atomic_write_text, guard_output  # noqa: E402
from dagan.model import DaGAN  # noqa: E402
from dagan.runtime.backends import EXTRAS, choose_backend, default_backend  # noqa: E402
from dagan.runtime.memory import GIB, largest_batch, peak_memory, resident_bytes  # noqa: E402

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CPU_BUDGET_GIB, GPU_BUDGET_GIB = 24, 80

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "vox-adv-256.yaml")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(function: Callable, device: torch.device, repeats: int, warmup: int = 1, clock: str = "wall"
          ) -> list[float]:
    """Seconds (wall clock or process CPU time) of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        function()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = CLOCKS[clock]()
        function()
        synchronize(device)
        times.append(CLOCKS[clock]() - start)
    return times


class Frames:
    """Random but structured 256x256 inputs: a source and a pool of driving frames."""

    def __init__(self, device: torch.device, count: int, size: int = 256):
        generator = torch.Generator().manual_seed(0)
        base = torch.rand(1, 3, 32, 32, generator=generator)
        self.source = torch.nn.functional.interpolate(base, size=size, mode="bilinear", align_corners=False)
        noise = torch.rand(count, 3, size, size, generator=generator) * 0.1
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

    def __init__(self, model: Optional[DaGAN], source: torch.Tensor, initial: torch.Tensor,
                 pipeline: Optional[DaGANPipeline] = None, **options):
        self.pipeline = pipeline or DaGANPipeline(model, device=source.device, **options)
        self.state = self.pipeline.source_state(source)
        self.source, self.disparity = source, self.state.disparity
        self.kp_source, self.features = self.state.keypoints, self.state.features
        with torch.no_grad():
            self.kp_initial = self.pipeline.driving_keypoints(initial)[0]
            self.scale = adapt_movement_scale(self.kp_source, self.kp_initial)

    @torch.no_grad()
    def __call__(self, driving: torch.Tensor) -> torch.Tensor:
        kp_driving, _ = self.pipeline.driving_keypoints(driving.contiguous(
            memory_format=self.pipeline.networks.memory_format))
        kp_norm = normalize_keypoints(self.kp_source, kp_driving, self.kp_initial, use_relative_movement=True,
                                      use_relative_jacobian=True, movement_scale=self.scale)
        return self.pipeline.generate(self.state, kp_norm).prediction


@torch.no_grad()
def module_times(model: DaGAN, cached: Cached, driving: torch.Tensor, device: torch.device,
                 repeats: int, clock: str = "wall") -> dict[str, float]:
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
    return {name: 1000 * min(timed(stage, device, repeats, clock=clock)) / batch for name, stage in stages.items()}


def _up(generator, features: torch.Tensor) -> torch.Tensor:
    out = features
    for block in generator.up_blocks:
        out = block(out)
    return torch.sigmoid(generator.final(out))


def summary(name: str, batch_size: int, times: list[float]) -> dict:
    """Median and best time per frame; on a shared machine the best of several runs is the steadier figure."""
    median, best = statistics.median(times) / batch_size, min(times) / batch_size
    return {"variant": name, "batch_size": batch_size, "ms_per_frame": 1000 * median, "best_ms_per_frame": 1000 * best,
            "fps": 1.0 / median, "latency_ms": 1000 * statistics.median(times)}


def build_variants(model: DaGAN, frames: Frames, device: torch.device, args, export_dir: Optional[str]
                   ) -> dict[str, Cached]:
    """Every path to measure, by name (each a :class:`Cached` holding its own pipeline)."""
    source, initial = frames.source, frames.driving[:1]
    variants = {"plain": Cached(model, source, initial, batch_size=1, channels_last=False, fold_batch_norm=False),
                "default": Cached(model, source, initial)}
    default_channels_last = variants["default"].pipeline.networks.memory_format == torch.channels_last
    if device.type == "cpu" and not default_channels_last:
        variants["channels_last"] = Cached(model, source, initial, channels_last=True)
    if args.compile or device.type == "cuda":
        variants["compile"] = Cached(model, source, initial, compile=True)
    if device.type == "cuda":
        for precision in ("bf16", "fp16"):
            variants[precision] = Cached(model, source, initial, precision=precision, channels_last=False)
        variants["bf16 channels_last"] = Cached(model, source, initial, precision="bf16", channels_last=True)
        variants["bf16 channels_last compile"] = Cached(model, source, initial, precision="bf16",
                                                        channels_last=True, compile=True)
        variants["bf16 channels_last compile cudagraphs"] = Cached(model, source, initial, precision="bf16",
                                                                   channels_last=True, compile=True,
                                                                   cuda_graphs=True)
    for backend in args.backends:
        if backend != "torch" and export_dir is not None:
            pipeline = DaGANPipeline.from_exported(export_dir, backend, threads=torch.get_num_threads())
            variants[backend] = Cached(None, source, initial, pipeline=pipeline)
    return variants


def interleaved_times(calls: dict[tuple[str, int], Callable], device: torch.device, repeats: int, clock: str,
                      warmup: int = 2) -> dict[tuple[str, int], list[float]]:
    """Seconds of each call, the calls' repetitions interleaved (round-robin) so that load drifts hit all alike."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    synchronize(device)
    times: dict[tuple[str, int], list[float]] = {key: [] for key in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            start = CLOCKS[clock]()
            call()
            synchronize(device)
            times[key].append(CLOCKS[clock]() - start)
    return times


def memory_table(calls: dict[tuple[str, int], Callable], device: torch.device) -> dict:
    """Peak memory per frame of every (variant, batch) and, per variant, the largest batch fitting the budget."""
    rows, fits = [], {}
    for (name, batch), call in calls.items():
        peak = peak_memory(call, device)
        rows.append({"variant": name, "batch_size": batch,
                     "cpu_rss_mib_per_frame": None if peak.cpu_rss is None else peak.cpu_rss / batch / 2 ** 20,
                     "gpu_allocated_mib_per_frame": None if peak.gpu_allocated is None
                     else peak.gpu_allocated / batch / 2 ** 20,
                     "peak": peak.gpu_allocated if device.type == "cuda" else peak.cpu_rss})
    budget = (GPU_BUDGET_GIB if device.type == "cuda" else CPU_BUDGET_GIB) * GIB
    for name in dict.fromkeys(row["variant"] for row in rows):
        mine = [row for row in rows if row["variant"] == name and row["peak"] is not None]
        fits[name] = largest_batch([row["batch_size"] for row in mine], [row["peak"] for row in mine], budget,
                                   resident_bytes(device))
    for row in rows:
        row.pop("peak")
    return {"rows": rows, "largest_batch": fits,
            "budget_gib": GPU_BUDGET_GIB if device.type == "cuda" else CPU_BUDGET_GIB}


def export_for_backends(model: DaGAN, backends: list[str]) -> Optional[str]:
    """A temporary ONNX export when a non-torch backend is asked for and installed (skipped ones are named)."""
    wanted = []
    for backend in backends:
        if backend == "torch":
            continue
        if importlib.util.find_spec(backend) is None:
            extra = EXTRAS[backend]
            print(f"skipping --backends {backend}: not installed (pip install -e \".[{extra}]\")", file=sys.stderr)
            continue
        wanted.append(backend)
    backends[:] = ["torch"] + wanted
    if not wanted:
        return None
    from dagan.runtime.export import export_onnx

    directory = os.path.join(tempfile.mkdtemp(prefix="dagan-benchmark-"), "onnx")
    print("exporting to ONNX...", file=sys.stderr)
    export_onnx(model, directory)
    return directory


DEMO_VARIANTS = {"demo.py": [], "demo.py --backend torch": ["--backend", "torch"]}  # default flags, and torch


def demo_timing(model: DaGAN, frame_count: int, repeats: int, clock: str, variants: dict[str, list[str]]) -> dict:
    """Per-frame time of ``demo.py`` with each variant's flags (``DEMO_VARIANTS``: the default flags, whose backend
    is "auto", and ``--backend torch``) from 1- and ``frame_count``-frame runs (loading cancels out), and of the
    naive path on the same frames, interleaved, on data/samples (frames written as PNG folders)."""
    from PIL import Image

    from dagan.cli.demo import main as demo_main
    from dagan.io import open_video, read_image

    samples = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "samples")
    work = tempfile.mkdtemp(prefix="dagan-demo-benchmark-")
    previous_cache = os.environ.get("DAGAN_CACHE")
    try:
        checkpoint = os.path.join(work, "model.pt")
        model.save(checkpoint)
        frames = [frame for _, frame in zip(range(frame_count), open_video(os.path.join(samples, "driving.mp4")))]
        for count in (1, frame_count):
            os.makedirs(os.path.join(work, f"driving{count}"))
            for index, frame in enumerate(frames[:count]):
                Image.fromarray(frame).save(os.path.join(work, f"driving{count}", f"{index:03d}.png"))
        source_path = os.path.join(samples, "source.png")

        def demo(count: int, flags: list[str]) -> None:
            demo_main(["--checkpoint", checkpoint, "--source_image", source_path, "--driving_video",
                       os.path.join(work, f"driving{count}"), "--result_video", os.path.join(work, f"out{count}/"),
                       "--relative", "--adapt_scale", "--no_audio", *flags])
            shutil.rmtree(os.path.join(work, f"out{count}"))

        pipeline = DaGANPipeline(model, device="cpu", batch_size=1, fold_batch_norm=False)
        source = pipeline.to_tensor([read_image(source_path)])
        driving = pipeline.to_tensor(frames)

        def naive(count: int) -> None:
            for index in range(count):
                naive_frame(model, source, driving[index:index + 1], driving[:1])

        os.environ["DAGAN_CACHE"] = os.path.join(work, "cache")  # the default backend's export, made once here
        calls = {("naive", 1): lambda: naive(1), ("naive", frame_count): lambda: naive(frame_count)}
        for name, flags in variants.items():
            demo(1, flags)  # untimed: one-off work (the export of --backend auto) stays out of the 1-frame time
            for count in (1, frame_count):
                calls[(name, count)] = lambda count=count, flags=flags: demo(count, flags)
        times = interleaved_times(calls, torch.device("cpu"), repeats, clock, warmup=0)
    finally:
        if previous_cache is None:
            os.environ.pop("DAGAN_CACHE", None)
        else:
            os.environ["DAGAN_CACHE"] = previous_cache
        shutil.rmtree(work, ignore_errors=True)
    names = ["naive", *variants]
    per_frame = {name: 1000 * min((long - short) / (frame_count - 1) for short, long in
                                  zip(times[(name, 1)], times[(name, frame_count)])) for name in names}
    backend = default_backend()
    if backend == "auto":
        backend = choose_backend(torch.device("cpu"), model).backend
    return {"frames": frame_count, "repeats": repeats, "default_backend": backend,
            "naive_ms_per_frame": per_frame["naive"],
            "variants": {name: {"flags": variants[name], "ms_per_frame": per_frame[name],
                                "ratio": per_frame[name] / per_frame["naive"]} for name in variants}}


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


@torch.no_grad()
def frame_flops(cached: "Cached", driving: torch.Tensor) -> float:
    """GFLOP of one driving frame on the cached path (what demo.py runs per frame)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        cached(driving[:1])
    return counter.get_total_flops() / 1e9


class _PassThrough(torch.nn.Module):
    """The identity restoration model: (1, 3, S, S) in [-1, 1] -> the same."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image.clamp(-1, 1)


def identity_restorer(folder: str, size: int = 512) -> str:
    """A pass-through restoration graph (1, 3, size, size) -> the same, exported into ``folder``."""
    path = os.path.join(folder, f"identity{size}.onnx")
    torch.onnx.export(_PassThrough(), (torch.zeros(1, 3, size, size),), path,
                      input_names=["input"], output_names=["output"], opset_version=17, dynamo=False)
    return path


def restoration_timing(path: str, crop_size: tuple[int, int], repeats: int) -> dict:
    """ms per frame and peak resident memory of restoring one animated crop, per runtime (ONNX Runtime, OpenVINO)."""
    import numpy as np

    from dagan.faces.restore import FaceRestorer, RestorationModel

    folder = tempfile.mkdtemp(prefix="dagan-restore-")
    try:
        if path == "identity512":
            path = identity_restorer(folder)
        crop = np.random.default_rng(0).integers(0, 256, (*crop_size, 3), dtype=np.uint8)
        result = {"model": os.path.basename(path), "crop": list(crop_size)}
        for runtime in ("onnxruntime", "openvino"):
            if importlib.util.find_spec(runtime) is None:
                continue
            before = resident_bytes(torch.device("cpu"))
            restorer = FaceRestorer(RestorationModel(path, runtime), crop_size)
            seconds = min(timed(lambda: restorer(crop), torch.device("cpu"), repeats))
            result[runtime] = {"signature": restorer.model.signature.name, "ms_per_frame": 1000 * seconds,
                               "resident_mib_added": (resident_bytes(torch.device("cpu")) - before) / 2 ** 20}
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", default=CONFIG, help="model config (default: configs/vox-adv-256.yaml)")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=None, help="default: 1 2 8 (CPU), 1 8 32 (GPU)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clock", default="wall", choices=sorted(CLOCKS), help="wall clock, or process CPU time "
                        "(steadier on a shared machine; use with --threads 1)")
    parser.add_argument("--skip_naive", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (on GPUs it always runs)")
    parser.add_argument("--backends", nargs="+", default=["torch"], choices=["torch", "onnxruntime", "openvino"],
                        help="runtimes measured side by side (ONNX graphs exported to a temporary folder)")
    parser.add_argument("--no_memory", action="store_true", help="skip the peak-memory pass")
    parser.add_argument("--no_modules", action="store_true", help="skip the per-module timings")
    parser.add_argument("--demo_frames", type=int, default=0, help="also time demo.py on 1 and N frames (e.g. 17)")
    parser.add_argument("--demo_repeats", type=int, default=2)
    parser.add_argument("--faces", action="store_true", help="also time the face crop and paste-back per frame "
                        "(demo.py --crop auto) against the model")
    parser.add_argument("--flops", action="store_true", help="also count the FLOPs of one driving frame")
    parser.add_argument("--restore", default=None, metavar="MODEL.onnx",
                        help="also time face restoration of the output crop with this ONNX model (identity512: a "
                        "pass-through 512 graph, i.e. everything but the model's own inference)")
    parser.add_argument("--output", default="benchmark.json")
    args = parser.parse_args(argv)
    try:  # before any work
        guard_output(args.output, [args.config], "--output", "JSON results")
    except OutputError as error:
        parser.error(str(error))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch_sizes = args.batch_sizes or ([1, 8, 32] if device.type == "cuda" else [1, 2, 8])
    torch.manual_seed(0)
    model = DaGAN(load_config(args.config)).eval().to(device)
    frames = Frames(device, max(batch_sizes) + 1, model.config.dataset_params.frame_shape[0])
    results: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or
                     platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                     "clock": args.clock, "load_average": os.getloadavg(), "runs": []}

    # Build every path; check they give the naive path's frames.
    export_dir = export_for_backends(model.cpu(), args.backends) if device.type == "cpu" else \
        export_for_backends(model, args.backends)
    model = model.to(device)
    variants = build_variants(model, frames, device, args, export_dir)
    naive = naive_frame(model, frames.source, frames.driving[1:2], frames.driving[:1])
    results["max_abs_diff_vs_naive"] = {name: float((naive - variant(frames.driving[1:2]).float()).abs().max())
                                        for name, variant in variants.items()}

    # Time them, interleaved.
    calls = {(name, batch): (lambda variant=variant, batch=batch: variant(frames.driving[:batch]))
             for name, variant in variants.items() for batch in batch_sizes}
    if not args.skip_naive:
        calls[("naive", 1)] = lambda: naive_frame(model, frames.source, frames.driving[1:2], frames.driving[:1])
    times = interleaved_times(calls, device, args.repeats, args.clock)
    results["runs"] = [summary(name, batch, seconds) for (name, batch), seconds in times.items()]
    if not args.no_memory:  # after the timings: it makes the allocator return memory at once (slower allocations)
        results["memory"] = memory_table(calls, device)
    if args.flops:
        results["gflop_per_frame"] = frame_flops(variants["plain"], frames.driving)
    if args.restore is not None:
        size = tuple(model.config.dataset_params.frame_shape[:2])
        results["restoration"] = restoration_timing(args.restore, size, args.repeats)
    if not args.no_modules and model.highres_levels:
        print("per-module timings cover released-size models only; skipped", file=sys.stderr)
    elif not args.no_modules:
        results["module_ms_per_frame"] = {str(batch): module_times(model, variants["plain"], frames.driving[:batch],
                                                                   device, args.repeats, args.clock)
                                          for batch in batch_sizes[:1]}
    if args.demo_frames > 1 and device.type == "cpu":
        results["demo"] = demo_timing(model, args.demo_frames, args.demo_repeats, args.clock, DEMO_VARIANTS)
    if args.faces:
        default = min(run["best_ms_per_frame"] for run in results["runs"] if run["variant"] == "default")
        results["face_overhead"] = face_overhead(default, args.repeats)
    if export_dir is not None:
        shutil.rmtree(os.path.dirname(export_dir), ignore_errors=True)
    print_table(results)
    atomic_write_text(args.output, json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


def print_table(results: dict) -> None:
    print(f"device: {results['device']}  threads: {results['threads']}  torch {results['torch']}  clock: "
          f"{results['clock']}  load average at start: {', '.join(f'{x:.1f}' for x in results['load_average'])}")
    print("max |variant - naive| on one frame: " + ", ".join(f"{name} {diff:.1e}" for name, diff in
                                                              results["max_abs_diff_vs_naive"].items()))
    naive = next((run["best_ms_per_frame"] for run in results["runs"] if run["variant"] == "naive"), None)
    print(f"{'variant':40s} {'batch':>5s} {'ms/frame':>10s} {'best ms':>8s} {'x naive':>8s} {'fps':>8s}")
    for run in sorted(results["runs"], key=lambda run: (run["variant"] != "naive", run["variant"], run["batch_size"])):
        ratio = f"{run['best_ms_per_frame'] / naive:8.2f}" if naive else f"{'':8s}"
        print(f"{run['variant']:40s} {run['batch_size']:5d} {run['ms_per_frame']:10.1f} {run['best_ms_per_frame']:8.1f} "
              f"{ratio} {run['fps']:8.2f}")
    if "memory" in results:
        memory = results["memory"]
        print(f"peak memory per frame (MiB) and the largest batch within {memory['budget_gib']} GiB:")
        for row in memory["rows"]:
            cpu, gpu = row["cpu_rss_mib_per_frame"], row["gpu_allocated_mib_per_frame"]
            print(f"  {row['variant']:38s} {row['batch_size']:5d}  cpu rss {'-' if cpu is None else f'{cpu:8.1f}'}"
                  f"  gpu {'-' if gpu is None else f'{gpu:8.1f}'}")
        print("  largest batch: " + ", ".join(f"{name} {fit}" for name, fit in memory["largest_batch"].items()))
    for batch, stages in results.get("module_ms_per_frame", {}).items():
        print(f"per-module ms per frame, plain fp32, batch {batch}:")
        for name, milliseconds in stages.items():
            print(f"  {name:30s} {milliseconds:8.1f}")
    if "demo" in results:
        demo = results["demo"]
        print(f"demo.py on {demo['frames']} frames (naive {demo['naive_ms_per_frame']:.0f} ms/frame; best of "
              f"{demo['repeats']}; default backend: {demo['default_backend']}):")
        for name, variant in demo["variants"].items():
            print(f"  {name:28s} {variant['ms_per_frame']:6.0f} ms/frame  {variant['ratio']:.2f}x naive")
    if "gflop_per_frame" in results:
        print(f"GFLOP per driving frame (default path, source cached): {results['gflop_per_frame']:.1f}")
    if "restoration" in results:
        restoration = results["restoration"]
        for runtime in ("onnxruntime", "openvino"):
            if runtime in restoration:
                row = restoration[runtime]
                print(f"restoration ({restoration['model']}, {row['signature']}) of a {restoration['crop'][0]}x"
                      f"{restoration['crop'][1]} crop on {runtime}: {row['ms_per_frame']:.1f} ms/frame, "
                      f"+{row['resident_mib_added']:.0f} MiB resident")
    if "face_overhead" in results:
        faces = results["face_overhead"]
        print(f"face crop + paste-back per frame: {faces['driving_crop_ms_per_frame']:.2f} + "
              f"{faces['paste_back_ms_per_frame']:.2f} ms = {faces['overhead_percent']:.1f}% of the model's "
              f"{faces['model_ms_per_frame']:.0f} ms")
        if "driving_detection_s_per_clip" in faces:
            print(f"driving-clip face detection (once per clip): {faces['driving_detection_s_per_clip']:.2f} s")


if __name__ == "__main__":
    sys.exit(main())
