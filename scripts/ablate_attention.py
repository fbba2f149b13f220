#!/usr/bin/env python
"""Measure DaGAN++'s attention at every decoder level against DaGAN's bottleneck-only attention on synthetic
talking heads: both variants train the GAN stage with the same seed, steps and data (configs/synthetic-gan.yaml),
on the same depth network (a short configs/synthetic-depth.yaml run), then reconstruct held-out clips (render
seeds from 1000000; source = frame 0, driving = frames 4, 8, 12) and report L1 and SSIM. A measurement, not a test.

    python scripts/ablate_attention.py --out runs/ablation            # ~15 min on 2 CPU cores
    python scripts/ablate_attention.py --out runs/ablation --gan_steps 600 --depth_dir runs/synthetic-depth/depth

Finished parts are reused when the script is run again with the same --out.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dagan.checkpoint import export_official_depth  # noqa: E402
from dagan.cli.train import main as train_main  # noqa: E402
from dagan.config import load_config  # noqa: E402
from dagan.data.synthetic.dataset import SyntheticClipStore, SyntheticSpec  # noqa: E402
from dagan.eval.metrics import l1_distance, ssim  # noqa: E402
from dagan.io.files import OutputError, atomic_write_text, guard_output  # noqa: E402
from dagan.model import DaGAN  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {"bottleneck only [0]": [0], "every level [0, 1, 2]": [0, 1, 2]}
HELD_OUT = "synthetic://num_clips={clips},num_frames=16,fps=5,seed=1000000"
DRIVING_FRAMES = (4, 8, 12)


def training_root(config: str, clips: int) -> str:
    """The config's synthetic training root with ``num_clips`` set to ``clips``."""
    root = load_config(os.path.join(REPO, "configs", config)).dataset_params.root_dir
    return re.sub(r"num_clips=\d+", f"num_clips={clips}", root)


def train(config: str, log_dir: str, steps: int, overrides: list[str], stage: str) -> str:
    """Train (or reuse) a run; returns its final checkpoint."""
    final = os.path.join(log_dir, "checkpoints", f"{steps:08d}.pt")
    if os.path.isfile(final):
        print(f"reusing {final}", file=sys.stderr)
        return final
    key = "depth_train_params.num_steps" if stage == "depth" else "train_params.num_steps"
    arguments = ["--config", os.path.join(REPO, "configs", config), "--log_dir", log_dir,
                 "--set", f"{key}={steps}", "--set", f"train_params.checkpoint_every={steps}"]
    for override in overrides:
        arguments += ["--set", override]
    if train_main(arguments) != 0:
        raise SystemExit(f"training {log_dir} failed")
    return final


@torch.no_grad()
def evaluate(checkpoint: str, clips: int) -> dict[str, float]:
    """Mean L1 and SSIM of held-out reconstructions (absolute keypoints, as the reconstruction protocol)."""
    model = DaGAN.from_checkpoint(checkpoint).eval()
    store = SyntheticClipStore(SyntheticSpec.parse(HELD_OUT.format(clips=clips)), 64)
    l1, similarity = [], []
    for index in range(len(store)):
        frames = store.clip(index).frames  # (T, 3, 64, 64) in [0, 1]
        driving = frames[list(DRIVING_FRAMES)]
        source = frames[:1].expand_as(driving)
        prediction = model.reconstruct(source, driving).prediction
        for generated, real in zip(prediction, driving):
            generated, real = generated.permute(1, 2, 0).numpy(), real.permute(1, 2, 0).numpy()
            l1.append(l1_distance(generated, real))
            similarity.append(ssim(generated, real))
    gates = {name: float(block.gate) for name, block in model.generator.layer_attention.items()}
    return {"l1": float(np.mean(l1)), "ssim": float(np.mean(similarity)), "pairs": len(l1),
            "gamma": float(model.generator.AttnModule.gamma), "gates": gates}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/ablation-attention", help="folder for the runs and results.json")
    parser.add_argument("--gan_steps", type=int, default=300, help="GAN-stage steps of each variant")
    parser.add_argument("--depth_steps", type=int, default=150, help="depth-stage steps (when no --depth_dir); 0 = "
                        "an untrained depth network")
    parser.add_argument("--depth_dir", default=None, help="an existing depth folder (encoder.pth, depth.pth)")
    parser.add_argument("--clips", type=int, default=32, help="held-out clips (3 pairs each)")
    parser.add_argument("--train_clips", type=int, default=64, help="synthetic training clips of both stages")
    args = parser.parse_args(argv)
    try:  # before any work
        guard_output(args.out, [args.depth_dir], "--out", "ablation folder", folder=True)
        guard_output(os.path.join(args.out, "results.json"), [args.depth_dir], "--out", "results")
    except OutputError as error:
        parser.error(str(error))
    torch.set_num_threads(min(2, torch.get_num_threads()))
    depth_dir = args.depth_dir
    if depth_dir is None and args.depth_steps == 0:  # an untrained (seeded) depth network, the same for both
        torch.manual_seed(0)
        depth_dir = os.path.join(args.out, "depth-untrained")
        export_official_depth(DaGAN(load_config(os.path.join(REPO, "configs", "synthetic-gan.yaml"))), depth_dir)
    elif depth_dir is None:
        run = os.path.join(args.out, "depth")
        train("synthetic-depth.yaml", run, args.depth_steps, [
            "train_params.stage=depth", f"dataset_params.root_dir={training_root('synthetic-depth.yaml', args.train_clips)}"],
            "depth")
        depth_dir = os.path.join(run, "depth")
    results = {}
    for name, layers in VARIANTS.items():
        log_dir = os.path.join(args.out, "gan-" + "-".join(map(str, layers)))
        checkpoint = train("synthetic-gan.yaml", log_dir, args.gan_steps, [
            f"model_params.depth_params.checkpoint_dir={depth_dir}",
            f"dataset_params.root_dir={training_root('synthetic-gan.yaml', args.train_clips)}",
            f"model_params.generator_params.attention_layers={layers}"], "gan")
        results[name] = evaluate(checkpoint, args.clips)
    atomic_write_text(os.path.join(args.out, "results.json"),
                      json.dumps({"settings": vars(args), "depth_dir": depth_dir, "results": results}, indent=1))
    print(f"\n| attention_layers | held-out L1 | held-out SSIM | gates after {args.gan_steps} steps |\n|---|---|---|---|")
    for name, result in results.items():
        gates = ", ".join(f"{level}: {value:+.4f}" for level, value in
                          {"0": result["gamma"], **result["gates"]}.items())
        print(f"| {name} | {result['l1']:.4f} | {result['ssim']:.4f} | {gates} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
