#!/usr/bin/env python
"""Training speed of the GAN stage for a config (default vox-adv-256) on random data: steps/s, samples/s and
peak memory. One process; on a GPU also bf16 autocast and torch.compile variants.

    python scripts/benchmark_training.py --batch_size 2 --steps 3            # CPU
    python scripts/benchmark_training.py --device cuda --batch_size 16 --steps 20 --output train_bench.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dagan.config import load_config  # noqa: E402
from dagan.model import DaGAN  # noqa: E402
from dagan.training.gan_stage import DiscriminatorStep, GeneratorStep, build_vgg, step_transform  # noqa: E402
from dagan.io.files import OutputError, atomic_write_text, guard_output  # noqa: E402
from dagan.training.run import adam  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "vox-adv-256.yaml")


def measure(config, device: torch.device, batch_size: int, steps: int, bf16: bool, compile_steps: bool) -> dict:
    torch.manual_seed(0)
    params = config.train_params
    model = DaGAN(config).to(device)
    model.depth_encoder.eval().requires_grad_(False)
    model.depth_decoder.eval().requires_grad_(False)
    generator_step = GeneratorStep(model, build_vgg(params, device), params).to(device)
    discriminator_step = DiscriminatorStep(model, params).to(device)
    if compile_steps:
        generator_step, discriminator_step = torch.compile(generator_step), torch.compile(discriminator_step)
    generator_parameters = list(model.generator.parameters()) + list(model.kp_detector.parameters())
    optimizer_g = adam(generator_parameters, params.lr_generator, betas=(0.5, 0.999))  # as train.py builds them
    optimizer_d = adam(model.discriminator.parameters(), params.lr_discriminator, betas=(0.5, 0.999))
    height, width = config.dataset_params.frame_shape[:2]
    source = torch.rand(batch_size, 3, height, width, device=device)
    driving = torch.rand(batch_size, 3, height, width, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def one_step(step: int) -> None:
        transform = step_transform(params, step).select(list(range(batch_size))).to(device)
        for parameter in model.discriminator.parameters():
            parameter.requires_grad_(False)
        with autocast:
            output = generator_step(source, driving, transform)
            sum(output.losses.values()).backward()
        optimizer_g.step()
        optimizer_g.zero_grad(set_to_none=True)
        for parameter in model.discriminator.parameters():
            parameter.requires_grad_(True)
        with autocast:
            losses = discriminator_step(driving, output.prediction, output.kp_driving.value.detach())
            sum(losses.values()).backward()
        optimizer_d.step()
        optimizer_d.zero_grad(set_to_none=True)

    warmup = 3 if compile_steps else 1
    for step in range(warmup):
        one_step(step)
    times = []
    for step in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        one_step(warmup + step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    peak = (torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20)
    return {"batch_size": batch_size, "bf16": bf16, "compile": compile_steps, "seconds_per_step": seconds,
            "steps_per_second": 1 / seconds, "samples_per_second": batch_size / seconds,
            "peak_memory_gib": peak, "peak_memory_kind": "cuda allocated" if device.type == "cuda" else "process RSS"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", default="benchmark_training.json")
    args = parser.parse_args(argv)
    try:  # before any work
        guard_output(args.output, [args.config], "--output", "JSON results")
    except OutputError as error:
        parser.error(str(error))
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config, ["train_params.vgg19_weights=random"])
    device = torch.device(args.device)
    variants = [(False, False)] + ([(True, False), (True, True)] if device.type == "cuda" else [])
    results = {"config": os.path.basename(args.config), "device": torch.cuda.get_device_name() if device.type == "cuda"
               else "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
               "runs": [measure(config, device, args.batch_size, args.steps, bf16, compile_steps)
                        for bf16, compile_steps in variants]}
    print(f"{results['config']} on {results['device']} ({results['threads']} threads, torch {results['torch']})")
    print(f"{'batch':>5s} {'bf16':>5s} {'compile':>7s} {'s/step':>8s} {'steps/s':>8s} {'samples/s':>9s} {'peak GiB':>9s}")
    for run in results["runs"]:
        print(f"{run['batch_size']:5d} {str(run['bf16']):>5s} {str(run['compile']):>7s} {run['seconds_per_step']:8.2f} "
              f"{run['steps_per_second']:8.3f} {run['samples_per_second']:9.3f} {run['peak_memory_gib']:9.2f}")
    atomic_write_text(args.output, json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
