"""Convolution blocks shared by the keypoint detector, the dense-motion network and the generator.

Module and attribute names (``conv``, ``norm``, ``encoder.down_blocks.N``, ``decoder.up_blocks.N``) are those
of the official DaGAN checkpoints, so their state_dicts load strictly.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn


class SameBlock2d(nn.Module):
    """conv -> BatchNorm -> ReLU at constant resolution."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class DownBlock2d(nn.Module):
    """conv3x3 -> BatchNorm -> ReLU -> 2x2 average pool: (B, C_in, H, W) -> (B, C_out, H/2, W/2)."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), kernel_size=2)


def _merge_taps(kernel: torch.Tensor, dim: int, phase: int) -> torch.Tensor:
    """Collapse 3 taps along ``dim`` onto the 2 input pixels they read after nearest x2 upsampling.

    Output pixel 2i reads upsampled pixels 2i-1, 2i, 2i+1 = input pixels i-1, i, i (taps: w0 | w1 + w2);
    output pixel 2i+1 reads 2i, 2i+1, 2i+2 = input pixels i, i, i+1 (taps: w0 + w1 | w2).
    """
    first, middle, last = kernel.unbind(dim)
    pair = (first, middle + last) if phase == 0 else (first + middle, last)
    return torch.stack(pair, dim)


def upsample_conv3x3(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(nearest_upsample_x2(x))`` for a zero-padded 3x3 conv, computed at the input resolution.

    Each of the four output phases (row parity, column parity) is a 2x2 convolution of x with merged taps:
    16 instead of 36 multiply-adds per input pixel, the same result up to float rounding.
    x: (B, C_in, H, W) -> (B, C_out, 2H, 2W).
    """
    batch, _, height, width = x.shape
    padded = F.pad(x, (1, 1, 1, 1))
    phases = []
    for row in range(2):
        rows = _merge_taps(conv.weight, 2, row)
        for column in range(2):
            kernel = _merge_taps(rows, 3, column)  # (C_out, C_in, 2, 2)
            phases.append(F.conv2d(padded[:, :, row:row + height + 1, column:column + width + 1], kernel, conv.bias))
    out = torch.stack(phases, dim=2).view(batch, -1, 2, 2, height, width)  # (B, C, row, column, H, W)
    return out.permute(0, 1, 4, 2, 5, 3).reshape(batch, -1, 2 * height, 2 * width)


class UpBlock2d(nn.Module):
    """nearest x2 upsample -> conv3x3 -> BatchNorm -> ReLU: (B, C_in, H, W) -> (B, C_out, 2H, 2W).

    On inputs of 16x16 and more the upsample-then-convolve pair runs as :func:`upsample_conv3x3` (2.25x fewer
    multiply-adds, same result up to float rounding).
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Merging the taps costs a pass over the weights: it pays off from 16x16 inputs on (measured on a CPU).
        if self.conv.kernel_size == (3, 3) and self.conv.padding == (1, 1) and x.shape[2] * x.shape[3] >= 256:
            x = upsample_conv3x3(x, self.conv)
        else:
            x = self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        return F.relu(self.norm(x))


class ResBlock2d(nn.Module):
    """Pre-activation residual block: x + conv(relu(bn(conv(relu(bn(x))))))."""

    def __init__(self, features: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=kernel_size, padding=padding)
        self.conv2 = nn.Conv2d(features, features, kernel_size=kernel_size, padding=padding)
        self.norm1 = nn.BatchNorm2d(features, affine=True)
        self.norm2 = nn.BatchNorm2d(features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x


def hourglass_width(block_expansion: int, max_features: int, level: int) -> int:
    """Channels after ``level`` down blocks of an hourglass: min(max_features, block_expansion * 2**level)."""
    return min(max_features, block_expansion * 2 ** level)


class HourglassEncoder(nn.Module):
    """``num_blocks`` DownBlocks; returns the input and every block's output (the skip connections)."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        self.down_blocks = nn.ModuleList(
            DownBlock2d(in_features if level == 0 else hourglass_width(block_expansion, max_features, level),
                        hourglass_width(block_expansion, max_features, level + 1))
            for level in range(num_blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = [x]
        for block in self.down_blocks:
            outputs.append(block(outputs[-1]))
        return outputs


class HourglassDecoder(nn.Module):
    """UpBlocks from the deepest skip upwards, each output concatenated with the matching skip."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        blocks = []
        for level in reversed(range(num_blocks)):
            multiplier = 1 if level == num_blocks - 1 else 2  # deeper levels arrive concatenated with a skip
            blocks.append(UpBlock2d(multiplier * hourglass_width(block_expansion, max_features, level + 1),
                                    hourglass_width(block_expansion, max_features, level)))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = block_expansion + in_features

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        out = skips[-1]
        for index, block in enumerate(self.up_blocks):
            out = torch.cat([block(out), skips[-2 - index]], dim=1)
        return out


class Hourglass(nn.Module):
    """U-Net hourglass: (B, in_features, H, W) -> (B, block_expansion + in_features, H, W).

    H and W must be divisible by 2**num_blocks.
    """

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256):
        super().__init__()
        self.encoder = HourglassEncoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = HourglassDecoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def gaussian_kernel(channels: int, scale: float) -> torch.Tensor:
    """Normalised Gaussian blur kernel for anti-aliased downsampling by ``scale``: (channels, 1, k, k).

    sigma = (1/scale - 1) / 2 and k = 2 * round(4 sigma) + 1 (13x13 with sigma 1.5 for scale 0.25).
    """
    sigma = (1.0 / scale - 1.0) / 2.0
    size = 2 * round(sigma * 4) + 1
    positions = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    profile = torch.exp(-positions ** 2 / (2 * sigma ** 2))
    kernel = profile[:, None] * profile[None, :]
    kernel = kernel / kernel.sum()
    return kernel.expand(channels, 1, size, size).contiguous()


class AntiAliasDownsample(nn.Module):
    """Gaussian blur (zero padding) sampled every (1/scale)-th pixel: (B, C, H, W) -> (B, C, H*scale, W*scale).

    A strided convolution gives exactly the blurred image's pixels 0, s, 2s, ... without computing the others.
    The kernel is a buffer named ``weight`` because the official checkpoints store it (``down.weight``).
    """

    def __init__(self, channels: int, scale: float):
        super().__init__()
        if not 0 < scale < 1:
            raise ValueError(f"AntiAliasDownsample needs 0 < scale < 1, got {scale}")
        self.stride = int(round(1.0 / scale))
        self.register_buffer("weight", gaussian_kernel(channels, scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.weight.shape[-1]
        before, after = size // 2, size // 2 - (1 - size % 2)
        x = F.pad(x, (before, after, before, after))
        return F.conv2d(x, self.weight.to(x.dtype), stride=self.stride, groups=x.shape[1])


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (buffers excluded)."""
    return sum(parameter.numel() for parameter in module.parameters())


def spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral normalisation with the classic hook (state-dict keys ``weight_orig``, ``weight_u``, ``weight_v``,
    as in the official checkpoints); in eval mode it uses the stored u, v without power iteration."""
    with warnings.catch_warnings():  # the hook API is deprecated, but its keys are the release's
        warnings.simplefilter("ignore")
        return nn.utils.spectral_norm(module)
