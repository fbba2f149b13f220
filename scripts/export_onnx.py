#!/usr/bin/env python
"""Export the inference networks as ONNX graphs (dynamic batch) plus manifest.json, for ONNX Runtime or OpenVINO.

    python scripts/export_onnx.py --checkpoint checkpoints/DaGAN_vox_adv_256.pth.tar \\
        --depth_checkpoint checkpoints/depth_face_model --config configs/vox-adv-256.yaml --output exported/onnx
    python demo.py --checkpoint exported/onnx --backend onnxruntime --source_image ... --driving_video ...

Writes depth.onnx, keypoints.onnx, source_encoder.onnx (per source) and generator.onnx (per frame: dense
motion, warping, occlusion, attention, decoder), batch norms folded; the relative-motion step stays outside the
graphs (see manifest.json and dagan/runtime/export.py). The graphs are checked against torch before the script
ends when onnxruntime is installed.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dagan.checkpoint import CheckpointError, is_our_checkpoint  # noqa: E402
from dagan.io.files import guard_output  # noqa: E402
from dagan.model import load_checkpoint_or_official  # noqa: E402
from dagan.config import ConfigError, load_config  # noqa: E402
from dagan.runtime.backends import BackendError  # noqa: E402
from dagan.runtime.export import ExportError, export_onnx  # noqa: E402
from dagan.runtime.verify import largest_difference  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="official DaGAN .pth.tar or a dagan checkpoint")
    parser.add_argument("--depth_checkpoint", default=None, help="folder with the official encoder.pth and depth.pth")
    parser.add_argument("--config", default=None, help="model config for an official checkpoint "
                        "(default: configs/vox-adv-256.yaml)")
    parser.add_argument("--output", required=True, help="new folder for the graphs and manifest.json")
    parser.add_argument("--no_check", action="store_true", help="skip the comparison with torch")
    args = parser.parse_args(argv)
    try:
        guard_output(args.output, [args.checkpoint, args.depth_checkpoint, args.config], "--output", "export folder",
                     folder=True)
        config = None
        if not is_our_checkpoint(args.checkpoint):
            config = load_config(args.config or os.path.join(os.path.dirname(os.path.dirname(
                os.path.abspath(__file__))), "configs", "vox-adv-256.yaml"))
        model = load_checkpoint_or_official(args.checkpoint, args.depth_checkpoint, config)
        export_onnx(model, args.output, progress=lambda name: print(f"exporting {name}...", file=sys.stderr))
        print(f"wrote {args.output}")
        if not args.no_check:
            try:
                print(f"max |onnxruntime - torch| over every graph output: {largest_difference(model, args.output):.2e}")
            except BackendError as error:
                print(f"not checked: {error}", file=sys.stderr)
    except (CheckpointError, ConfigError, ExportError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
