"""Write a training dataset root into tar shards + index.json for ``dataset_params.format: shards``.

See ``dagan.data.shards``. Run ``python scripts/make_shards.py --help``.
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
from dagan.data.shards import INDEX_NAME, ShardSettings, load_index, make_shards, verify_shards  # noqa: E402

EXAMPLE = """\
layout:
  ROOT/train/<clip> and ROOT/test/<clip> (or a flat folder of clips), each <clip> a folder of frames or a video
  -> OUT/train-000000.tar ... OUT/test-000000.tar, OUT/index.json (clip name, frame count, shard, byte range)
  Each clip is one sample: its frames as <clip>/000000.png ... (tar xf gives the frame folders back) or, with
  --encoding mp4, the video file itself. Run the same command again to resume: complete shards are kept.

examples:
  python scripts/make_shards.py --root data/vox --out data/vox-shards --shard_size 1GiB --workers 8
  python scripts/make_shards.py --root data/vox --out data/vox-jpeg --encoding jpeg --quality 95
  python scripts/make_shards.py --verify data/vox-shards/index.json --decode all
  then train with dataset_params.format: shards and dataset_params.root_dir: data/vox-shards/index.json
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
        description="Write a DaGAN dataset root (frame folders or videos) into tar shards of about --shard_size "
        "with an index (resumable, parallel), then verify them.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="dataset root (dataset_params.root_dir of the folder dataset)")
    parser.add_argument("--out", help="output folder for the shards and index.json")
    parser.add_argument("--encoding", choices=("png", "jpeg", "mp4"), default="png",
                        help="png: lossless (PNG frame files are copied byte for byte); jpeg: --quality; "
                        "mp4: the video files as they are (video sources only)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality 1-100")
    parser.add_argument("--shard_size", type=byte_size, default="1GiB", help="target shard size (e.g. 1GiB)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="worker processes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the order of clips across shards")
    parser.add_argument("--verify", metavar="INDEX", help="only verify the shards of this index.json")
    parser.add_argument("--decode", choices=("none", "ends", "all"), default="ends",
                        help="frames decoded per clip by the verification pass")
    parser.add_argument("--no_verify", action="store_true", help="skip the verification pass after writing")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not args.verify and not (args.root and args.out):
        parser.error("give --root and --out (or --verify INDEX)")
    return args


def progress_bar(total: int, unit: str, disable: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, disable=disable, dynamic_ncols=True)


def verify(index: str, decode: str, no_progress: bool) -> int:
    with progress_bar(len(load_index(index).shards), "shard", no_progress) as bar:
        report = verify_shards(index, decode, progress=bar.update)
    for error in report.errors:
        print(f"error: {error}", file=sys.stderr)
    print(f"verified {report.shards} shard(s), {report.clips} clip(s), {report.frames_decoded} frame(s) decoded: "
          f"{len(report.errors)} problem(s)")
    return 1 if report.errors else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        if args.verify:
            return verify(args.verify, args.decode, args.no_progress)
        guard_output(args.out, [args.root], "--out", "shard folder", folder=True)
        guard_output(Path(args.out) / INDEX_NAME, [args.root], "--out", "shard index")
        settings = ShardSettings(args.encoding, args.quality, args.shard_size, args.seed)
        with progress_bar(None, "clip", args.no_progress) as bar:
            result = make_shards(args.root, args.out, settings, args.workers, progress=bar.update)
        print(f"{result['path']}: {result['written']} shard(s) written, {result['reused']} kept from an earlier run, "
              f"{len(result['skipped'])} unreadable clip(s) skipped")
        return 0 if args.no_verify else verify(str(Path(args.out) / INDEX_NAME), args.decode, args.no_progress)
    except (DatasetError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
