"""Stages ``audio`` and ``personalize``: Yi et al. 2020's audio-to-motion training on DaGAN keypoints.

``audio`` trains the general model on every prepared item of ``audio_train_params.data_dir``; ``personalize``
fine-tunes it (``init_checkpoint``, or starts from scratch) on one target clip (``target``, about 300 frames),
validating lips and pose on the clip's last ``validation_fraction`` and stopping early when neither improves;
each network's best validated weights are kept (the lips network learns ``personalize_local_lr`` times slower). Losses on standardised targets (``dagan.audio.model.Normalization``):

    local:      l1 |m - m*| + velocity |dm - dm*| + smoothness |d^2 m|          (m: local motion, d: time difference)
    pose:       pose (0.2 |p - p*| + |mean_t p - mean_t p*| + |std_t p - std_t p*| + |std_t dp - std_t dp*|)
                (moment matching: an L1 alone makes the noise-driven generator settle on a still head)

Batches and noise come from generators seeded by (seed, step), so a resumed run repeats exactly what an
uninterrupted one does. Writes checkpoints (``checkpoints/<step>.pt``, resumable) and ``audio_model.pt``.
"""
from __future__ import annotations

import copy
import os
import zlib
from typing import NamedTuple, Optional

import torch

from dagan.audio.data import MotionClip, load_item, motion_clip
from dagan.audio.model import AudioDrivenModel, Normalization
from dagan.checkpoint import CheckpointError, atomic_save
from dagan.config import AudioTrainParams, Config, config_to_dict
from dagan.data.speech import speech_items
from dagan.training.run import (CheckpointManager, RunLogger, StopRequest, TrainingError, adam,
                                apply_learning_rates, check_finite, reconcile_resumed_config, rng_state,
                                seed_everything, set_rng_state)

MODEL_FILE = "audio_model.pt"
MIN_IMPROVEMENT = 1e-3  # relative decrease of a validation loss that counts as an improvement
POSE_L1 = 0.2  # share of frame-wise L1 in the pose term (the rest matches moments: an L1 alone gives a still head)


class Batch(NamedTuple):
    windows: torch.Tensor  # (B, L, W, M)
    local: torch.Tensor  # (B, L, 6 K) standardised
    pose: torch.Tensor  # (B, L, 6) standardised
    style: torch.Tensor  # (B, 12)


