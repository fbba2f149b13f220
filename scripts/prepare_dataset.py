"""Turn a folder of raw videos into the training layout ROOT/{train,test}/<identity>#<video>#<k>.

See ``dagan.data.prepare.prepare_dataset``. Run ``python scripts/prepare_dataset.py --help``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dagan.data import prepare  # noqa: E402
from dagan.faces import tubes as crop  # noqa: E402
from dagan.faces import MissingFaceBackend  # noqa: E402
from dagan.io.files import guard_output  # noqa: E402

EXAMPLE = """\
layout:
  RAW_DIR/<person>/<any/sub/path>.mp4   identity = <person> (the top-level folder under RAW_DIR)
  RAW_DIR/<video>.mp4                   identity = <video> (the file stem), when the file sits directly in RAW_DIR
  -> ROOT/train/<identity>#<video>#<k>.mp4 and ROOT/test/... (one clip per face tube, k = 0, 1, ...);
     with --format png, ROOT/<split>/<identity>#<video>#<k>/000000.png, 000001.png, ...
  All clips of an identity go to the same split (chosen with --seed). ROOT/.prepare_state.json records
  finished videos: run the same command again to resume; finished videos are skipped.

example:
  python scripts/prepare_dataset.py --inp raw_videos/ --out data/mydataset --min_frames 64 --workers 4
  then train with dataset_params.root_dir: data/mydataset
"""


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Crop every face tube of a folder of raw videos into a DaGAN training dataset with an "
        "identity-aware train/test split (resumable, parallel).",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inp", required=True, help="folder of raw videos (per-person subfolders or flat)")
    parser.add_argument("--out", required=True, help="dataset root: ROOT/train and ROOT/test are written")
    parser.add_argument("--format", choices=("mp4", "png"), default="mp4",
                        help="mp4 clips (H.264 with audio) or folders of PNG frames")
    parser.add_argument("--test_fraction", type=float, default=0.1, help="fraction of identities in test/")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="worker processes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the identity split")
    crop.add_crop_arguments(parser)
    parser.add_argument("--no_audio", action="store_true", help="write mp4 clips without audio")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        guard_output(args.out, [args.inp], "--out", "dataset folder", folder=True)
        settings = crop.crop_settings(args)
        crop.build_analyzer(args.backend)  # fail early, with install instructions, if no backend is there
        summary = prepare.prepare_dataset(args.inp, args.out, args.format, args.test_fraction, args.workers, settings,
                                       args.seed, args.backend, keep_audio=not args.no_audio,
                                       progress=not args.no_progress)
    except (MissingFaceBackend, ValueError) as error:  # MediaError and bad crop settings are ValueErrors
        print(error, file=sys.stderr)
        return 2
    print(summary)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
