"""Write a training dataset root as a litdata streaming dataset for ``dataset_params.format: stream``.

See ``dagan.data.stream``. Run ``python scripts/make_shards.py --help``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dagan.data.frames import DatasetError  # noqa: E402
from dagan.io.files import guard_output  # noqa: E402
from dagan.data.stream import (CLIPS_NAME, DATASET_NAME, StreamSettings, convert_tar_shards, join,  # noqa: E402
                               make_speech_stream, make_stream, read_metadata, verify_stream)

EXAMPLE = """\
layout:
  ROOT/train/<clip> and ROOT/test/<clip> (or a flat folder of clips), each <clip> a folder of frames or a video
  -> OUT/dataset.json, OUT/train/ and OUT/test/: litdata chunks (one item per frame: its PNG/JPEG bytes and a
  digest; with --encoding mp4 one item per video file), litdata's index.json and clips.json (name, frame count,
  fps, first item of every clip; SHA-256 of every chunk). Run the same command again to resume: finished parts
  are kept. --speech ITEMS: the <clip>.npz items of scripts/prepare_av.py, one item of plain arrays each
  (keypoints, jacobians, mel, silence, fps, offset and a digest), for the speech stage. Copy OUT as it is
  to a bucket (aws s3 sync OUT s3://bucket/vox) to train from there.

examples:
  python scripts/make_shards.py --root data/vox --out data/vox-stream --workers 8
  python scripts/make_shards.py --root data/vox --out data/vox-jpeg --encoding jpeg --quality 95
  python scripts/make_shards.py --verify data/vox-stream --decode all
  python scripts/make_shards.py --verify s3://bucket/vox-stream
  python scripts/make_shards.py --convert data/vox-shards/index.json --out data/vox-stream
  python scripts/make_shards.py --speech data/av --out data/av-stream     (then audio_train_params.data_dir)
  then train with dataset_params.format: stream and dataset_params.root_dir: data/vox-stream (or the s3:// URL)
"""
UNITS = {"": 1, "b": 1, "k": 10 ** 3, "kb": 10 ** 3, "m": 10 ** 6, "mb": 10 ** 6, "g": 10 ** 9, "gb": 10 ** 9,
         "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30}


def byte_size(text: str) -> int:
    """'1GiB', '500MB', '4096' -> bytes."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1GiB, 500MB, 4096)")
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write a DaGAN dataset root (frame folders or videos) as a litdata streaming dataset "
        "(resumable, parallel), convert old tar shards, or verify a dataset on disk or in an object store.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="dataset root (dataset_params.root_dir of the folder dataset)")
    parser.add_argument("--out", help="output folder of the streaming dataset (empty, or an earlier run's to resume)")
    parser.add_argument("--encoding", choices=("png", "jpeg", "mp4"), default="png",
                        help="png: lossless (PNG frame files are copied byte for byte); jpeg: --quality; "
                        "mp4: the video files as they are (video sources only)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality 1-100")
    parser.add_argument("--chunk_size", type=byte_size, default="64MiB", help="litdata chunk size (e.g. 64MiB)")
    parser.add_argument("--part_size", type=byte_size, default="1GiB",
                        help="clips written by one worker job, the unit an interrupted run resumes from")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="worker processes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the order of clips across parts")
    parser.add_argument("--convert", metavar="INDEX",
                        help="write the dataset of this old tar-shard index.json (format dagan-shards) to --out")
    parser.add_argument("--speech", metavar="ITEMS",
                        help="write the prepared speech items of this folder (scripts/prepare_av.py) to --out")
    parser.add_argument("--verify", metavar="DATASET",
                        help="only verify this dataset (a folder or an s3://, gs://, azure://, https:// URL)")
    parser.add_argument("--decode", choices=("none", "ends", "all"), default="ends",
                        help="frames decoded per clip by the verification pass")
    parser.add_argument("--no_verify", action="store_true", help="skip the verification pass after writing")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not args.verify and not (sum(map(bool, (args.root, args.convert, args.speech))) == 1 and args.out):
        parser.error("give --root and --out, --convert INDEX and --out, --speech ITEMS and --out, or --verify DATASET")
    return args


def progress_bar(total: int, unit: str, disable: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, disable=disable, dynamic_ncols=True)


def verify(dataset: str, decode: str, no_progress: bool) -> int:
    chunks = sum(len(read_metadata(join(dataset, split), CLIPS_NAME)["sha256"])
                 for split in read_metadata(dataset, DATASET_NAME)["splits"])
    with progress_bar(chunks, "chunk", no_progress) as bar:
        report = verify_stream(dataset, decode, progress=bar.update)
    for error in report.errors:
        print(f"error: {error}", file=sys.stderr)
    print(f"verified {report.chunks} chunk(s), {report.clips} clip(s), {report.frames_decoded} frame(s) decoded: "
          f"{len(report.errors)} problem(s)")
    return 1 if report.errors else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        if args.verify:
            return verify(args.verify, args.decode, args.no_progress)
        inputs = [args.root, args.convert, args.speech]
        guard_output(args.out, inputs, "--out", "dataset folder", folder=True)
        guard_output(Path(args.out) / DATASET_NAME, inputs, "--out", "dataset index")
        with progress_bar(None, "clip", args.no_progress) as bar:
            if args.speech:
                settings = StreamSettings("speech", chunk_bytes=args.chunk_size, part_bytes=args.part_size,
                                          seed=args.seed)
                result = make_speech_stream(args.speech, args.out, settings, args.workers, progress=bar.update)
            elif args.convert:
                result = convert_tar_shards(args.convert, args.out, args.workers, args.chunk_size, bar.update)
            else:
                settings = StreamSettings(args.encoding, args.quality, args.chunk_size, args.part_size, args.seed)
                result = make_stream(args.root, args.out, settings, args.workers, progress=bar.update)
        print(f"{result['path']}: {result['written']} part(s) written, {result['reused']} kept from an earlier run, "
              f"{len(result['skipped'])} unreadable clip(s) skipped")
        return 0 if args.no_verify else verify(str(args.out), args.decode, args.no_progress)
    except (DatasetError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
