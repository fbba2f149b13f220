#!/usr/bin/env python
"""Web app: animate a portrait with a driving video in the browser (Gradio, served on 127.0.0.1 by default).

    python scripts/app.py --checkpoint checkpoints/vox.pt           # then open http://127.0.0.1:7860
    python scripts/app.py --checkpoint checkpoints/DaGAN_vox_adv_256.pth.tar \\
        --depth_checkpoint checkpoints/depth_face_model --config configs/vox-adv-256.yaml

Needs `pip install gradio==6.31.0`. The page also lists the checkpoints found in checkpoints/ and
runs/*/checkpoints/ and runs/*/models/ (the quickstart's model) under the current directory.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported (dagan.app imports it)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dagan.cli.pipeline import add_restore_arguments, restore_options  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="app.py", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="checkpoint selected at start (dagan checkpoint or "
                        "official .pth.tar); others are found in checkpoints/, runs/*/checkpoints/ and "
                        "runs/*/models/")
    parser.add_argument("--depth_checkpoint", default=None, help="folder with the official encoder.pth and "
                        "depth.pth (for official checkpoints only)")
    parser.add_argument("--config", default=None, help="model config for official checkpoints "
                        "(this project's checkpoints hold their own)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                        help="device selected at start")
    parser.add_argument("--max_upload_mb", type=float, default=200.0, help="largest accepted upload")
    parser.add_argument("--max_speech_minutes", type=float, default=10.0, help="longest speech the speech tab "
                        "accepts (a small compressed file can hold hours)")
    parser.add_argument("--max_pixels", type=int, default=None, help="largest accepted picture or video frame, in "
                        "pixels, checked before decoding (default 50 MP, or DAGAN_MAX_PIXELS)")
    parser.add_argument("--batch_size", type=int, default=None, help="driving frames per forward pass (default: the "
                        "fastest measured for the device)")
    add_restore_arguments(parser)  # --restore MODEL.onnx: every animation's face restored (as demo.py --restore)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.checkpoint is not None and not os.path.isfile(args.checkpoint):
        print(f"error: checkpoint {args.checkpoint!r} does not exist", file=sys.stderr)
        return 1
    try:
        from dagan.app import AppSettings, launch_app
    except ImportError as error:
        print(f"error: the web app needs gradio ({error}); pip install gradio==6.31.0", file=sys.stderr)
        return 1

    if args.max_pixels is not None:
        from dagan.io import set_pixel_limit

        set_pixel_limit(args.max_pixels)
    restore = restore_options(args)
    if restore is not None:
        restore.check()  # a bad model is refused before the server starts
    settings = AppSettings(checkpoint=args.checkpoint, depth_checkpoint=args.depth_checkpoint, config=args.config,
                           device=args.device, max_upload_mb=args.max_upload_mb, batch_size=args.batch_size,
                           max_speech_minutes=args.max_speech_minutes, restore=restore)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl+C: close, then delete temp files
    launch_app(settings, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
