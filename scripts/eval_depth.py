#!/usr/bin/env python
"""Depth quality of a stage-1 depth network on held-out synthetic talking heads with ground-truth depth.

Renders ``--num_clips`` clips with seeds disjoint from the training clips, predicts depth with the trained
network, the untrained network (the initialisation ``train_depth`` starts from) and a constant-depth baseline,
and reports AbsRel, RMSE, delta<1.25 and delta<1.05 after per-image median scaling, on head pixels and on the full image
(definitions: ``dagan/eval/depth.py``). The held-out clips follow the training clips' motion limits
(``rotation_scale`` / ``translation_scale`` of the config's synthetic root; ``--default_motion`` for the renderer's
defaults). Prints a Markdown table, writes everything to ``--output`` (JSON) and, with ``--figure``, a
picture of the depth maps.

    python scripts/eval_depth.py --checkpoint runs/synthetic-depth/checkpoints             # newest checkpoint
    python scripts/eval_depth.py --checkpoint runs/synthetic-depth/checkpoints/00003000.pt --num_clips 64 \
        --default_motion --figure depth.png
    python scripts/eval_depth.py --checkpoint runs/synthetic-depth/depth                   # encoder.pth + depth.pth
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dagan.config import load_config  # noqa: E402
from dagan.data.synthetic import MotionRanges  # noqa: E402
from dagan.eval.depth import (EVAL_FPS, EVAL_SEED, check_disjoint_seeds, depth_figure,  # noqa: E402
                              evaluate_predictions, format_table, load_depth_model, predict_depths,
                              relative_improvement, render_evaluation_set, results_to_dict, training_motion,
                              training_seeds)
from dagan.io import write_png  # noqa: E402
from dagan.io.files import atomic_write_text, guard_output  # noqa: E402
from dagan.visualization import to_image  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="our stage-1 checkpoint (.pt), a run's checkpoints/ "
                        "folder (newest), or an official-layout depth folder (encoder.pth + depth.pth)")
    parser.add_argument("--config", default=None, help="config of a depth folder (default: <folder>/../config.yaml)")
    parser.add_argument("--num_clips", type=int, default=32, help="held-out clips (default 32)")
    parser.add_argument("--frames_per_clip", type=int, default=4, help=f"frames per clip, {1 / EVAL_FPS:g} s apart")
    parser.add_argument("--seed", type=int, default=EVAL_SEED, help=f"render seed of the first clip ({EVAL_SEED})")
    parser.add_argument("--size", type=int, default=None, help="frame size (default: the config's frame_shape)")
    parser.add_argument("--default_motion", action="store_true", help="render the evaluation clips with the "
                        "renderer's default head motion instead of the training clips' motion limits")
    parser.add_argument("--output", default="eval_depth.json", help="JSON file for the results")
    parser.add_argument("--figure", default=None, help="also write a PNG of head depth maps (frame, ground truth, "
                        "each method) for the first frame of the first --figure_rows clips")
    parser.add_argument("--figure_rows", type=int, default=4, help="rows of the --figure picture (4)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return evaluate(args)
    except (ValueError, OSError) as error:  # CheckpointError and ConfigError are ValueErrors
        print(f"error: {error}", file=sys.stderr)
        return 1


def evaluate(args: argparse.Namespace) -> int:
    for name in ("num_clips", "frames_per_clip", "figure_rows"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1 (got {getattr(args, name)})")
    inputs = [args.checkpoint, args.config]
    guard_output(args.output, inputs, "--output", "JSON results")
    guard_output(args.figure, inputs, "--figure", "figure", others=[("--output", args.output)])
    model, config = load_depth_model(args.checkpoint, load_config(args.config) if args.config else None)
    size = args.size or config.dataset_params.frame_shape[0]
    seeds = list(range(args.seed, args.seed + args.num_clips))
    check_disjoint_seeds(seeds, training_seeds(config))

    start = time.time()
    motion = MotionRanges() if args.default_motion else training_motion(config)
    data = render_evaluation_set(args.num_clips, args.frames_per_clip, size, args.seed, motion=motion)
    predictions = predict_depths(model, config, data)
    results = {name: evaluate_predictions(depth, data) for name, depth in predictions.items()}
    print(f"{data.frames.shape[0]} frames of {args.num_clips} held-out clips (seeds {seeds[0]}..{seeds[-1]}), "
          f"{size}x{size}, {time.time() - start:.0f} s; errors after per-image median scaling\n")
    print(format_table(results))
    trained = results["trained network"]["head"]
    for baseline in ("constant depth", "untrained network"):
        change = relative_improvement(trained, results[baseline]["head"])
        print(f"head AbsRel of the trained network: {abs(100 * change):.1f}% {'lower' if change >= 0 else 'higher'} "
              f"than the {baseline}")
    report = {"checkpoint": os.fspath(args.checkpoint), "training_root": config.dataset_params.root_dir,
              "min_depth": config.depth_train_params.min_depth, "max_depth": config.depth_train_params.max_depth,
              "evaluation": {"num_clips": args.num_clips, "frames_per_clip": args.frames_per_clip,
                             "seeds": [seeds[0], seeds[-1]], "size": size, "fps": EVAL_FPS,
                             "frames": int(data.frames.shape[0]), "motion": dataclasses.asdict(motion)},
              "results": results_to_dict(results)}
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    if args.figure:
        rows = list(range(0, min(args.figure_rows, args.num_clips) * args.frames_per_clip, args.frames_per_clip))
        write_png(args.figure, to_image(depth_figure(data, predictions, rows)))
        print(f"wrote {args.figure} (columns: frame, ground truth, {', '.join(predictions)})")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
