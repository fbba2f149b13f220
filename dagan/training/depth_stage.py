"""Stage 1: self-supervised face depth (DaGAN Sec. 3.1, DaGAN++ Sec. 3.1) from consecutive video frames.

For a target frame and its two neighbours, the pose network predicts the relative camera motion **and the
intrinsics**; the target's predicted depth back-projects its pixels, which are moved and projected into each
neighbour to fetch colours. The photometric error 0.85 (1 - SSIM)/2 + 0.15 L1, minimum over the two neighbours,
with pixels that a static camera explains better masked out (auto-masking), trains depth and pose together at
all four decoder scales, plus edge-aware disparity smoothness (1e-3 / 2^scale).

DaGAN++ uncertainty (``depth_train_params.uncertainty``; our reading of the paper, whose code is not public): a
per-pixel uncertainty s > 0 turns the chosen photometric error e into a Laplace negative log-likelihood
e / s + log s. Its minimum over s is at s = e, so s follows the error instead of collapsing: s -> infinity costs
log s, s -> 0 costs e / s, and s >= 1e-3 bounds the term below. ``image``: s comes from a small network on the
target frame, one map for both views. ``pose``: the pose network predicts one map per source view (in the
target's pixels); which view (or the static camera) explains a pixel is still decided on the raw errors, so the
uncertainty can only re-weight a pixel, not pick the view that looks cheapest.
"""
from __future__ import annotations

import contextlib
import os
import sys
import zlib
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dagan.checkpoint import export_official_depth
from dagan.config import Config, DepthTrainParams, config_to_dict
from dagan.data import DepthTripletDataset, SeededDataset, make_sampler
from dagan.data.synthetic.dataset import SyntheticTripletDataset, is_synthetic_root
from dagan.geometry import halve, pose_to_matrix, resize, reproject_grid, warp
from dagan.losses import edge_aware_smoothness, photometric_error
from dagan.model import DaGAN
from dagan.networks.backbones import ResNet
from dagan.networks.depth import MIN_UNCERTAINTY, NUM_SCALES, PoseNetwork, disparity_to_depth
from dagan.training import distributed
from dagan.training.finetune import freeze, initialize_from, keep_fixed, trainable
from dagan.training.run import (CheckpointManager, DataWaitInterrupted, RunLogger, StepStart, StopRequest,
                                TrainingError, adam, apply_learning_rates, check_finite, per_rank_batch,
                                reconcile_resumed_config, rng_state, seed_everything, set_rng_state,
                                stop_while_waiting_for_data, stopped_while_waiting)
from dagan.visualization import disparity_image, to_image


class UncertaintyNetwork(nn.Module):
    """Per-pixel photometric uncertainty s > 0 of the target frame (B, 1, H, W), DaGAN++'s reliability weight."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(3, hidden, 3, padding=1), nn.ELU(),
                                    nn.Conv2d(hidden, hidden, 3, padding=1), nn.ELU(),
                                    nn.Conv2d(hidden, 1, 3, padding=1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.layers(image)) + MIN_UNCERTAINTY


def photometric_term(errors: torch.Tensor, identity_error: Optional[torch.Tensor],
                     view_uncertainty: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Monodepth2's per-pixel minimum over source views (and the static-camera errors ``identity_error`` when
    auto-masking), (B, 1, H, W). errors, view_uncertainty: (B, V, H, W). With ``view_uncertainty`` (DaGAN++ pose
    mode) the chosen view's error e counts as e / s + log s; the choice is made on the raw errors."""
    candidates = errors if identity_error is None else torch.cat([errors, identity_error], dim=1)
    choice = candidates.argmin(dim=1, keepdim=True)
    if view_uncertainty is not None:
        weighted = errors / view_uncertainty + torch.log(view_uncertainty)
        candidates = weighted if identity_error is None else torch.cat([weighted, identity_error], dim=1)
    return candidates.gather(1, choice)


class DepthStepOutput(NamedTuple):
    losses: dict[str, torch.Tensor]
    disparity: torch.Tensor  # (B, 1, H, W) full-resolution disparity of the target
    warped: torch.Tensor  # (B, 3, H, W) the previous frame warped into the target view (scale 0)
    uncertainty: Optional[torch.Tensor] = None  # (B, V, H, W): per view (pose mode) or (B, 1, H, W) (image mode)


