#!/usr/bin/env python
"""Data-loading speed of one DataLoader worker for each storage format: frame folders, video files, and shards
(png, jpeg, mp4). A sample is what training reads: a (source, driving) pair or a depth triplet, decoded and resized
to the config's frame shape, with the reference augmentation (flips + colour jitter) or without it.

By default the clips are copies of a 256x256 video (VoxCeleb's crop size) under different names:

    python scripts/benchmark_data.py                                  # data/samples/driving.mp4, 8 clips
    python scripts/benchmark_data.py --video my_clip.mp4 --clips 16 --samples 64 --output data_bench.json
    python scripts/benchmark_data.py --root data/vox --index data/vox-shards/index.json   # your own data

The video decoder cache is off (cache_bytes=0): with thousands of clips a worker rarely sees a clip twice.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dagan.config import AugmentationParams  # noqa: E402
from dagan.data import DepthTripletDataset, FramesDataset, ShardSettings, make_shards  # noqa: E402
from dagan.data.shards import load_index  # noqa: E402
from dagan.io import open_video, write_png  # noqa: E402
from dagan.io.files import OutputError, atomic_write_text, guard_output  # noqa: E402

VIDEO = Path(__file__).resolve().parents[1] / "data" / "samples" / "driving.mp4"


def build_roots(video: Path, clips: int, work: Path) -> dict[str, Path]:
    """``clips`` copies of ``video``: as PNG frame folders, as mp4 files, and as png / jpeg / mp4 shards."""
    frames = open_video(video).read_all()  # (T, H, W, 3) uint8
    folders, videos = work / "folders" / "train", work / "videos" / "train"
    videos.mkdir(parents=True)
    for clip in range(clips):
        name = f"id{clip:05d}#bench#{clip:06d}#000000.mp4"
        shutil.copyfile(video, videos / name)
        (folders / name).mkdir(parents=True)
        for index, frame in enumerate(frames):
            write_png(folders / name / f"{index:07d}.png", frame)
    roots = {"folders": folders.parent, "videos": videos.parent}
    for encoding, source in (("png", "folders"), ("jpeg", "folders"), ("mp4", "videos")):
        output = work / f"shards-{encoding}"
        make_shards(roots[source], output, ShardSettings(encoding, jpeg_quality=95, shard_bytes=2 ** 30))
        roots[f"shards-{encoding}"] = output / "index.json"
    return roots


def bytes_per_sample(location: Path, frames_per_sample: int) -> float:
    """Mean bytes a sample reads: its frame files (folders), the whole file (videos, mp4 shards) or, for png/jpeg
    shards, the manifest and the frames."""
    if location.suffix == ".json":
        index = load_index(location)
        clips = [clip for shard in index.shards for clip in shard.clips]
        if index.encoding == "mp4":
            return float(np.mean([clip[3] for clip in clips]))
        total = sum(shard.num_bytes for shard in index.shards)
        frames = sum(clip[1] for clip in clips)
        return float(np.mean([clip[3] for clip in clips]) + frames_per_sample * total / frames)
    files = [path for path in location.rglob("*") if path.is_file()]
    if files and files[0].suffix == ".mp4":
        return float(np.mean([path.stat().st_size for path in files]))
    return float(frames_per_sample * np.mean([path.stat().st_size for path in files]))


def measure(location: Path, kind: str, frame_size: int, samples: int, augment: bool) -> tuple[float, float]:
    """``(samples per CPU second, samples per wall-clock second)`` of one single-threaded process (a DataLoader
    worker: torch gives each worker one thread) reading distinct keys. The first is the rate on a core of its own
    (ffmpeg's decoding time, in a child process, is added to it); the second also counts waiting for the CPU on a
    shared machine."""
    dataset_class = FramesDataset if kind == "pairs" else DepthTripletDataset
    augmentation = AugmentationParams() if augment else None
    dataset = dataset_class(location, (frame_size, frame_size, 3), id_sampling=False,
                            augmentation_params=augmentation, seed=0, cache_bytes=0,
                            format="shards" if location.suffix == ".json" else "folders")
    dataset.sample(0)  # warm-up (imports, first file)
    started, cpu_started = time.perf_counter(), cpu_seconds()
    for key in range(1, samples + 1):
        dataset.sample(key)
    return samples / (cpu_seconds() - cpu_started), samples / (time.perf_counter() - started)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the ffmpeg decoders)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Samples/s of one data worker per storage format (decode "
                                     "included).", epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=VIDEO, help="clip copied --clips times (default: the sample)")
    parser.add_argument("--clips", type=int, default=8, help="number of clips built from --video")
    parser.add_argument("--root", type=Path, help="measure this dataset root instead (frame folders or videos)")
    parser.add_argument("--index", type=Path, action="append", default=[], help="and these shard indexes")
    parser.add_argument("--frame_size", type=int, default=256, help="frame_shape height and width")
    parser.add_argument("--samples", type=int, default=32, help="samples timed per format")
    parser.add_argument("--kinds", default="pairs,triplets", help="pairs (GAN stage), triplets (depth stage)")
    parser.add_argument("--output", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)
    try:  # before any work
        guard_output(args.output, [args.video, args.root, *args.index], "--output", "JSON results")
    except OutputError as error:
        parser.error(str(error))
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dagan-data-bench-") as work:
        if args.root:
            roots = {"root": args.root, **{f"index{number}": path for number, path in enumerate(args.index)}}
        else:
            roots = build_roots(args.video, args.clips, Path(work))
        torch.set_num_threads(1)
        results = []
        print("samples/s of one worker: per CPU second (wall clock in brackets)")
        print(f"{'format':<13} {'kind':<9} {'MB/sample':>9} {'decoded':>15} {'augmented':>15}")
        for name, location in roots.items():
            for kind in args.kinds.split(","):
                frames = 2 if kind == "pairs" else 3
                decoded = measure(location, kind, args.frame_size, args.samples, augment=False)
                augmented = measure(location, kind, args.frame_size, args.samples, augment=True)
                row = {"format": name, "kind": kind, "bytes_per_sample": bytes_per_sample(location, frames),
                       "decoded_per_cpu_s": decoded[0], "decoded_per_wall_s": decoded[1],
                       "augmented_per_cpu_s": augmented[0], "augmented_per_wall_s": augmented[1]}
                results.append(row)
                print(f"{name:<13} {kind:<9} {row['bytes_per_sample'] / 1e6:>9.3f} "
                      f"{decoded[0]:>7.1f} ({decoded[1]:>5.1f}) {augmented[0]:>7.1f} ({augmented[1]:>5.1f})",
                      flush=True)
    if args.output:
        atomic_write_text(args.output, json.dumps({"cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
                                                   "frame_size": args.frame_size,
                                                   "samples": args.samples, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
