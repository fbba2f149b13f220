"""Stage 2, the GAN (DaGAN Sec. 3.4): keypoint detector + generator + discriminator on (source, driving) frame pairs
of the same video, with the depth network of stage 1 frozen.

Generator-side loss (weights from ``train_params.loss_weights``):
  pyramid perceptual (VGG19 relu1_1..relu5_1 at scales 1, 1/2, 1/4, 1/8) + LSGAN + feature matching
  + equivariance of keypoint values and Jacobians under random affine+TPS warps + keypoint distance
  (+ optional depth constraint). Discriminator: LSGAN.
"""
from __future__ import annotations

import contextlib
import os
import sys
import zlib
from typing import NamedTuple, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dagan.config import Config, TrainParams, config_to_dict
from dagan.data import DatasetRepeater, FramesDataset, SeededDataset, make_sampler
from dagan.data.synthetic.dataset import SyntheticPairDataset, is_synthetic_root
from dagan.geometry import Keypoints, RandomTransform
from dagan.losses import (ImagePyramid, equivariance_jacobian_loss, equivariance_value_loss, feature_matching_loss,
                          keypoint_distance_loss, lsgan_discriminator_loss, lsgan_generator_loss, perceptual_loss)
from dagan.model import DaGAN, load_official_depth_into
from dagan.networks.backbones import VGG19, load_vgg19_weights
from dagan.training import distributed
from dagan.training.finetune import freeze, initialize_from, keep_fixed, trainable
from dagan.training.run import (CheckpointManager, DataWaitInterrupted, RunLogger, StepStart, StopRequest,
                                TrainingError, adam, apply_learning_rates, check_finite, per_rank_batch,
                                reconcile_resumed_config, rng_state, seed_everything, set_rng_state, steps_per_epoch,
                                stop_while_waiting_for_data, stopped_while_waiting)
from dagan.visualization import training_grid

# Each optimizer's learning rate in the config (a changed rate reaches the optimizer on resume).
LEARNING_RATE_KEYS = {"generator": "train_params.lr_generator", "kp_detector": "train_params.lr_kp_detector",
                      "discriminator": "train_params.lr_discriminator"}


class FrozenParts:
    """Networks the generator step uses but does not train; a plain object, so that DDP does not register them."""

    def __init__(self, model: DaGAN, vgg: VGG19):
        self.model, self.vgg, self.discriminator = model, vgg, model.discriminator


class GeneratorStepOutput(NamedTuple):
    losses: dict[str, torch.Tensor]  # weighted terms; the generator loss is their sum
    prediction: torch.Tensor
    kp_source: Keypoints
    kp_driving: Keypoints
    disparity_source: torch.Tensor
    disparity_driving: torch.Tensor


class GeneratorStep(nn.Module):
    """Everything on the generator side of a step, from frames to named losses (the module DDP wraps)."""

    def __init__(self, model: DaGAN, vgg: VGG19, params: TrainParams):
        super().__init__()
        self.kp_detector, self.generator = model.kp_detector, model.generator
        self.pyramid = ImagePyramid(params.scales)
        self.parts = FrozenParts(model, vgg)
        self.params = params

    def keypoints(self, image: torch.Tensor, disparity: torch.Tensor) -> Keypoints:
        return self.kp_detector(self.parts.model.keypoint_input(image, disparity))

    def forward(self, source: torch.Tensor, driving: torch.Tensor, transform: RandomTransform) -> GeneratorStepOutput:
        weights, model = self.params.loss_weights, self.parts.model
        with torch.no_grad():
            disparity_source, disparity_driving = model.depth(source), model.depth(driving)
        kp_source, kp_driving = self.keypoints(source, disparity_source), self.keypoints(driving, disparity_driving)
        prediction = self.generator(source, kp_source, kp_driving, source_depth=disparity_source,
                                    return_deformed=False).prediction
        real, fake = self.pyramid(driving), self.pyramid(prediction)
        losses: dict[str, torch.Tensor] = {}
        if any(weights.perceptual):
            losses["perceptual"] = perceptual_loss(self.parts.vgg, real, fake, weights.perceptual)
        if weights.generator_gan:
            losses.update(self.adversarial_losses(real, fake, kp_driving))
        if weights.equivariance_value or weights.equivariance_jacobian:
            losses.update(self.equivariance_losses(driving, kp_driving, transform))
        if weights.kp_distance:
            distance = sum(keypoint_distance_loss(kp.value, self.params.kp_distance_margin, self.params.kp_distance_form)
                           for kp in (kp_source, kp_driving))
            losses["kp_distance"] = weights.kp_distance * distance
        if weights.depth_constraint:
            losses["depth_constraint"] = weights.depth_constraint * (model.depth(prediction) - disparity_driving).abs().mean()
        return GeneratorStepOutput(losses, prediction, kp_source, kp_driving, disparity_source, disparity_driving)

    def adversarial_losses(self, real: dict, fake: dict, kp_driving: Keypoints) -> dict[str, torch.Tensor]:
        weights = self.params.loss_weights
        kp_value = kp_driving.value.detach()
        fake_output = self.parts.discriminator(fake, kp_value)
        losses = {"generator_gan": weights.generator_gan * lsgan_generator_loss(fake_output.prediction_maps)}
        if any(weights.feature_matching):
            with torch.no_grad():
                real_output = self.parts.discriminator(real, kp_value)
            losses["feature_matching"] = feature_matching_loss(real_output.feature_maps, fake_output.feature_maps,
                                                               weights.feature_matching)
        return losses

    def equivariance_losses(self, driving: torch.Tensor, kp_driving: Keypoints, transform: RandomTransform
                            ) -> dict[str, torch.Tensor]:
        weights = self.params.loss_weights
        transformed = transform.transform_frame(driving)
        with torch.no_grad():
            disparity = self.parts.model.depth(transformed)
        kp_transformed = self.keypoints(transformed, disparity)
        losses = {}
        if weights.equivariance_value:
            losses["equivariance_value"] = weights.equivariance_value * equivariance_value_loss(
                kp_driving, kp_transformed, transform)
        if weights.equivariance_jacobian and kp_driving.jacobian is not None:
            losses["equivariance_jacobian"] = weights.equivariance_jacobian * equivariance_jacobian_loss(
                kp_driving, kp_transformed, transform)
        return losses


