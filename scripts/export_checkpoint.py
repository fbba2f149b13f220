#!/usr/bin/env python
"""Export a training checkpoint for inference: this project's format without optimiser state, and/or the official
DaGAN release layout (main .pth.tar + depth/encoder.pth + depth/depth.pth) that the reference demo also reads.

    python scripts/export_checkpoint.py --checkpoint runs/vox/checkpoints/00100000.pt \\
        --inference exported/dagan.pt --official exported/release
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dagan.checkpoint import CheckpointError, export_official  # noqa: E402
from dagan.io.files import OutputError, guard_output  # noqa: E402
from dagan.model import DaGAN  # noqa: E402


def check_outputs(args: argparse.Namespace) -> None:
    """Before any work: no output replaces the checkpoint, another output or a file this project did not write."""
    guard_output(args.inference, [args.checkpoint], "--inference", "inference checkpoint")
    if args.official is not None:
        guard_output(args.official, [args.checkpoint], "--official", "release folder", folder=True)
        for name in (args.name, os.path.join("depth", "encoder.pth"), os.path.join("depth", "depth.pth")):
            guard_output(os.path.join(args.official, name), [args.checkpoint], "--official", "release file",
                         others=[("--inference", args.inference)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by train.py (or any dagan checkpoint)")
    parser.add_argument("--inference", default=None, help="write an inference checkpoint (networks + config) here")
    parser.add_argument("--official", default=None, help="write the official release layout into this folder")
    parser.add_argument("--name", default="checkpoint.pth.tar", help="file name of the official main checkpoint")
    args = parser.parse_args(argv)
    if args.inference is None and args.official is None:
        parser.error("give --inference PATH and/or --official DIR")
    try:
        check_outputs(args)
        model = DaGAN.from_checkpoint(args.checkpoint)
        if args.inference is not None:
            model.save(args.inference, step=0)
            print(f"inference checkpoint: {args.inference}")
        if args.official is not None:
            for name, path in export_official(model, args.official, name=args.name).items():
                print(f"official {name}: {path}")
    except (CheckpointError, OutputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
