"""SyncNet (Chung & Zisserman 2016, "Out of time: automated lip sync in the wild"): two streams that embed 0.2 s of
speech and the five video frames shown during it into one 1024-d space, where in-sync pairs lie close.

The layers, their order and their ``state_dict`` keys are those of the public ``syncnet_python`` release, so its
``syncnet_v2.model`` (a bare state dict) loads with ``strict=True``:

* ``netcnnaud`` / ``netfcaud``: MFCC window (B, 1, 13, 20) -> 2-D convolutions -> (B, 512, 1, 1) -> MLP -> (B, 1024);
* ``netcnnlip`` / ``netfclip``: clip (B, 3, 5, 224, 224) -> 3-D convolutions (the first one spans the 5 frames)
  -> (B, 512, 1, 1, 1) -> MLP -> (B, 1024).

Inputs are the release's, unnormalised: the audio stream reads python_speech_features MFCCs of 16-bit PCM values
(``dagan.audio.features.mfcc``), the lip stream reads BGR pixel values in [0, 255]. The release's pooling layer of
size 1 (a no-op) is kept so that the layer indices, hence the keys, match. No file I/O here: the weights are read
by ``dagan.eval.lipsync.load_syncnet``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

MFCC_WINDOW_SHAPE = (1, 13, 20)  # (channels, coefficients, MFCC frames): 20 frames of 10 ms = 0.2 s
LIP_CLIP_SHAPE = (3, 5, 224, 224)  # (BGR, frames, height, width): 5 frames at 25 fps = 0.2 s
EMBEDDING_SIZE = 1024
TRUNK_CHANNELS = 512  # both convolution stacks end in 512 channels on a 1x1 (x1) grid


def convolution_block(convolution: nn.Module, pool: Optional[nn.Module] = None) -> list[nn.Module]:
    """[convolution, batch norm, ReLU] (+ pool): four or three entries, as the release lays out its layers."""
    norm = nn.BatchNorm3d if isinstance(convolution, nn.Conv3d) else nn.BatchNorm2d
    return [convolution, norm(convolution.out_channels), nn.ReLU(inplace=True)] + ([pool] if pool is not None else [])


def audio_trunk() -> nn.Sequential:
    """(B, 1, 13, 20) MFCC -> (B, 512, 1, 1). Spatial sizes: 13x20 -> 11x9 (pool 3, stride (1, 2)) -> 5x4 (pool 3,
    stride 2) -> 1x1 (a 5x4 convolution)."""
    layers: list[nn.Module] = []
    layers += convolution_block(nn.Conv2d(1, 64, 3, padding=1), nn.MaxPool2d(1, 1))  # the release's no-op pool
    layers += convolution_block(nn.Conv2d(64, 192, 3, padding=1), nn.MaxPool2d(3, stride=(1, 2)))
    layers += convolution_block(nn.Conv2d(192, 384, 3, padding=1))
    layers += convolution_block(nn.Conv2d(384, 256, 3, padding=1))
    layers += convolution_block(nn.Conv2d(256, 256, 3, padding=1), nn.MaxPool2d(3, stride=2))
    layers += convolution_block(nn.Conv2d(256, TRUNK_CHANNELS, (5, 4)))
    return nn.Sequential(*layers)


def lip_trunk() -> nn.Sequential:
    """(B, 3, 5, 224, 224) clip -> (B, 512, 1, 1, 1). The first convolution (5x7x7, stride 2) merges the five
    frames; spatial sizes 224 -> 109 -> 54 (pool) -> 26 -> 13 (pool) -> 13 -> 6 (pool) -> 1 (a 6x6 convolution)."""
    layers: list[nn.Module] = []
    layers += convolution_block(nn.Conv3d(3, 96, (5, 7, 7), stride=(1, 2, 2)), nn.MaxPool3d((1, 3, 3), (1, 2, 2)))
    layers += convolution_block(nn.Conv3d(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
                                nn.MaxPool3d((1, 3, 3), (1, 2, 2), padding=(0, 1, 1)))
    layers += convolution_block(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)))
    layers += convolution_block(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)))
    layers += convolution_block(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.MaxPool3d((1, 3, 3), (1, 2, 2)))
    layers += convolution_block(nn.Conv3d(256, TRUNK_CHANNELS, (1, 6, 6)))
    return nn.Sequential(*layers)


def embedding_head(embedding_size: int) -> nn.Sequential:
    """(B, 512) trunk features -> (B, embedding_size): linear, batch norm, ReLU, linear."""
    return nn.Sequential(nn.Linear(TRUNK_CHANNELS, TRUNK_CHANNELS), nn.BatchNorm1d(TRUNK_CHANNELS), nn.ReLU(),
                         nn.Linear(TRUNK_CHANNELS, embedding_size))


class SyncNet(nn.Module):
    """The two-stream SyncNet of the ``syncnet_python`` release (module docstring); attribute names = its keys."""

    def __init__(self, embedding_size: int = EMBEDDING_SIZE):
        super().__init__()
        self.netcnnaud = audio_trunk()
        self.netfcaud = embedding_head(embedding_size)
        self.netcnnlip = lip_trunk()
        self.netfclip = embedding_head(embedding_size)

    def embed_audio(self, mfcc_windows: torch.Tensor) -> torch.Tensor:
        """mfcc_windows: (B, 1, 13, 20) MFCCs (coefficients x 10 ms frames) -> (B, embedding_size)."""
        _check_shape(mfcc_windows, MFCC_WINDOW_SHAPE, "MFCC windows")
        features = self.netcnnaud(mfcc_windows)  # (B, 512, 1, 1)
        return self.netfcaud(features.flatten(1))  # (B, 512) -> (B, E)

    def embed_lips(self, clips: torch.Tensor) -> torch.Tensor:
        """clips: (B, 3, 5, 224, 224) BGR face crops in [0, 255] of five consecutive 25 fps frames
        -> (B, embedding_size)."""
        _check_shape(clips, LIP_CLIP_SHAPE, "lip clips")
        features = self.netcnnlip(clips)  # (B, 512, 1, 1, 1)
        return self.netfclip(features.flatten(1))  # (B, 512) -> (B, E)

    def forward(self, mfcc_windows: torch.Tensor, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(audio embeddings, lip embeddings), each (B, embedding_size)."""
        return self.embed_audio(mfcc_windows), self.embed_lips(clips)


def _check_shape(tensor: torch.Tensor, expected: Sequence[int], what: str) -> None:
    if tensor.dim() != len(expected) + 1 or tuple(tensor.shape[1:]) != tuple(expected):
        raise ValueError(f"SyncNet {what} must be (B, {', '.join(map(str, expected))}), got {tuple(tensor.shape)}")
