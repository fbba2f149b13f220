"""Turn talking-face videos with speech into training items for the audio model (``train_params.stage: audio``).

See ``dagan.audio.prepare``. Run ``python scripts/prepare_av.py --help``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

EXAMPLE = """\
example (clips cropped with scripts/prepare_dataset.py, keypoints from the DaGAN checkpoint the audio model
will drive):
  python scripts/prepare_av.py --inp data/vox/train --out data/av --checkpoint checkpoints/DaGAN_vox_adv_256.pth.tar \\
      --depth_checkpoint checkpoints/depth_face_model
  then: python train.py --config configs/vox-adv-256.yaml --log_dir runs/audio \\
      --set train_params.stage=audio --set audio_train_params.data_dir=data/av
Items are OUT/<clip>.npz (numpy only, no pickles). Run the same command again to resume: existing items are kept.
Clips whose audio and mouth motion are more than --tolerance frames apart are rejected and listed.
"""


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Prepare audio-visual training items: DaGAN keypoints (frozen "
                                     "checkpoint), log-mel features, silence flags, offset check.", epilog=EXAMPLE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inp", required=True, help="a video with speech, or a folder of them")
    parser.add_argument("--out", required=True, help="folder for the .npz items")
    parser.add_argument("--checkpoint", required=True, help="DaGAN checkpoint (ours or the official .pth.tar)")
    parser.add_argument("--depth_checkpoint", default=None, help="official depth folder (with an official checkpoint)")
    parser.add_argument("--config", default=None, help="model config for an official checkpoint")
    parser.add_argument("--num_mels", type=int, default=80, help="mel bands (audio_params.num_mels of the training)")
    parser.add_argument("--tolerance", type=int, default=1, help="largest accepted audio-video offset, frames")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from dagan.audio.prepare import item_paths, prepare_folder
    from dagan.checkpoint import CheckpointError
    from dagan.inference import DaGANPipeline
    from dagan.io import is_video_file
    from dagan.io.files import guard_output

    try:
        source = Path(args.inp)
        if not source.exists():
            raise ValueError(f"--inp {args.inp!r} does not exist")
        videos = [source] if source.is_file() else sorted(p for p in source.rglob("*") if is_video_file(p))
        if not videos:
            raise ValueError(f"--inp {args.inp!r} holds no videos")
        guard_output(args.out, [args.inp, args.checkpoint, args.depth_checkpoint, args.config], "--out",
                     "item folder", folder=True)
        item_paths(videos, args.out)  # before the model loads: two clips with one name
        pipeline = DaGANPipeline.load(args.checkpoint, args.depth_checkpoint, args.config, device=args.device)
        summary = prepare_folder(pipeline, videos, args.out, args.num_mels, args.tolerance, not args.no_progress)
    except (ValueError, CheckpointError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for line in summary.rejected:
        print(f"rejected {line}", file=sys.stderr)
    print(f"{summary.written} items written, {summary.skipped} already there, {len(summary.rejected)} rejected; "
          f"items in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
