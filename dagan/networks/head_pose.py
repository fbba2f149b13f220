"""The head-pose generator: audio + the target's pose style + noise -> a head-pose sequence (Yi et al. 2020's
personalised head pose, on the similarity/affine pose of DaGAN's keypoint set, see ``dagan.audio.motion``).

A unidirectional GRU runs over the frames with, at each frame, the frame's audio code (from the audio network's
encoder, ``dagan.networks.audio_motion``), the style vector (the
log spread of the target's pose and pose velocity, ``style_vector``) and slowly drifting Gaussian noise (``smooth_noise``), so the same
speech gives a different but same-styled head motion for each seed. Trained with a term that matches the spread
of the generated pose to the clip's (``dagan.training.audio_stage``), it cannot settle on a still head.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

STYLE_SIZE = 12
NOISE_MEMORY = (0.8, 0.98)  # AR(1) coefficients (per frame) of the slowest and fastest noise channels
NOISE_KERNEL = 128  # frames of the truncated AR(1) impulse response


def smooth_noise(white: torch.Tensor) -> torch.Tensor:
    """White noise (B, T, Z) -> unit-variance AR(1) noise y_t = a y_(t-1) + sqrt(1 - a^2) x_t, with a from
    NOISE_MEMORY[0] (channel 0) to NOISE_MEMORY[1] (last channel): slow random drifts a head motion can follow."""
    channels = white.shape[-1]
    if channels == 0:
        return white
    memory = torch.linspace(*NOISE_MEMORY, channels, dtype=white.dtype)[:, None]  # (Z, 1)
    lags = torch.arange(NOISE_KERNEL, dtype=white.dtype)[None]  # (1, L)
    kernel = (memory ** lags * torch.sqrt(1 - memory ** 2)).flip(-1)[:, None]  # (Z, 1, L), causal after padding
    padded = torch.nn.functional.pad(white.transpose(1, 2), (NOISE_KERNEL - 1, 0))  # (B, Z, T + L - 1)
    return torch.nn.functional.conv1d(padded, kernel, groups=channels).transpose(1, 2)  # (B, T, Z)


class HeadPoseGenerator(nn.Module):
    """audio codes (B, T, C), style (B, 12), noise (B, T, Z) -> standardised pose (B, T, 6)."""

    def __init__(self, audio_channels: int, pose_size: int = 6, hidden_channels: int = 64, noise_channels: int = 8):
        super().__init__()
        self.noise_channels = noise_channels
        self.recurrent = nn.GRU(audio_channels + STYLE_SIZE + noise_channels, hidden_channels, num_layers=2,
                                batch_first=True)
        self.head = nn.Linear(hidden_channels, pose_size)

    def forward(self, audio: torch.Tensor, style: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.run(audio, style, noise)[0]

    def run(self, audio: torch.Tensor, style: torch.Tensor, noise: torch.Tensor,
            state: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` that also takes and returns the GRU state (2, B, H), to continue in the next window."""
        style = style[:, None].expand(-1, audio.shape[1], -1)  # (B, T, 12)
        hidden, state = self.recurrent(torch.cat([audio, style, noise], dim=-1), state)  # (B, T, H)
        return self.head(hidden), state