class DiscriminatorStep(nn.Module):
    """LSGAN discriminator loss on real driving frames and detached predictions (the module DDP wraps)."""

    def __init__(self, model: DaGAN, params: TrainParams):
        super().__init__()
        self.discriminator = model.discriminator
        self.pyramid = ImagePyramid(params.scales)
        self.weight = params.loss_weights.discriminator_gan

    def forward(self, driving: torch.Tensor, prediction: torch.Tensor, kp_value: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        real = self.discriminator(self.pyramid(driving), kp_value)
        fake = self.discriminator(self.pyramid(prediction.detach()), kp_value)
        return {"discriminator_gan": self.weight * lsgan_discriminator_loss(real.prediction_maps,
                                                                            fake.prediction_maps)}


def build_vgg(params: TrainParams, device: torch.device) -> VGG19:
    """The perceptual network: torchvision VGG19 weights from ``train_params.vgg19_weights``, or (``"random"``)
    a fixed random initialisation for smoke tests."""
    vgg = VGG19()
    if params.vgg19_weights == "random":
        generator = torch.Generator().manual_seed(1234)
        for module in vgg.features:
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.data = torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5
                module.bias.data.zero_()
    else:
        load_vgg19_weights(vgg, params.vgg19_weights, allow_download=params.vgg19_weights is None)
    return vgg.to(device).eval().requires_grad_(False)


def step_transform(params: TrainParams, step: int) -> RandomTransform:
    """The equivariance transforms of one step for the whole global batch: a function of (seed, step) only, so
    runs with any number of ranks, or resumed, use the same transform for the same sample."""
    seed = zlib.crc32(f"{params.seed}:{step}".encode())
    generator = torch.Generator().manual_seed(seed)
    transform = params.transform_params
    return RandomTransform(params.batch_size, transform.sigma_affine, transform.sigma_tps, transform.points_tps,
                           generator=generator)


def sample_indices(micro_step: int, rank: int, world_size: int, per_rank: int) -> list[int]:
    """Positions, within the global batch, of one rank's samples in one accumulation micro-batch (the sampler
    gives each rank a contiguous run of ``per_rank`` positions per micro-batch)."""
    base = (micro_step * world_size + rank) * per_rank
    return list(range(base, base + per_rank))


def set_requires_grad(parameters: list[nn.Parameter], flag: bool) -> None:
    for parameter in parameters:
        parameter.requires_grad_(flag)


def autocast(params: TrainParams, device: torch.device):
    if params.mixed_precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def wrap(module: nn.Module, context: distributed.DistributedContext, params: TrainParams) -> nn.Module:
    if context.is_distributed:
        module = DistributedDataParallel(module, device_ids=[context.local_rank] if context.device.type == "cuda"
                                         else None)
    return torch.compile(module) if params.compile else module


def pair_dataset(config: Config) -> SeededDataset:
    """Stage 2's training pairs: rendered synthetic clips for a ``synthetic://`` root, else video frames."""
    make = SyntheticPairDataset if is_synthetic_root(config.dataset_params.root_dir) else FramesDataset
    return make.from_config(config.dataset_params, is_train=True, seed=config.train_params.seed)


def train_gan(config: Config, log_dir: str, resume: Optional[str] = None) -> dict:
    """Run stage 2 until ``train_params.num_steps``; returns the last logged statistics."""
    # Initialize.
    context = distributed.setup()
    params = config.train_params
    seed_everything(params.seed + context.rank)
    device = context.device

    # Load data.
    dataset = DatasetRepeater(pair_dataset(config), params.num_repeats)
    per_rank = per_rank_batch(params.batch_size, context.world_size, params.grad_accumulation)
    epoch_steps = steps_per_epoch(len(dataset), params.batch_size)
    total_steps = params.num_steps or params.num_epochs * epoch_steps
    sampler = make_sampler(dataset, params.seed, context.rank, context.world_size, block_size=per_rank)

    # Build networks.
    model = DaGAN(config)
    report = initialize_from(model, params.init_checkpoint, "gan")
    depth_dir = config.model_params.depth_params.checkpoint_dir
    if depth_dir is None and not (report and "depth_encoder" in report.loaded):
        raise TrainingError("stage 2 needs the trained depth network: set model_params.depth_params.checkpoint_dir "
                            "to a folder with encoder.pth and depth.pth (stage 1 writes <log_dir>/depth)")
    if depth_dir is not None:
        load_official_depth_into(model, depth_dir)
    if report is not None and context.is_main:
        print(report.line() + (f"; depth from {depth_dir}" if depth_dir else ""), file=sys.stderr)
    model.to(device)
    model.depth_encoder.eval().requires_grad_(False)
    model.depth_decoder.eval().requires_grad_(False)
    frozen = freeze({name: getattr(model, name) for name in ("depth_encoder", "depth_decoder", "kp_detector",
                                                             "generator", "discriminator")}, params.freeze)
    if params.sync_batchnorm and context.is_distributed:
        if device.type != "cuda":
            raise TrainingError("train_params.sync_batchnorm needs CUDA GPUs (torch's SyncBatchNorm); set it to false")
        model.kp_detector = nn.SyncBatchNorm.convert_sync_batchnorm(model.kp_detector)
        model.generator = nn.SyncBatchNorm.convert_sync_batchnorm(model.generator)
    vgg = build_vgg(params, device)
    generator_step = GeneratorStep(model, vgg, params).to(device)
    discriminator_step = DiscriminatorStep(model, params).to(device)
    learning_rates = {"generator": params.lr_generator, "kp_detector": params.lr_kp_detector,
                      "discriminator": params.lr_discriminator}
    optimizers = {name: adam(trainable(getattr(model, name)), rate, betas=(0.5, 0.999))
                  for name, rate in learning_rates.items() if trainable(getattr(model, name))}
    if not {"generator", "kp_detector"} & set(optimizers):
        raise TrainingError(f"train_params.freeze {params.freeze} leaves nothing to train on the generator side")
    discriminator_parameters = trainable(model.discriminator)
    milestones = [milestone * epoch_steps for milestone in params.epoch_milestones]
    schedulers = {name: torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
                  for name, optimizer in optimizers.items()}

    # Resume.
    checkpoints = CheckpointManager(os.path.join(log_dir, "checkpoints"), params.keep_checkpoints)
    start_step = 0
    resumed = checkpoints.resume_state(resume)
    if resumed is not None:
        resume_path, state = resumed
        changed_rates = reconcile_resumed_config(state["config"], config_to_dict(config), resume_path, "gan",
                                                 state["training"].get("stage"), LEARNING_RATE_KEYS)
        model.load_network_state_dicts({name: state["networks"][name] for name in
                                        ("kp_detector", "generator", "discriminator")})
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(state["training"]["optimizers"][name])
            schedulers[name].load_state_dict(state["training"]["schedulers"][name])
        for name, (old, new) in changed_rates.items():
            apply_learning_rates(optimizers[name], schedulers[name], old, new)
        set_rng_state(state["training"]["rng"])
        start_step = state["step"]
    sampler.set_start(start_step * params.batch_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=per_rank, sampler=sampler,
                                         num_workers=params.num_workers, drop_last=True,
                                         persistent_workers=params.num_workers > 0)

    # Distribute.
    generator_train = wrap(generator_step, context, params)
    discriminator_train = wrap(discriminator_step, context, params)
    model.kp_detector.train(), model.generator.train(), model.discriminator.train()
    keep_fixed(frozen)

    def save(step: int, rng: Optional[dict] = None, alone: bool = False) -> None:
        """Checkpoint ``step``; ``alone``: without collective calls (a stop while the data stalled)."""
        if not alone:
            for network in (model.generator, model.kp_detector, model.discriminator):
                distributed.check_in_sync(network, device)
        state = {"format": "dagan", "version": 1, "config": config_to_dict(config), "step": step,
                 "networks": model.network_state_dicts(),
                 "training": {"stage": "gan", "rng": rng or rng_state(),
                              "optimizers": {name: optimizer.state_dict() for name, optimizer in optimizers.items()},
                              "schedulers": {name: scheduler.state_dict() for name, scheduler in schedulers.items()}}}
        if context.is_main:
            with stop.saving():
                checkpoints.save(state, step)
        if not alone:
            distributed.barrier()

    # Loop.
    stop = StopRequest()
    logger = RunLogger(log_dir, config, total_steps, start_step, enabled=context.is_main, description="gan")
    checkpoint_every = params.checkpoint_every or params.checkpoint_freq * epoch_steps
    batches = iter(loader)
    step, running, stats = start_step, {}, {}
    with stop:
        try:
            while step < total_steps:
                step_start = StepStart(model.generator, model.kp_detector, model.discriminator)
                transform = step_transform(params, step)
                outputs = []
                set_requires_grad(discriminator_parameters, False)
                for micro in range(params.grad_accumulation):
                    batch = stop.next_batch(batches)
                    source, driving = batch["source"].to(device), batch["driving"].to(device)
                    micro_transform = transform.select(sample_indices(micro, context.rank, context.world_size,
                                                                      per_rank)).to(device)
                    synchronise = micro == params.grad_accumulation - 1 or not context.is_distributed
                    with (contextlib.nullcontext() if synchronise else generator_train.no_sync()), \
                            autocast(params, device):
                        output = generator_train(source, driving, micro_transform)
                        check_finite(output.losses, step)
                        (sum(output.losses.values()) / params.grad_accumulation).backward()
                    outputs.append((driving, output))
                    accumulate(running, output.losses)
                step_start.optimizers_stepped = True
                for name in ("generator", "kp_detector"):
                    if name in optimizers:
                        optimizers[name].step()
                        optimizers[name].zero_grad(set_to_none=True)
                if params.loss_weights.generator_gan and "discriminator" in optimizers:
                    set_requires_grad(discriminator_parameters, True)
                    for micro, (driving, output) in enumerate(outputs):
                        synchronise = micro == len(outputs) - 1 or not context.is_distributed
                        with (contextlib.nullcontext() if synchronise else discriminator_train.no_sync()), \
                                autocast(params, device):
                            losses = discriminator_train(driving, output.prediction, output.kp_driving.value.detach())
                            check_finite(losses, step)
                            (sum(losses.values()) / params.grad_accumulation).backward()
                        accumulate(running, losses)
                    optimizers["discriminator"].step()
                    optimizers["discriminator"].zero_grad(set_to_none=True)
                for scheduler in schedulers.values():
                    scheduler.step()
                step += 1
                step_start = None  # from here the step is finished: a save takes the current state

                # Maintenance.
                if step % params.log_every == 0 or step == total_steps:
                    stats = distributed.all_reduce_mean({f"Loss/{name}": value / count for name, (value, count)
                                                         in running.items()}, device)
                    if "generator" in schedulers:
                        stats["lr/generator"] = schedulers["generator"].get_last_lr()[0]
                    running = {}
                    logger.step(step, stats)
                else:
                    logger.step(step)
                if step % params.image_every == 0 or step == total_steps:
                    _, last = outputs[-1]
                    logger.image(step, training_grid(batch["source"], batch["driving"], last.prediction,
                                                     last.disparity_source, last.disparity_driving, last.kp_source,
                                                     last.kp_driving))
                stop_now = distributed.any_rank_true(stop.requested, device)
                if step % checkpoint_every == 0 or step == total_steps or stop_now:
                    save(step)
                if stop_now:
                    logger.message(f"stopped at step {step}; resume with --resume auto")
                    break
        except (DataWaitInterrupted, RuntimeError) as error:  # the data stalled, on this rank or another
            if not stopped_while_waiting(error, stop, context.is_distributed):
                raise
            stop_while_waiting_for_data(step, save, step_start, context.is_distributed, logger)
    logger.close()
    skipped = getattr(dataset, "skipped", [])
    if skipped and context.is_main:
        print(f"{len(skipped)} unreadable video(s) were skipped: {', '.join(name for name, _ in skipped[:5])}")
    return {"step": step, "stopped_by": stop.signal_number, **stats}


def accumulate(running: dict[str, tuple[float, int]], losses: dict[str, torch.Tensor]) -> None:
    """Running sums of loss values for the next statistics record."""
    for name, value in losses.items():
        total, count = running.get(name, (0.0, 0))
        running[name] = (total + float(value.detach()), count + 1)
