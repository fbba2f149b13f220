"""The audio-driven motion model: both networks, the statistics that standardise their targets, and the target's
pose style, in one checkpoint file (``audio_model.pt``) that training writes and ``demo.py --driving_audio`` reads.

    model = AudioDrivenModel.load("audio_model.pt")
    motion = model.predict(mel, frame_times(num_frames, 25.0), seed=0)   # pose (T, 6), local (T, 6 K)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Optional

import numpy as np
import torch
from torch import nn

from dagan.audio.features import MEL_RATE, MelRows, context_frames, feature_windows
from dagan.audio.motion import POSE_SIZE, local_size
from dagan.checkpoint import CheckpointError, atomic_save, read_file
from dagan.config import AudioParams, Config, config_from_dict, config_to_dict
from dagan.networks.audio_motion import AudioMotionNetwork
from dagan.networks.head_pose import NOISE_KERNEL, STYLE_SIZE, HeadPoseGenerator, smooth_noise

FORMAT = "dagan-audio"
CHUNK_FRAMES = 256  # frames per inference window (bounded memory for any audio length)
CHUNK_OVERLAP = 50  # extra frames on each side of a window for the bidirectional network's context
MIN_STD = 1e-4


class AudioMotion(NamedTuple):
    """pose: (T, 6) head pose, local: (T, 6 K) local motion (unstandardised, see ``dagan.audio.motion``)."""

    pose: torch.Tensor
    local: torch.Tensor


@dataclass
class Normalization:
    """Per-dimension mean and std of the training targets: local (6 K,) and pose (6,)."""

    local_mean: torch.Tensor
    local_std: torch.Tensor
    pose_mean: torch.Tensor
    pose_std: torch.Tensor

    @classmethod
    def fit(cls, local: torch.Tensor, pose: torch.Tensor) -> "Normalization":
        """From concatenated targets local (N, 6 K), pose (N, 6)."""
        return cls(local.mean(0), local.std(0).clamp(min=MIN_STD), pose.mean(0), pose.std(0).clamp(min=MIN_STD))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in ("local_mean", "local_std", "pose_mean", "pose_std")}


class AudioDrivenModel(nn.Module):
    """Audio -> local motion network + head-pose generator for ``num_kp`` keypoints."""

    def __init__(self, config: Config, num_kp: int, normalization: Optional[Normalization] = None,
                 style: Optional[torch.Tensor] = None):
        super().__init__()
        params: AudioParams = config.audio_params
        self.config, self.num_kp = config, num_kp
        window = 2 * context_frames(params.context_seconds) + 1
        self.audio_motion = AudioMotionNetwork(params.num_mels, window, local_size(num_kp), params.audio_channels,
                                               params.hidden_channels)
        self.head_pose = HeadPoseGenerator(params.audio_channels, POSE_SIZE, params.pose_hidden_channels,
                                           params.noise_channels)
        dimension = local_size(num_kp)
        self.normalization = normalization or Normalization(torch.zeros(dimension), torch.ones(dimension),
                                                            torch.zeros(POSE_SIZE), torch.ones(POSE_SIZE))
        self.style = torch.zeros(STYLE_SIZE) if style is None else style.float()
        self.reference_pose: Optional[torch.Tensor] = None  # (T, 6) the personalisation clip's poses, if any

    @property
    def params(self) -> AudioParams:
        return self.config.audio_params

    def noise(self, batch: int, frames: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """The head-pose generator's noise (B, T, Z): smoothed in time (``smooth_noise``)."""
        white = torch.randn(batch, frames + NOISE_KERNEL, self.params.noise_channels, generator=generator)
        return smooth_noise(white)[:, NOISE_KERNEL:]  # drop the warm-up

    def standardised(self, windows: torch.Tensor, style: torch.Tensor, noise: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training forward: windows (B, T, W, M), style (B, 12), noise (B, T, Z) -> standardised (local, pose)."""
        output = self.audio_motion(windows)
        return output.local, self.head_pose(output.audio.detach(), style, noise)

    @torch.no_grad()
    def predict(self, mel: torch.Tensor, times: np.ndarray, style: Optional[torch.Tensor] = None, seed: int = 0,
                chunk_frames: int = CHUNK_FRAMES, overlap: int = CHUNK_OVERLAP) -> AudioMotion:
        """Motion for video frames at ``times`` (T,) seconds from a whole clip's log-mel (N, M): all of
        :meth:`predict_chunks` at once."""
        chunks = list(self.predict_chunks(MelRows.of(mel), times, style, seed, chunk_frames, overlap))
        return AudioMotion(torch.cat([chunk.pose for chunk in chunks]), torch.cat([chunk.local for chunk in chunks]))

    @torch.no_grad()
    def predict_chunks(self, mel: MelRows, times: np.ndarray, style: Optional[torch.Tensor] = None, seed: int = 0,
                       chunk_frames: int = CHUNK_FRAMES, overlap: int = CHUNK_OVERLAP) -> Iterator[AudioMotion]:
        """Motion for the video frames at ``times`` (T,) seconds, ``chunk_frames`` frames at a time, from log-mel
        rows read as they are needed (a streamed clip's :class:`~dagan.audio.features.MelRows`).

        Each chunk sees ``overlap`` frames of context on each side (the bidirectional local network); the pose
        generator's state carries over, so memory does not grow with the length.
        """
        style = (self.style if style is None else style).float()[None]
        noise = self.noise(1, len(times), torch.Generator().manual_seed(seed))  # (1, T, Z): 32 bytes a frame
        state = None
        for start in range(0, len(times), chunk_frames):
            stop = min(len(times), start + chunk_frames)
            local, pose, state = self.chunk_step(mel, times, start, stop, overlap, style, noise[:, start:stop],
                                                 state)
            yield AudioMotion(pose, local)

    @torch.no_grad()
    def predict_chunk(self, mel: torch.Tensor, times: np.ndarray, start: int, stop: int, overlap: int,
                      style: torch.Tensor, noise: torch.Tensor, state: Optional[torch.Tensor]
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`chunk_step` on the log-mel received so far (N, M) (live speech, :mod:`dagan.audio.streaming`)."""
        return self.chunk_step(MelRows.of(mel), times, start, stop, overlap, style, noise, state)

    def chunk_step(self, mel: MelRows, times: np.ndarray, start: int, stop: int, overlap: int, style: torch.Tensor,
                   noise: torch.Tensor, state: Optional[torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frames ``start:stop`` of ``times``: local motion (stop - start, 6 K) and pose (stop - start, 6),
        unstandardised, and the pose generator's state for the next chunk. The local network sees ``overlap``
        frames of context on each side (within ``times``); style (1, 12); noise (1, stop - start, Z). The offline
        and the live paths both run this one step."""
        first, last = max(0, start - overlap), min(len(times), stop + overlap)
        centres = np.round(np.asarray(times[first:last]) * MEL_RATE).astype(np.int64)
        context = context_frames(self.params.context_seconds)
        first_row = max(0, int(centres.min()) - context)  # rows before the signal read silence
        rows = mel.rows(first_row, int(centres.max()) + context + 1)
        windows = feature_windows(rows, times[first:last], self.params.context_seconds, first_row)[None]
        output = self.audio_motion(windows)
        norm = self.normalization
        local = output.local[0, start - first:stop - first] * norm.local_std + norm.local_mean
        pose, state = self.head_pose.run(output.audio[:, start - first:stop - first], style, noise, state)
        return local, pose[0] * norm.pose_std + norm.pose_mean, state

    # Persistence.
    def state(self) -> dict:
        """Everything that rebuilds the model, as tensors and plain types (loads with weights_only=True)."""
        state = {"format": FORMAT, "version": 1, "config": config_to_dict(self.config), "num_kp": self.num_kp,
                 "networks": {"audio_motion": self.audio_motion.state_dict(), "head_pose": self.head_pose.state_dict()},
                 "normalization": self.normalization.state_dict(), "style": self.style}
        if self.reference_pose is not None:
            state["reference_pose"] = self.reference_pose
        return state

    def save(self, path: str | os.PathLike) -> None:
        atomic_save(self.state(), path)

    @classmethod
    def from_state(cls, state: dict, path: str = "the audio checkpoint") -> "AudioDrivenModel":
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not an audio model (train one with train_params.stage=audio or "
                                  "scripts/personalize.py)")
        model = cls(config_from_dict(state["config"]), int(state["num_kp"]), Normalization(**state["normalization"]),
                    state["style"])
        model.audio_motion.load_state_dict(state["networks"]["audio_motion"])
        model.head_pose.load_state_dict(state["networks"]["head_pose"])
        model.reference_pose = state.get("reference_pose")
        return model.eval()

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AudioDrivenModel":
        return cls.from_state(read_file(path, "cpu", "audio checkpoint"), repr(os.fspath(path)))
