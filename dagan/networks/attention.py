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


QUERY_CHUNK = 256  # CPU: queries per chunk (bounds memory at B x 256 x N floats, and stays in the caches)


def fused_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T) V with scale 1, never forming the (B, N, N) matrix.

    query, key: (B, N, Cq); value: (B, N, Cv) -> (B, N, Cv). On CUDA through ``scaled_dot_product_attention``,
    whose fused kernels need Cq == Cv, so the queries and keys are zero-padded (Q K^T is unchanged). On the CPU
    that padding would do 8x the Q K^T work, so the queries go through in chunks of :data:`QUERY_CHUNK`
    (:func:`chunked_attention`; with autograd or when traced for ONNX, the same chunks through ``torch.softmax``).
    """
    if query.device.type == "cuda":
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)  # (B, 1, N, C): one head
        padding = value.shape[-1] - query.shape[-1]
        query, key = F.pad(query, (0, padding)), F.pad(key, (0, padding))
        return F.scaled_dot_product_attention(query, key, value, scale=1.0).squeeze(1)
    needs_graph = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)
    if needs_graph or torch.jit.is_tracing():  # autograd, or a traced (ONNX) graph: no in-place or out= writes
        key_transposed = key.transpose(1, 2)
        return torch.cat([torch.softmax(query[:, start:start + QUERY_CHUNK] @ key_transposed, dim=-1) @ value
                          for start in range(0, query.shape[1], QUERY_CHUNK)], dim=1)
    return chunked_attention(query, key, value)


def chunked_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, chunk: int = QUERY_CHUNK
                      ) -> torch.Tensor:
    """softmax(Q K^T) V, (B, N, Cq), (B, N, Cq), (B, N, Cv) -> (B, N, Cv), ``chunk`` queries at a time.

    Per chunk the scores S (B, chunk, N) are exponentiated in place after subtracting their row maximum, and the
    normalisation by the row sums is applied to the (B, chunk, Cv) product instead of to S:
    softmax(S) V = (exp(S - max S) V) / sum exp(S - max S). One pass over S fewer than ``torch.softmax``, and
    none of the extra masking passes of ``scaled_dot_product_attention``'s CPU fallback.
    """
    batch, length, _ = query.shape
    output = torch.empty(batch, length, value.shape[-1], dtype=value.dtype, device=value.device)
    key_transposed = key.transpose(1, 2).contiguous()  # (B, Cq, N)
    for start in range(0, length, chunk):
        scores = torch.bmm(query[:, start:start + chunk], key_transposed)  # (B, chunk, N)
        scores -= scores.amax(dim=-1, keepdim=True)
        scores.exp_()
        totals = scores.sum(dim=-1, keepdim=True)
        rows = output[:, start:start + chunk]
        torch.bmm(scores, value, out=rows)
        rows /= totals
    return output


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
