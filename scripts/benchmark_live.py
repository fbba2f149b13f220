#!/usr/bin/env python
"""Live speed: a video played as a camera through scripts/live.py's loop, per model size and backend.

For each model (--configs: random weights; the speed does not depend on them) and each --backends entry, the clip
is played in real time at its frame rate (a camera) for --seconds, through the same objects scripts/live.py
builds (newest-frame slot, face tracking, batch-1 animation, paste-back), and reported: sustained fps, end-to-end
latency p50/p95 (capture to frame shown), frames dropped, and the mean time of each stage (capture, track,
keypoints, generator, paste, output); "compute" is keypoints + generator, "faces share" the tracking and
paste-back's share of the frame time, and "CPU ms/frame" the process CPU time per shown frame (all threads, capture
included): on a shared machine it tells what an idle one would do.

    python scripts/benchmark_live.py --threads 2                     # tiny and full-size, torch and OpenVINO
    python scripts/benchmark_live.py --configs vox-adv-256.yaml --backends torch openvino openvino-int8 --seconds 20
    python scripts/benchmark_live.py --device cuda --backends torch --precision fp16 --compile
    python scripts/benchmark_live.py --threads 1 --speech_minutes 30   # live speech: cost per chunk over a session

--speech_minutes streams that many minutes of noise through the streaming speech model (the default audio model,
random weights, 40 ms pieces as from a microphone) instead, and reports the CPU time per chunk in the first and the
last minute and the most audio it kept: a long session should cost what a short one does.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_checkpoint(config_name: str, folder: str) -> str:
    """A seeded random model of ``configs/<config_name>`` in our checkpoint format."""
    import torch

    from dagan.config import load_config
    from dagan.model import DaGAN

    path = os.path.join(folder, config_name.replace(".yaml", ".pt"))
    torch.manual_seed(0)
    DaGAN(load_config(os.path.join(REPO_ROOT, "configs", config_name))).save(path)
    return path


def measure(checkpoint: str, backend: str, args: argparse.Namespace) -> dict:
    """One live run (scripts/live.py's objects, no window) and its statistics."""
    from dagan.cli.live import build_parser, driving_tracker, open_source, source_animator
    from dagan.cli.pipeline import load_pipeline
    from dagan.inference import int8_pipeline
    from dagan.io import read_image_uint8
    from dagan.live import CaptureThread, LiveLoop
    from dagan.model import load_checkpoint_or_official

    flags = ["--source_image", args.source_image, "--checkpoint", checkpoint, "--driving_video", args.driving_video,
             "--realtime", "--loop", "--backend", backend.replace("-int8", ""), "--device", args.device,
             "--precision", args.precision, *(["--fps", str(args.input_fps)] if args.input_fps else []),
             "--driving_crop", args.driving_crop, *(["--compile"] if args.compile else [])]
    live_args = build_parser().parse_args(flags)
    psnr = None
    if backend == "openvino-int8":  # timed whatever its PSNR (random weights); the PSNR is reported beside it
        pipeline, psnr = int8_pipeline(load_checkpoint_or_official(checkpoint), read_image_uint8(args.source_image),
                                       *calibration_frames(args.driving_video), min_psnr=float("-inf"))
    else:
        pipeline = load_pipeline(live_args)
    animator = source_animator(live_args, pipeline)
    for _ in range(3):
        animator.warm_up()
    tracker = driving_tracker(live_args)
    capture = CaptureThread(open_source(live_args))
    loop = LiveLoop(capture.slot, tracker, animator)
    capture.start()
    loop.wait_for_face(10.0)
    cpu_started = time.process_time()
    timer = __import__("threading").Timer(args.seconds, loop.stop)
    timer.start()
    try:
        stats = loop.run()
    finally:
        timer.cancel()
        capture.stop()
    cpu_seconds = time.process_time() - cpu_started
    summary = stats.summary()
    summary["cpu_ms_per_frame"] = 1000 * cpu_seconds / max(summary["frames_shown"] - 1, 1)
    stages = summary["stage_ms"]
    frame_ms = sum(stages[stage] for stage in ("track", "keypoints", "generator", "paste", "output"))
    summary["compute_ms"] = stages["keypoints"] + stages["generator"]
    summary["faces_share"] = (stages["track"] + stages["paste"]) / frame_ms if frame_ms else 0.0
    summary["input_fps"] = capture.source.fps
    summary["int8_psnr_db"] = psnr
    return summary


def measure_speech(minutes: float) -> dict:
    """``minutes`` of noise through StreamingMotion as a microphone: CPU ms per chunk (median) in the first and the
    last minute, the most audio kept (seconds), and the wall time."""
    import statistics

    import numpy as np
    import torch

    from dagan.audio.decode import SAMPLE_RATE
    from dagan.audio.model import AudioDrivenModel
    from dagan.audio.streaming import StreamingMotion
    from dagan.config import load_config

    torch.manual_seed(0)
    config = load_config(os.path.join(REPO_ROOT, "configs", "vox-adv-256.yaml"))
    stream = StreamingMotion(AudioDrivenModel(config, config.model_params.common_params.num_kp).eval())
    random, piece = np.random.default_rng(0), int(0.04 * SAMPLE_RATE)
    per_minute: dict[int, list[float]] = {}
    kept, started = 0, time.perf_counter()
    while stream.received < minutes * 60 * SAMPLE_RATE:
        samples = (0.1 * random.standard_normal(piece)).astype(np.float32)
        begin = time.process_time()
        chunks = len(list(stream.push(samples))) / stream.chunk_frames
        if chunks:
            minute = int(stream.received / SAMPLE_RATE // 60)
            per_minute.setdefault(minute, []).append((time.process_time() - begin) / chunks)
        kept = max(kept, len(stream.samples))
    first, last = per_minute[min(per_minute)], per_minute[max(per_minute)]
    return {"minutes": minutes, "first_minute_ms_per_chunk": 1000 * statistics.median(first),
            "last_minute_ms_per_chunk": 1000 * statistics.median(last), "kept_seconds": kept / SAMPLE_RATE,
            "wall_s": time.perf_counter() - started}


def calibration_frames(video: str) -> tuple[list, list]:
    """scripts/live.py's INT8 calibration split of a clip: even frames calibrate, odd ones are held out."""
    from dagan.cli.live import CALIBRATION_FRAMES
    from dagan.io import open_video

    frames = [frame for _, frame in zip(range(CALIBRATION_FRAMES), open_video(video))]
    return frames[0::2], frames[1::2]


def print_table(results: list[dict]) -> None:
    print("| model | backend | fps | latency p50 / p95 (ms) | dropped | capture | track | keypoints | generator | "
          "paste | output | compute (ms) | faces share | CPU ms/frame |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in results:
        stage = row["stage_ms"]
        print(f"| {row['model']} | {row['backend']} | {row['fps']:.1f} | {row['latency_p50_ms']:.0f} / "
              f"{row['latency_p95_ms']:.0f} | {row['frames_dropped']} of {row['frames_captured']} | "
              + " | ".join(f"{stage[name]:.1f}" for name in ("capture", "track", "keypoints", "generator", "paste",
                                                              "output"))
              + f" | {row['compute_ms']:.1f} | {100 * row['faces_share']:.0f}% | {row['cpu_ms_per_frame']:.0f} |"
              + (f" INT8 PSNR {row['int8_psnr_db']:.1f} dB" if row.get("int8_psnr_db") is not None else ""))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="benchmark_live.py", description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["tiny.yaml", "vox-adv-256.yaml"],
                        help="model configs in configs/ (random weights); default: tiny and full-size")
    parser.add_argument("--backends", nargs="+", default=["torch", "openvino"],
                        choices=["torch", "onnxruntime", "openvino", "openvino-int8"],
                        help="runtimes to time (default: torch openvino); openvino-int8 quantises with NNCF first "
                        "(the [int8] extra) and reports its PSNR against fp32")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="torch on CUDA only")
    parser.add_argument("--compile", action="store_true", help="torch.compile the per-frame networks (torch)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per run (default 15)")
    parser.add_argument("--source_image", default=os.path.join(REPO_ROOT, "data", "samples", "source.png"))
    parser.add_argument("--driving_video", default=os.path.join(REPO_ROOT, "data", "samples", "driving.mp4"),
                        help="the clip played as a camera (looped), at its own frame rate")
    parser.add_argument("--input_fps", type=float, default=None, help="play the clip at this rate instead of its own "
                        "(e.g. 30, to see whether a model keeps up with more than 25 fps)")
    parser.add_argument("--driving_crop", default="track", choices=["track", "none"],
                        help="track (default): follow the face as live.py does")
    parser.add_argument("--speech_minutes", type=float, default=None, metavar="MINUTES", help="instead: stream "
                        "this many minutes of audio through the streaming speech model and report its cost per chunk "
                        "in the first and the last minute")
    parser.add_argument("--output", default="benchmark_live.json", help="where the figures are written (JSON)")
    args = parser.parse_args(argv)

    import torch

    from dagan.io.files import atomic_write_text

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.speech_minutes is not None:
        row = measure_speech(args.speech_minutes)
        atomic_write_text(args.output, json.dumps({"threads": torch.get_num_threads(), "speech": row}, indent=2))
        print(f"speech, {args.speech_minutes:g} min: {row['first_minute_ms_per_chunk']:.1f} ms per chunk in the first "
              f"minute, {row['last_minute_ms_per_chunk']:.1f} ms in the last; at most {row['kept_seconds']:.2f} s of "
              f"audio kept ({row['wall_s']:.0f} s wall, CPU times); written to {args.output}")
        return 0
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for config_name in args.configs:
            checkpoint = random_checkpoint(config_name, folder)
            for backend in args.backends:
                row = {"model": config_name, "backend": backend, **measure(checkpoint, backend, args)}
                print(json.dumps(row), file=sys.stderr)
                results.append(row)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    atomic_write_text(args.output, json.dumps({"threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                                               "load_average": load, "runs": results}, indent=2))
    print_table(results)
    print(f"\n{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, load average {load}; "
          f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