class DepthStep(nn.Module):
    """Depth encoder/decoder + pose/intrinsics network (+ uncertainty), from a frame triplet to named losses."""

    def __init__(self, model: DaGAN, pose_network: PoseNetwork, params: DepthTrainParams,
                 uncertainty: Optional[UncertaintyNetwork] = None):
        super().__init__()
        self.depth_encoder, self.depth_decoder, self.pose_network = model.depth_encoder, model.depth_decoder, pose_network
        self.uncertainty = uncertainty
        self.params = params
        self.highres_levels = model.highres_levels

    def forward(self, previous: torch.Tensor, target: torch.Tensor, following: torch.Tensor,
                noise: torch.Tensor) -> DepthStepOutput:
        """noise: (B, 1, H, W) tiny values that break ties in the auto-mask (Monodepth2 adds 1e-5 x N(0, 1))."""
        params = self.params
        # A grown (512) model's depth network sees frames at the released size, in training as in inference.
        previous, target, following, noise = (halve(tensor, self.highres_levels)
                                              for tensor in (previous, target, following, noise))
        disparities = self.depth_decoder(self.depth_encoder(target))  # scales 0..3
        poses = [self.pose_network(target, source) for source in (previous, following)]  # target -> source
        identity_error = torch.cat([photometric_error(source, target, params.ssim_weight)
                                    for source in (previous, following)], dim=1) + noise
        uncertainty = self.uncertainty(target) if self.uncertainty is not None else None
        view_uncertainty = (torch.cat([pose.uncertainty for pose in poses], dim=1)
                            if poses[0].uncertainty is not None else None)  # (B, 2, H, W) in pose mode
        photometric, smoothness, warped_previous = 0.0, 0.0, None
        size = tuple(target.shape[2:])
        for scale in range(NUM_SCALES):
            disparity = F.interpolate(disparities[scale], size=size, mode="bilinear", align_corners=False)
            depth = disparity_to_depth(disparity, params.min_depth, params.max_depth)
            errors, warped = [], []
            for source, pose in zip((previous, following), poses):
                grid = reproject_grid(depth, pose.intrinsics, pose_to_matrix(pose.axis_angle, pose.translation))
                warped.append(warp(source, grid, padding_mode="border"))
                errors.append(photometric_error(warped[-1], target, params.ssim_weight))
            error = photometric_term(torch.cat(errors, dim=1), identity_error if params.automask else None,
                                     view_uncertainty)
            if uncertainty is not None:
                error = error / uncertainty + torch.log(uncertainty)
            photometric = photometric + error.mean()
            image = F.interpolate(target, size=disparities[scale].shape[2:], mode="bilinear", align_corners=False)
            smoothness = smoothness + params.smoothness / 2 ** scale * edge_aware_smoothness(disparities[scale], image)
            warped_previous = warped[0] if scale == 0 else warped_previous
        losses = {"photometric": photometric / NUM_SCALES, "smoothness": smoothness / NUM_SCALES}
        return DepthStepOutput(losses, disparities[0], warped_previous,
                               view_uncertainty if view_uncertainty is not None else uncertainty)