def step_generator(seed: int, step: int, purpose: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{step}:{purpose}".encode()))


def sample_batch(clips: list[MotionClip], normalization: Normalization, batch_size: int, length: int,
                 generator: torch.Generator) -> Batch:
    """``batch_size`` random sequences of ``length`` frames; clips are picked in proportion to their length."""
    weights = torch.tensor([float(clip.num_frames - length + 1) for clip in clips])
    choices = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
    parts = []
    for choice in choices.tolist():
        start = int(torch.randint(0, clips[choice].num_frames - length + 1, (1,), generator=generator))
        parts.append(clips[choice].part(start, start + length))
    return stack(parts, normalization)


def stack(parts: list[MotionClip], normalization: Normalization) -> Batch:
    return Batch(torch.stack([part.windows for part in parts]),
                 (torch.stack([part.local for part in parts]) - normalization.local_mean) / normalization.local_std,
                 (torch.stack([part.pose for part in parts]) - normalization.pose_mean) / normalization.pose_std,
                 torch.stack([part.style for part in parts]))


def moment_difference(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """|mean_t p - mean_t p*| + |std_t p - std_t p*| + |std_t dp - std_t dp*| per sequence and channel, averaged:
    (B, L, C) -> (). Matching the spread (not the frames) lets the noise-driven generator keep moving."""
    mean = (prediction.mean(1) - target.mean(1)).abs().mean()
    value = (prediction.std(1) - target.std(1)).abs().mean()
    velocity = (prediction.diff(dim=1).std(1) - target.diff(dim=1).std(1)).abs().mean()
    return mean + value + velocity


def audio_losses(model: AudioDrivenModel, batch: Batch, noise: torch.Tensor, params: AudioTrainParams
                 ) -> dict[str, torch.Tensor]:
    """The named loss terms of one batch (weighted, see the module docstring)."""
    local, pose = model.standardised(batch.windows, batch.style, noise)
    return {"l1": params.l1 * (local - batch.local).abs().mean(),
            "velocity": params.velocity * (local.diff(dim=1) - batch.local.diff(dim=1)).abs().mean(),
            "smoothness": params.smoothness * local.diff(n=2, dim=1).abs().mean(),
            "pose": params.pose * (POSE_L1 * (pose - batch.pose).abs().mean() + moment_difference(pose, batch.pose))}


class TrainingData(NamedTuple):
    train: list[MotionClip]
    validation: Optional[MotionClip]  # personalize only
    num_kp: int


def load_training_data(config: Config) -> TrainingData:
    """The general corpus (stage audio) or the target clip split into its training and validation parts."""
    params, audio = config.audio_train_params, config.audio_params
    personalize = config.train_params.stage == "personalize"
    if personalize and not params.target:
        raise TrainingError("train_params.stage=personalize needs audio_train_params.target (the target clip's "
                            "prepared .npz, see scripts/prepare_av.py)")
    if personalize:
        paths, items = [params.target], [load_item(params.target)]  # checked against the item schema
    else:  # a folder of .npz items, or with dataset_params.format: stream a streaming dataset of them
        data = config.dataset_params
        paths, items, _ = speech_items(params.data_dir, data.format, data.stream_cache_dir, data.stream_cache_size)
    for path, item in zip(paths, items):
        if item.mel.shape[1] != audio.num_mels or item.keypoints.shape[1] != items[0].keypoints.shape[1]:
            raise TrainingError(f"{path}: {item.mel.shape[1]} mel bands and {item.keypoints.shape[1]} keypoints, but "
                                f"audio_params.num_mels is {audio.num_mels} and {paths[0]} has "
                                f"{items[0].keypoints.shape[1]} keypoints; prepare every item with one DaGAN "
                                "checkpoint and scripts/prepare_av.py --num_mels")
    clips = [motion_clip(item, audio.context_seconds, audio.pose_model) for item in items]
    num_kp = clips[0].local.shape[1] // 6
    validation = None
    if personalize:
        split = int(round(clips[0].num_frames * (1 - params.validation_fraction)))
        clips, validation = [clips[0].part(0, split)], clips[0].part(split, clips[0].num_frames)
    usable = [clip for clip in clips if clip.num_frames >= params.sequence_length]
    if not usable:
        raise TrainingError(f"no training clip has audio_train_params.sequence_length={params.sequence_length} frames; "
                            "lower it or give longer clips")
    return TrainingData(usable, validation, num_kp)


def build_model(config: Config, data: TrainingData) -> AudioDrivenModel:
    """A fresh model standardised on the training data, or (personalize) the init checkpoint's."""
    params = config.audio_train_params
    style = torch.stack([clip.style for clip in data.train]).mean(0)
    if config.train_params.stage == "personalize" and params.init_checkpoint:
        general = AudioDrivenModel.load(params.init_checkpoint)
        if general.num_kp != data.num_kp:
            raise CheckpointError(f"{params.init_checkpoint!r} was trained for {general.num_kp} keypoints but the target "
                                  f"clip has {data.num_kp}; prepare it with the same DaGAN checkpoint")
        model = AudioDrivenModel(config, data.num_kp, general.normalization, style)
        model.audio_motion.load_state_dict(general.audio_motion.state_dict())
        model.head_pose.load_state_dict(general.head_pose.state_dict())
    else:
        normalization = Normalization.fit(torch.cat([clip.local for clip in data.train]),
                                          torch.cat([clip.pose for clip in data.train]))
        model = AudioDrivenModel(config, data.num_kp, normalization, style)
    if data.validation is not None:
        model.reference_pose = torch.cat([data.train[0].pose, data.validation.pose])
    return model


def build_optimizer(model: AudioDrivenModel, params: AudioTrainParams, personalize: bool) -> torch.optim.Adam:
    """Adam over both networks; when personalising, the lips network learns ``personalize_local_lr`` times slower."""
    if not personalize:
        return adam(model.parameters(), lr=params.lr)
    groups = [{"params": list(model.audio_motion.parameters()), "lr": params.lr * params.personalize_local_lr},
              {"params": list(model.head_pose.parameters()), "lr": params.lr}]
    return torch.optim.Adam(groups, lr=params.lr)


@torch.no_grad()
def validation_losses(model: AudioDrivenModel, clip: MotionClip, params: AudioTrainParams, seed: int
                      ) -> tuple[float, float]:
    """(lips, pose) validation losses on ``clip``: l1 + velocity of the local motion, and the pose term."""
    model.eval()
    batch = stack([clip], model.normalization)
    noise = model.noise(1, clip.num_frames, step_generator(seed, -1, "validation"))
    losses = audio_losses(model, batch, noise, params)
    model.train()
    return float(losses["l1"] + losses["velocity"]), float(losses["pose"])


def early_stopping_update(early: dict, model: AudioDrivenModel, losses: tuple[float, float], patience: int) -> None:
    """Keep each network's best validated weights (lips and pose are validated separately); stop when neither has
    improved by MIN_IMPROVEMENT (relative) for ``patience`` validations."""
    improved = False
    for name, network, loss in (("local", model.audio_motion, losses[0]), ("pose", model.head_pose, losses[1])):
        if loss < early[f"best_{name}"] * (1 - MIN_IMPROVEMENT):
            early[f"best_{name}"] = loss
            early["networks"][network_key(name)] = copy.deepcopy(network.state_dict())
            improved = True
    early["bad"] = 0 if improved else early["bad"] + 1
    early["stopped"] = early["bad"] >= patience


def network_key(part: str) -> str:
    return {"local": "audio_motion", "pose": "head_pose"}[part]


def train_audio(config: Config, log_dir: str, resume: Optional[str] = None) -> dict:
    """Run stage ``audio`` or ``personalize`` for ``audio_train_params.num_steps`` (or until early stopping)."""
    # Initialize.
    params, run = config.audio_train_params, config.train_params
    seed_everything(run.seed)

    # Load data and build networks.
    data = load_training_data(config)
    model = build_model(config, data).train()
    optimizer = build_optimizer(model, params, personalize=run.stage == "personalize")
    early = {"best_local": float("inf"), "best_pose": float("inf"), "bad": 0, "stopped": False, "networks": {}}

    # Resume.
    checkpoints = CheckpointManager(os.path.join(log_dir, "checkpoints"), run.keep_checkpoints)
    start_step = 0
    resumed = checkpoints.resume_state(resume)
    if resumed is not None:
        resume_path, state = resumed
        changed_rates = reconcile_resumed_config(state.get("config", {}), config_to_dict(config), resume_path,
                                                 run.stage, state["training"].get("stage"),
                                                 {"optimizer": "audio_train_params.lr"})
        restored = AudioDrivenModel.from_state(state, resume_path)
        model.load_state_dict(restored.state_dict())
        model.normalization, model.style = restored.normalization, restored.style
        optimizer.load_state_dict(state["training"]["optimizer"])
        for old, new in changed_rates.values():
            apply_learning_rates(optimizer, None, old, new)
        set_rng_state(state["training"]["rng"])
        early = dict(state["training"]["early_stopping"])
        start_step = state["step"]

    def save(step: int) -> None:
        exported = model.state()
        exported["networks"].update(early["networks"])  # personalize: the best validated weights are the result
        training = {"stage": run.stage, "rng": rng_state(), "optimizer": optimizer.state_dict(),
                    "early_stopping": early}
        with stop.saving():
            checkpoints.save({**model.state(), "step": step, "training": training}, step)
            atomic_save(exported, os.path.join(log_dir, MODEL_FILE))

    # Loop.
    stop = StopRequest()
    logger = RunLogger(log_dir, config, params.num_steps, start_step, description=run.stage)
    checkpoint_every = run.checkpoint_every or max(1, params.num_steps // 10)
    step, running, stats = start_step, {}, {}
    with stop:
        while step < params.num_steps and not early["stopped"]:
            batch = sample_batch(data.train, model.normalization, params.batch_size, params.sequence_length,
                                 step_generator(run.seed, step, "batch"))
            noise = model.noise(params.batch_size, params.sequence_length, step_generator(run.seed, step, "noise"))
            losses = audio_losses(model, batch, noise, params)
            check_finite(losses, step)
            optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            optimizer.step()
            step += 1
            for name, value in losses.items():
                total, count = running.get(name, (0.0, 0))
                running[name] = (total + float(value.detach()), count + 1)

            # Maintenance.
            if data.validation is not None and (step % params.validate_every == 0 or step == params.num_steps):
                losses_now = validation_losses(model, data.validation, params, run.seed)
                running["validation_lips"], running["validation_pose"] = (losses_now[0], 1), (losses_now[1], 1)
                early_stopping_update(early, model, losses_now, params.patience)
            if step % run.log_every == 0 or step == params.num_steps or early["stopped"]:
                stats = {f"Loss/{name}": total / count for name, (total, count) in running.items()}
                running = {}
                logger.step(step, stats)
            else:
                logger.step(step)
            if step % checkpoint_every == 0 or step == params.num_steps or stop.requested or early["stopped"]:
                save(step)
            if early["stopped"]:
                logger.message(f"early stopping at step {step}: the validation losses last improved "
                               f"{params.patience * params.validate_every} steps ago (best lips "
                               f"{early['best_local']:.4g}, pose {early['best_pose']:.4g})")
            if stop.requested:
                logger.message(f"stopped at step {step}; resume with --resume auto")
                break
    logger.close()
    return {"step": step, "model": os.path.join(log_dir, MODEL_FILE), "stopped_by": stop.signal_number, **stats}
