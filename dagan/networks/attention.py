"""Cross-modal (depth -> appearance) attention (DaGAN Sec. 3.3, Eq. 7-8).

Queries come from the *source depth* features, keys and values from the *warped appearance* features; all
three 1x1 projections are followed by ReLU, the softmax has no 1/sqrt(d) scaling (scale 1), and the result is
added back with a learned gate: out = gamma * softmax(Q K^T) V + warped.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


QUERY_CHUNK = 1024  # CPU: queries per scaled_dot_product_attention call (bounds memory at B x 1024 x N floats)


def fused_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T) V with scale 1 through ``scaled_dot_product_attention``, never forming the (B, N, N) matrix.

    query, key: (B, N, Cq); value: (B, N, Cv) -> (B, N, Cv). Fused GPU kernels need Cq == Cv, so on CUDA the
    queries and keys are zero-padded (Q K^T is unchanged). The CPU's fused kernel would then do 8x the Q K^T
    work, so on the CPU the queries go through in chunks instead, each materialising only (B, 1024, N).
    """
    query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)  # (B, 1, N, C): one head
    if query.device.type == "cuda":
        padding = value.shape[-1] - query.shape[-1]
        query, key = F.pad(query, (0, padding)), F.pad(key, (0, padding))
        return F.scaled_dot_product_attention(query, key, value, scale=1.0).squeeze(1)
    chunks = [F.scaled_dot_product_attention(query[:, :, start:start + QUERY_CHUNK], key, value, scale=1.0)
              for start in range(0, query.shape[2], QUERY_CHUNK)]
    return torch.cat(chunks, dim=2).squeeze(1)


class DepthAwareAttention(nn.Module):
    """(B, C, h, w) depth features + (B, C, h, w) warped features -> refined (B, C, h, w) features.

    :func:`fused_attention` never materialises the (B, hw, hw) attention matrix (64 MiB per image at 64x64);
    pass ``return_attention=True`` to get it anyway (visualisation, parity checks).
    """

    def __init__(self, in_dim: int):
        super().__init__()
        self.query_conv = nn.Conv2d(in_dim, in_dim // 8, kernel_size=1)
        self.key_conv = nn.Conv2d(in_dim, in_dim // 8, kernel_size=1)
        self.value_conv = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def project(self, depth_features: torch.Tensor, warped_features: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries (B, N, C/8), keys (B, N, C/8) and values (B, N, C) with N = h*w."""
        query = F.relu(self.query_conv(depth_features)).flatten(2).transpose(1, 2)
        key = F.relu(self.key_conv(warped_features)).flatten(2).transpose(1, 2)
        value = F.relu(self.value_conv(warped_features)).flatten(2).transpose(1, 2)
        return query, key, value

    def forward(self, depth_features: torch.Tensor, warped_features: torch.Tensor, return_attention: bool = False
                ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        batch, channels, height, width = warped_features.shape
        query, key, value = self.project(depth_features, warped_features)
        attention = None
        if return_attention:
            attention = torch.softmax(query @ key.transpose(1, 2), dim=-1)  # (B, N, N)
            attended = attention @ value
        else:
            attended = fused_attention(query, key, value)
        attended = attended.transpose(1, 2).reshape(batch, channels, height, width)
        return self.gamma * attended + warped_features, attention


def window_tokens(features: torch.Tensor, window: int) -> torch.Tensor:
    """(B, C, H, W) with H, W multiples of ``window`` -> (B * H/window * W/window, window * window, C)."""
    batch, channels, height, width = features.shape
    tiles = features.reshape(batch, channels, height // window, window, width // window, window)
    return tiles.permute(0, 2, 4, 3, 5, 1).reshape(-1, window * window, channels)  # (B nH nW, w*w, C)


def window_image(tokens: torch.Tensor, batch: int, height: int, width: int, window: int) -> torch.Tensor:
    """Inverse of :func:`window_tokens`: (B * nH * nW, window * window, C) -> (B, C, H, W)."""
    channels = tokens.shape[-1]
    tiles = tokens.reshape(batch, height // window, width // window, window, window, channels)
    return tiles.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, height, width)


class WindowedDepthAttention(nn.Module):
    """DaGAN++'s cross-modal attention at a finer decoder level, in non-overlapping windows, behind a zero gate.

    depth_features (B, Cd, h, w): the source depth branch at this scale (queries); warped (B, Ca, h, w): the
    occluded, warped appearance features at this scale (keys, values); decoder (B, Co, h, w): the decoder's
    features at this level. Returns ``decoder + gate * softmax(Q K^T) V`` with the attention of DaGAN Eq. 7-8
    (ReLU projections, scale 1) restricted to ``window`` x ``window`` tiles, so memory and work grow linearly
    with h*w: per image 2 h w window^2 (Cq + Co) multiply-adds for the attention, never more than a
    (window^2 x window^2) matrix per tile. ``gate`` starts at 0: a new block leaves the decoder unchanged.
    Maps whose sides are not multiples of ``window`` are edge-padded for the attention and cropped back.
    """

    def __init__(self, depth_channels: int, appearance_channels: int, out_channels: int, window: int):
        super().__init__()
        hidden = max(1, appearance_channels // 8)
        self.window = window
        self.query_conv = nn.Conv2d(depth_channels, hidden, kernel_size=1)
        self.key_conv = nn.Conv2d(appearance_channels, hidden, kernel_size=1)
        self.value_conv = nn.Conv2d(appearance_channels, out_channels, kernel_size=1)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, depth_features: torch.Tensor, warped_features: torch.Tensor, decoder_features: torch.Tensor
                ) -> torch.Tensor:
        batch, _, height, width = decoder_features.shape
        window = self.window
        padding = (0, -width % window, 0, -height % window)
        if any(padding):
            depth_features = F.pad(depth_features, padding, mode="replicate")
            warped_features = F.pad(warped_features, padding, mode="replicate")
        query = window_tokens(F.relu(self.query_conv(depth_features)), window)
        key = window_tokens(F.relu(self.key_conv(warped_features)), window)
        value = window_tokens(F.relu(self.value_conv(warped_features)), window)
        attended = window_image(fused_attention(query, key, value), batch, height + padding[3], width + padding[1],
                                window)
        return decoder_features + self.gate * attended[:, :, :height, :width]
