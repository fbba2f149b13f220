"""Personalise the audio model on a short clip of the target person (about 12 s): one command.

See ``dagan.training.personalize``. Run ``python scripts/personalize.py --help``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

EXAMPLE = """\
example:
  python scripts/personalize.py --video target.mp4 --checkpoint checkpoints/DaGAN_vox_adv_256.pth.tar \\
      --depth_checkpoint checkpoints/depth_face_model --init runs/audio/audio_model.pt --output target_audio.pt
  python demo.py --driving_audio speech.wav --audio_checkpoint target_audio.pt --source_image target_frame.png \\
      --checkpoint checkpoints/DaGAN_vox_adv_256.pth.tar --depth_checkpoint checkpoints/depth_face_model \\
      --reference_video target.mp4 --result_video talking.mp4
The run (checkpoints, stats.jsonl, TensorBoard) goes to <output>_run/; run the command again to resume it.
"""


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Fine-tune an audio model on one short clip of the target (its "
                                     "lips and head-pose style), early-stopping on the clip's last 20%.",
                                     epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", required=True, help="the target speaking (about 300 frames, with its audio)")
    parser.add_argument("--checkpoint", required=True, help="the DaGAN checkpoint the model will drive")
    parser.add_argument("--depth_checkpoint", default=None, help="official depth folder (with an official checkpoint)")
    parser.add_argument("--output", required=True, help="the personalised audio model (.pt)")
    parser.add_argument("--init", default=None, help="general audio model to start from (default: from scratch)")
    parser.add_argument("--steps", type=int, default=None, help="most optimizer steps (default: the config's)")
    parser.add_argument("--config", default=None, help="config without --init (default: built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override without --init, e.g. audio_params.hidden_channels=64")
    parser.add_argument("--log_dir", default=None, help="run directory (default: <output>_run)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output this project wrote, "
                        "and move aside (never delete) a run directory made for other inputs; a run directory for "
                        "the same clip, checkpoint and --init is resumed")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from dagan.training.personalize import check_personalize_outputs, personalize
    from dagan.checkpoint import CheckpointError
    from dagan.config import ConfigError
    from dagan.inference import DaGANPipeline
    from dagan.training.run import TrainingError

    try:
        if args.steps is not None and args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        inputs = (args.checkpoint, args.depth_checkpoint)
        check_personalize_outputs(args.video, args.output, args.log_dir, (args.init, args.config, *inputs),
                                  args.overwrite)  # before the model loads
        pipeline = DaGANPipeline.load(args.checkpoint, args.depth_checkpoint, device=args.device)
        result = personalize(pipeline, args.video, args.output, args.init, args.steps, args.config,
                             tuple(args.overrides), args.log_dir, args.overwrite, inputs)
    except (ValueError, CheckpointError, ConfigError, TrainingError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {result['output']} (step {result['step']}; run directory {result['log_dir']})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
