"""Audio -> local motion (the lips and expression part of DaGAN's keypoints), Yi et al. 2020's audio network
on our motion space.

Each video frame has a window of log-mel frames around its time (``dagan.audio.features.feature_windows``,
+-200 ms or more); a strided 1-D conv over the window's time axis encodes it into one vector per frame; a
bidirectional GRU over the frames adds longer context (coarticulation); a linear layer predicts the
standardised local motion of all keypoints (DaGAN's unsupervised keypoints have no fixed meaning, so none is
singled out as "the mouth").
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class AudioWindowEncoder(nn.Module):
    """Mel windows (B, T, W, M) -> per-frame audio codes (B, T, C): a strided conv over the window's W mel frames
    (mels as channels), flattened and projected (the position in the window matters: it is the timing)."""

    def __init__(self, num_mels: int, window: int, channels: int):
        super().__init__()
        self.conv = nn.Conv1d(num_mels, channels, 5, stride=2, padding=2)
        self.project = nn.Sequential(nn.LeakyReLU(0.2), nn.Linear(channels * ((window + 1) // 2), channels),
                                     nn.LeakyReLU(0.2))

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        batch, frames, width, mels = windows.shape
        features = self.conv(windows.reshape(batch * frames, width, mels).transpose(1, 2))  # (B*T, C, W')
        return self.project(features.flatten(1)).reshape(batch, frames, -1)  # (B, T, C)


class AudioMotionOutput(NamedTuple):
    local: torch.Tensor  # (B, T, D) standardised local motion
    audio: torch.Tensor  # (B, T, C) per-frame audio codes


class AudioMotionNetwork(nn.Module):
    """windows (B, T, W, M) log-mel -> standardised local motion (B, T, output_size) and the audio codes (B, T, C),
    which the head-pose generator reads too."""

    def __init__(self, num_mels: int, window: int, output_size: int, audio_channels: int = 128,
                 hidden_channels: int = 128):
        super().__init__()
        self.encoder = AudioWindowEncoder(num_mels, window, audio_channels)
        self.recurrent = nn.GRU(audio_channels, hidden_channels, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden_channels + audio_channels, output_size)

    def forward(self, windows: torch.Tensor) -> AudioMotionOutput:
        audio = self.encoder(windows)
        context, _ = self.recurrent(audio)  # (B, T, 2H)
        return AudioMotionOutput(self.head(torch.cat([context, audio], dim=-1)), audio)