def step_noise(seed: int, step: int, part: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The auto-mask's tie-breaking noise of micro-batch ``part`` of the global batch of ``step``. ``part`` counts
    slices of the global batch (micro * world_size + rank, the sampler's order), not ranks, so that any split of
    the same global batch over ranks and accumulation steps draws the same noise for the same samples (at the
    first steps the pose is near the identity and this noise decides many of the auto-mask's choices)."""
    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{step}:{part}".encode()))
    return (1e-5 * torch.randn(shape, generator=generator)).to(device)


def without_unused_heads(optimizer_state: dict, step_module: nn.Module) -> dict:
    """A depth optimizer state saved while the ResNets' unused classifier heads (``encoder.fc``) still required
    gradients lists them (with no moments: they never had a gradient); drop them so that the indices match
    ``adam(trainable(step_module))`` of today. Any other state is returned as it is."""
    # A ResNet frozen by train_params.freeze had its head frozen with it, so not listed.
    heads = {id(parameter) for module in step_module.modules() if isinstance(module, ResNet)
             and module.conv1.weight.requires_grad for parameter in module.fc.parameters()}
    listed_before = [parameter for parameter in step_module.parameters() if parameter.requires_grad
                     or id(parameter) in heads]
    groups = optimizer_state["param_groups"]
    if not heads or len(groups) != 1 or len(groups[0]["params"]) != len(listed_before):
        return optimizer_state
    kept = [index for index, parameter in zip(groups[0]["params"], listed_before) if id(parameter) not in heads]
    renumber = {index: position for position, index in enumerate(kept)}
    return {"state": {renumber[index]: value for index, value in optimizer_state["state"].items() if index in renumber},
            "param_groups": [{**groups[0], "params": list(range(len(kept)))}]}


def depth_grid(batch: dict, output: DepthStepOutput, rows: int = 4) -> np.ndarray:
    """previous | target | previous warped into the target | target disparity, one row per sample."""
    lines = []
    size = tuple(output.disparity.shape[2:])  # a grown model's depth network sees halved frames
    previous, target = (resize(batch[name].to(output.disparity.device), size) for name in ("previous", "target"))
    for index in range(min(rows, target.shape[0])):
        lines.append(np.concatenate([to_image(previous[index]), to_image(target[index]),
                                     to_image(output.warped[index]), disparity_image(output.disparity[index])], 1))
    return np.concatenate(lines, 0)


def triplet_dataset(config: Config) -> SeededDataset:
    """Stage 1's training triplets: rendered synthetic clips for a ``synthetic://`` root, else video frames."""
    make = SyntheticTripletDataset if is_synthetic_root(config.dataset_params.root_dir) else DepthTripletDataset
    return make.from_config(config.dataset_params, is_train=True, seed=config.train_params.seed,
                            stride=config.depth_train_params.frame_stride)


def train_depth(config: Config, log_dir: str, resume: Optional[str] = None) -> dict:
    """Run stage 1 for ``depth_train_params.num_steps``; writes checkpoints and ``<log_dir>/depth/{encoder,depth}.pth``."""
    # Initialize.
    context = distributed.setup()
    params, run = config.depth_train_params, config.train_params
    seed_everything(run.seed + context.rank)
    device = context.device

    # Load data.
    dataset = triplet_dataset(config)
    per_rank = per_rank_batch(params.batch_size, context.world_size, run.grad_accumulation)
    sampler = make_sampler(dataset, run.seed, context.rank, context.world_size, block_size=per_rank)

    # Build networks.
    model = DaGAN(config)
    pose_network = PoseNetwork(params.pose_num_layers, predict_uncertainty=params.uncertainty == "pose")
    uncertainty = UncertaintyNetwork() if params.uncertainty == "image" else None
    report = initialize_from(model, run.init_checkpoint, "depth", {"pose_network": pose_network,
                                                                  "uncertainty": uncertainty})
    if report is not None and context.is_main:
        print(report.line(), file=sys.stderr)
    frozen = freeze({"depth_encoder": model.depth_encoder, "depth_decoder": model.depth_decoder,
                     "pose_network": pose_network}, run.freeze)
    step_module = DepthStep(model, pose_network, params, uncertainty).to(device).train()
    keep_fixed(frozen)
    if run.sync_batchnorm and context.is_distributed:
        if device.type != "cuda":
            raise TrainingError("train_params.sync_batchnorm needs CUDA GPUs (torch's SyncBatchNorm); set it to false")
        step_module = nn.SyncBatchNorm.convert_sync_batchnorm(step_module)
    if not trainable(step_module):
        raise TrainingError(f"train_params.freeze {run.freeze} leaves nothing to train in the depth stage")
    optimizer = adam(trainable(step_module), lr=params.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=params.lr_step or 10 ** 12, gamma=0.1)

    # Resume.
    checkpoints = CheckpointManager(os.path.join(log_dir, "checkpoints"), run.keep_checkpoints)
    start_step = 0
    resumed = checkpoints.resume_state(resume)
    if resumed is not None:
        resume_path, state = resumed
        changed_rates = reconcile_resumed_config(state["config"], config_to_dict(config), resume_path, "depth",
                                                 state["training"].get("stage"), {"optimizer": "depth_train_params.lr"})
        model.load_network_state_dicts({name: state["networks"][name] for name in ("depth_encoder", "depth_decoder")})
        pose_network.load_state_dict(state["training"]["pose_network"])
        if uncertainty is not None:
            uncertainty.load_state_dict(state["training"]["uncertainty"])
        optimizer.load_state_dict(without_unused_heads(state["training"]["optimizer"], step_module))
        scheduler.load_state_dict(state["training"]["scheduler"])
        for old, new in changed_rates.values():
            apply_learning_rates(optimizer, scheduler, old, new)
        set_rng_state(state["training"]["rng"])
        start_step = state["step"]
    sampler.set_start(start_step * params.batch_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=run.num_workers,
                                         drop_last=True, persistent_workers=run.num_workers > 0)

    # Distribute.
    train_module: nn.Module = step_module
    if context.is_distributed:
        train_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[context.local_rank] if device.type == "cuda" else None)
    if run.compile:
        train_module = torch.compile(train_module)

    def save(step: int, rng: Optional[dict] = None, alone: bool = False) -> None:
        """Checkpoint ``step``; ``alone``: without collective calls (a stop while the data stalled)."""
        if not alone:
            distributed.check_in_sync(step_module, device)
        state = {"format": "dagan", "version": 1, "config": config_to_dict(config), "step": step,
                 "networks": {name: getattr(model, name).state_dict() for name in ("depth_encoder", "depth_decoder")},
                 "training": {"stage": "depth", "rng": rng or rng_state(), "pose_network": pose_network.state_dict(),
                              "uncertainty": uncertainty.state_dict() if uncertainty is not None else {},
                              "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}}
        if context.is_main:
            with stop.saving():
                checkpoints.save(state, step)
                export_official_depth(model, os.path.join(log_dir, "depth"))
        if not alone:
            distributed.barrier()

    # Loop.
    stop = StopRequest()
    logger = RunLogger(log_dir, config, params.num_steps, start_step, enabled=context.is_main, description="depth")
    checkpoint_every = run.checkpoint_every or max(1, params.num_steps // 10)
    batches = iter(loader)
    step, running, stats = start_step, {}, {}
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if run.mixed_precision == "bf16" and device.type == "cuda"
                else contextlib.nullcontext())
    with stop:
        try:
            while step < params.num_steps:
                step_start = StepStart(model.depth_encoder, model.depth_decoder, pose_network, uncertainty)
                for micro in range(run.grad_accumulation):
                    batch = stop.next_batch(batches)
                    frames = [batch[name].to(device) for name in ("previous", "target", "next")]
                    noise = step_noise(run.seed * 7919, step, micro * context.world_size + context.rank,
                                       (frames[1].shape[0], 2, *frames[1].shape[2:]), device)
                    synchronise = micro == run.grad_accumulation - 1 or not context.is_distributed
                    with (contextlib.nullcontext() if synchronise else train_module.no_sync()), autocast:
                        output = train_module(*frames, noise)
                        check_finite(output.losses, step)
                        (sum(output.losses.values()) / run.grad_accumulation).backward()
                    for name, value in output.losses.items():
                        total, count = running.get(name, (0.0, 0))
                        running[name] = (total + float(value.detach()), count + 1)
                step_start.optimizers_stepped = True
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                step_start = None  # from here the step is finished: a save takes the current state

                # Maintenance.
                if step % run.log_every == 0 or step == params.num_steps:
                    stats = distributed.all_reduce_mean({f"Loss/{name}": total / count for name, (total, count)
                                                         in running.items()}, device)
                    running = {}
                    logger.step(step, stats)
                else:
                    logger.step(step)
                if step % run.image_every == 0 or step == params.num_steps:
                    logger.image(step, depth_grid(batch, output))
                stop_now = distributed.any_rank_true(stop.requested, device)
                if step % checkpoint_every == 0 or step == params.num_steps or stop_now:
                    save(step)
                if stop_now:
                    logger.message(f"stopped at step {step}; resume with --resume auto")
                    break
        except (DataWaitInterrupted, RuntimeError) as error:  # the data stalled, on this rank or another
            if not stopped_while_waiting(error, stop, context.is_distributed):
                raise
            stop_while_waiting_for_data(step, save, step_start, context.is_distributed, logger)
    logger.close()
    return {"step": step, "stopped_by": stop.signal_number, **stats}
