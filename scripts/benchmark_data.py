#!/usr/bin/env python
"""Data-loading speed of one DataLoader worker for each storage format: frame folders, video files, and the litdata
streaming dataset of scripts/make_shards.py (png, jpeg, mp4). A sample is what training reads: a (source, driving)
pair or a depth triplet, decoded and resized to the config's frame shape, with the reference augmentation (flips +
colour jitter) or without it.

By default the clips are copies of a 256x256 video (VoxCeleb's crop size) under different names:

    python scripts/benchmark_data.py                                  # data/samples/driving.mp4, 8 clips
    python scripts/benchmark_data.py --video my_clip.mp4 --clips 16 --samples 64 --output data_bench.json
    python scripts/benchmark_data.py --root data/vox --stream data/vox-stream   # your own data
    python scripts/benchmark_data.py --root data/vox --stream s3://bucket/vox-stream   # straight from a bucket
    python scripts/benchmark_data.py --speech                         # the speech stage's items: folder vs stream
    python scripts/benchmark_data.py --speech --root data/av --stream s3://bucket/av-stream

With --speech a sample is one prepared speech item (scripts/prepare_av.py): read and checked ("decoded"), then
also put in its training form (feature windows and split motion: "augmented"); by default --clips synthetic items
of VoxCeleb2's average length (8 s: 200 frames of 15 keypoints, 800 log-mel rows of 80 bands).

Bytes per sample are counted while reading (frame files, video files, or the litdata items a sample fetched); peak
memory is the peak resident size of a fresh process that builds the dataset and reads the samples.

The video decoder cache is off (cache_bytes=0): with thousands of clips a worker rarely sees a clip twice.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dagan.config import AugmentationParams  # noqa: E402
from dagan.data import DepthTripletDataset, FramesDataset, StreamSettings, make_stream  # noqa: E402
from dagan.io import open_video, write_png  # noqa: E402
from dagan.io.files import OutputError, atomic_write_text, guard_output  # noqa: E402

VIDEO = Path(__file__).resolve().parents[1] / "data" / "samples" / "driving.mp4"


def build_roots(video: Path, clips: int, work: Path) -> dict[str, str]:
    """``clips`` copies of ``video``: as PNG frame folders, as mp4 files, and as png / jpeg / mp4 streaming datasets."""
    frames = open_video(video).read_all()  # (T, H, W, 3) uint8
    folders, videos = work / "folders" / "train", work / "videos" / "train"
    videos.mkdir(parents=True)
    for clip in range(clips):
        name = f"id{clip:05d}#bench#{clip:06d}#000000.mp4"
        shutil.copyfile(video, videos / name)
        (folders / name).mkdir(parents=True)
        for index, frame in enumerate(frames):
            write_png(folders / name / f"{index:07d}.png", frame)
    roots = {"folders": str(folders.parent), "videos": str(videos.parent)}
    for encoding, source in (("png", "folders"), ("jpeg", "folders"), ("mp4", "videos")):
        output = work / f"stream-{encoding}"
        make_stream(roots[source], output, StreamSettings(encoding, jpeg_quality=95))
        roots[f"stream-{encoding}"] = "stream:" + str(output)
    return roots


SPEECH_FRAMES, SPEECH_KEYPOINTS, SPEECH_MELS = 200, 15, 80


def build_speech_roots(clips: int, work: Path) -> dict[str, str]:
    """``clips`` synthetic speech items (.npz, as scripts/prepare_av.py writes them) and their streaming dataset."""
    from dagan.audio.data import AVItem, save_item
    from dagan.data.stream import make_speech_stream

    items = work / "speech-items"
    for clip in range(clips):
        rng = np.random.default_rng(clip)
        keypoints = rng.uniform(-0.5, 0.5, (1, SPEECH_KEYPOINTS, 2)) + np.cumsum(
            rng.normal(0, 0.01, (SPEECH_FRAMES, SPEECH_KEYPOINTS, 2)), axis=0)
        jacobians = np.eye(2) + rng.normal(0, 0.02, (SPEECH_FRAMES, SPEECH_KEYPOINTS, 2, 2))
        save_item(items / f"id{clip:05d}_{clip:06d}.npz",
                  AVItem(keypoints.astype(np.float32), jacobians.astype(np.float32),
                         rng.normal(0, 1, (4 * SPEECH_FRAMES, SPEECH_MELS)).astype(np.float32),
                         rng.random(SPEECH_FRAMES) < 0.3, 25.0, 0))
    make_speech_stream(items, work / "speech-stream", StreamSettings("speech"))
    return {"speech-folder": str(items), "speech-stream": "stream:" + str(work / "speech-stream")}


def measure_speech(location: str, samples: int) -> dict:
    """Items per CPU / wall second of one single-threaded process: read and checked, then also in training form
    (``motion_clip``, as the speech stage prepares every item); bytes read per item; peak memory."""
    from dagan.audio.data import item_paths, load_item, motion_clip
    from dagan.data.speech import SpeechStore

    torch.set_num_threads(1)
    if location.startswith("stream:"):  # as the speech stage reads its corpus: whole chunks, in storage order
        store = SpeechStore(location.removeprefix("stream:"), cache_dir=tempfile.mkdtemp(prefix="dagan-speech-"))
        store.item(0)  # warm-up (imports, engine)

        def read_items():
            store._engine = None  # a fresh engine: chunks fetched again (its cache is per engine and folder)
            shutil.rmtree(store.cache_dir, ignore_errors=True)
            for _, (_, item) in zip(range(samples), store.read_all()):
                yield item
    else:
        paths = item_paths(location)
        store = None
        load_item(paths[0])

        def read_items():
            for number in range(samples):
                yield load_item(paths[number % len(paths)])
    samples = min(samples, len(store)) if store else samples
    result, before = {}, store.bytes_read if store else 0
    for prepare in (False, True):
        started, cpu_started = time.perf_counter(), cpu_seconds()
        for item in read_items():
            if prepare:
                motion_clip(item, 0.2, "affine")
        cpu, wall = cpu_seconds() - cpu_started, time.perf_counter() - started
        prefix = "augmented" if prepare else "decoded"
        result.update({f"{prefix}_per_cpu_s": samples / cpu, f"{prefix}_per_wall_s": samples / wall})
        if not prepare:
            result["bytes_per_sample"] = (store.bytes_read - before if store else sum(
                paths[number % len(paths)].stat().st_size for number in range(samples))) / samples
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def open_dataset(location: str, kind: str, frame_size: int, augment: bool):
    dataset_class = FramesDataset if kind == "pairs" else DepthTripletDataset
    stream = location.startswith("stream:")
    return dataset_class(location.removeprefix("stream:"), (frame_size, frame_size, 3), id_sampling=False,
                         augmentation_params=AugmentationParams() if augment else None, seed=0, cache_bytes=0,
                         format="stream" if stream else "folders")


def bytes_read(dataset, keys: range) -> float:
    """Bytes the samples ``keys`` read: the litdata items fetched (streaming), else the frame or video files."""
    store = dataset.store
    if hasattr(store, "bytes_read"):
        return float(store.bytes_read)
    total = 0
    for key in keys:
        pass_index, item = divmod(key, len(dataset))
        video = store.items[dataset.planned_videos(pass_index)[item]]
        if video.kind == "video":
            total += video.path.stat().st_size
        else:
            files = sorted(video.path.iterdir())
            total += (2 if isinstance(dataset, FramesDataset) else 3) * np.mean([path.stat().st_size for path in files])
    return float(total)


def measure(location: str, kind: str, frame_size: int, samples: int) -> dict:
    """Samples per CPU second and per wall-clock second of one single-threaded process (a DataLoader worker: torch
    gives each worker one thread) reading distinct keys (ffmpeg's decoding time, in a child process, is counted),
    without and with augmentation; bytes read per sample, and the process's peak resident memory. Run in a fresh
    process (see ``measure_in_fresh_process``)."""
    if kind == "speech":
        return measure_speech(location, samples)
    torch.set_num_threads(1)
    result = {}
    for augment in (False, True):
        dataset = open_dataset(location, kind, frame_size, augment)
        dataset.sample(0)  # warm-up (imports, first file)
        before = bytes_read(dataset, range(1)) if hasattr(dataset.store, "bytes_read") else 0.0
        started, cpu_started = time.perf_counter(), cpu_seconds()
        for key in range(1, samples + 1):
            dataset.sample(key)
        cpu, wall = cpu_seconds() - cpu_started, time.perf_counter() - started
        prefix = "augmented" if augment else "decoded"
        result.update({f"{prefix}_per_cpu_s": samples / cpu, f"{prefix}_per_wall_s": samples / wall})
        if not augment:
            result["bytes_per_sample"] = (bytes_read(dataset, range(1, samples + 1)) - before) / samples
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the ffmpeg decoders)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Samples/s of one data worker per storage format (decode "
                                     "included).", epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=VIDEO, help="clip copied --clips times (default: the sample)")
    parser.add_argument("--clips", type=int, default=8, help="number of clips built from --video")
    parser.add_argument("--root", type=Path, help="measure this dataset root instead (frame folders or videos; with "
                        "--speech a folder of prepared .npz items)")
    parser.add_argument("--speech", action="store_true", help="measure the speech stage's items instead of frames")
    parser.add_argument("--stream", action="append", default=[],
                        help="and these streaming datasets (folder or s3://, gs://, https:// URL; repeatable)")
    parser.add_argument("--frame_size", type=int, default=256, help="frame_shape height and width")
    parser.add_argument("--samples", type=int, default=32, help="samples timed per format")
    parser.add_argument("--kinds", default="pairs,triplets", help="pairs (GAN stage), triplets (depth stage)")
    parser.add_argument("--output", type=Path, help="also write the results as JSON")
    parser.add_argument("--measure_one", nargs=4, metavar=("LOCATION", "KIND", "SIZE", "SAMPLES"),
                        help=argparse.SUPPRESS)  # internal: one measurement, in a fresh process, printed as JSON
    args = parser.parse_args(argv)
    try:  # before any work
        guard_output(args.output, [args.video, args.root, *(s for s in args.stream if "://" not in s)], "--output",
                     "JSON results")
    except OutputError as error:
        parser.error(str(error))
    return args


def measure_in_fresh_process(location: str, kind: str, frame_size: int, samples: int) -> dict:
    """``measure`` in a new Python process, so that its peak memory is its own."""
    command = [sys.executable, str(Path(__file__).resolve()), "--measure_one", location, kind, str(frame_size),
               str(samples)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"measuring {location} ({kind}) failed: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.measure_one:
        location, kind, size, samples = args.measure_one
        print(json.dumps(measure(location, kind, int(size), int(samples))))
        return 0
    with tempfile.TemporaryDirectory(prefix="dagan-data-bench-") as work:
        if args.root:
            roots = {"root": str(args.root), **{f"stream{number}": f"stream:{location}"
                                                 for number, location in enumerate(args.stream)}}
        elif args.speech:
            roots = build_speech_roots(args.clips, Path(work))
        else:
            roots = build_roots(args.video, args.clips, Path(work))
        kinds = ["speech"] if args.speech else args.kinds.split(",")
        results = []
        print("samples/s of one worker: per CPU second (wall clock in brackets); peak memory of the process")
        print(f"{'format':<13} {'kind':<9} {'kB/sample':>9} {'decoded':>15} {'augmented':>15} {'peak MB':>8}")
        for name, location in roots.items():  # one fresh process per measurement: its own peak memory
            for kind in kinds:
                row = {"format": name, "kind": kind,
                       **measure_in_fresh_process(location, kind, args.frame_size, args.samples)}
                results.append(row)
                print(f"{name:<13} {kind:<9} {row['bytes_per_sample'] / 1e3:>9.1f} "
                      f"{row['decoded_per_cpu_s']:>7.1f} ({row['decoded_per_wall_s']:>5.1f}) "
                      f"{row['augmented_per_cpu_s']:>7.1f} ({row['augmented_per_wall_s']:>5.1f}) "
                      f"{row['peak_rss_mb']:>8.0f}", flush=True)
    if args.output:
        atomic_write_text(args.output, json.dumps({"cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
                                                   "frame_size": args.frame_size,
                                                   "samples": args.samples, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
