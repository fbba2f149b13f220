"""``train.py``: train either DaGAN stage from a YAML config (the stage is ``train_params.stage``).

    python train.py --config configs/vox-adv-256.yaml --log_dir runs/vox
    torchrun --nproc_per_node=8 train.py --config configs/vox-adv-256.yaml --log_dir runs/vox
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Optional

from dagan.checkpoint import CheckpointError
from dagan.config import ConfigError, load_config
from dagan.training.run import TrainingDiverged, TrainingError, claim_run_directory

EXAMPLE = """\
examples:
  # stage 1, self-supervised depth, then stage 2, the GAN, on one machine
  python train.py --config configs/vox-adv-256.yaml --log_dir runs/vox-depth --set train_params.stage=depth
  python train.py --config configs/vox-adv-256.yaml --log_dir runs/vox \\
      --set model_params.depth_params.checkpoint_dir=runs/vox-depth/depth
  # 8 GPUs (the batch size in the config is global and is split across ranks)
  torchrun --nproc_per_node=8 train.py --config configs/vox-adv-256.yaml --log_dir runs/vox
  # fine-tune the released DaGAN on your own clips (docs/fine-tuning.md)
  python train.py --config configs/finetune-person.yaml --log_dir runs/me \
      --init checkpoints/DaGAN_vox_adv_256.pth.tar --set dataset_params.root_dir=data/me
  # continue the newest checkpoint of a run (also after SIGTERM / Ctrl-C)
  python train.py --config configs/vox-adv-256.yaml --log_dir runs/vox --resume auto

A run directory that already holds a run is never overwritten: continue it with --resume auto, or pass
--overwrite to move it aside (to <log_dir>.old-<time>) and start again. Exit status: 0 when the run finished,
1 on an error, 130 after Ctrl-C and 143 after SIGTERM (a checkpoint is saved first).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train.py", description="Train DaGAN (stage from train_params.stage).",
                                     epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config")
    parser.add_argument("--log_dir", default="runs/default", help="run directory (config, stats, images, "
                        "checkpoints)")
    parser.add_argument("--resume", default=None, help="'auto' (newest readable checkpoint in --log_dir; starts fresh "
                        "when there is none) or a checkpoint path")
    parser.add_argument("--overwrite", action="store_true", help="start a new run in a --log_dir that holds one: "
                        "the old run is moved to <log_dir>.old-<time>, never deleted")
    parser.add_argument("--init", default=None, metavar="PATH", help="fine-tune: start the networks from an "
                        "official .pth.tar, an official depth folder or one of our checkpoints (optimizers start "
                        "fresh); sets train_params.init_checkpoint")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. train_params.batch_size=8 (repeatable)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        if args.init is not None:
            config.train_params.init_checkpoint = args.init
        is_main = os.environ.get("RANK", "0") == "0"  # torchrun sets RANK; distributed is not set up yet
        moved = claim_run_directory(args.log_dir, args.resume, args.overwrite, is_main, (args.config, args.init))
        if moved:
            print(f"moved the previous run in {args.log_dir} to {moved}", file=sys.stderr)
        if config.train_params.stage == "depth":
            from dagan.training.depth_stage import train_depth

            result = train_depth(config, args.log_dir, args.resume)
        elif config.train_params.stage in ("audio", "personalize"):
            from dagan.training.audio_stage import train_audio

            result = train_audio(config, args.log_dir, args.resume)
        else:
            from dagan.training.gan_stage import train_gan

            result = train_gan(config, args.log_dir, args.resume)
        if result.get("stopped_by"):
            print(f"stopped at step {result['step']}; continue with --resume auto", file=sys.stderr)
            return 128 + int(result["stopped_by"])  # 130 after Ctrl-C, 143 after SIGTERM
        print(f"finished at step {result['step']}; run directory: {args.log_dir}", file=sys.stderr)
        return 0
    except KeyboardInterrupt:
        print("interrupted; the newest checkpoint in the run directory is intact (continue with --resume auto)",
              file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            traceback.print_exc()
        known = (ConfigError, CheckpointError, TrainingError, TrainingDiverged, ValueError, ImportError)
        message = str(error) if isinstance(error, known) else f"{type(error).__name__}: {error}"
        print(f"error: {message}" + ("" if args.debug else " (rerun with --debug for the traceback)"
                                     if not isinstance(error, known) else ""), file=sys.stderr)
        return 1
    finally:
        from dagan.training import distributed

        distributed.teardown()
