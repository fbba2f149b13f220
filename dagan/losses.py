"""Loss terms of both training stages. Each returns a scalar tensor; callers weight and name them.

GAN stage (DaGAN Sec. 3.4, after FOMM): pyramid perceptual loss, LSGAN, feature matching, keypoint
equivariance (value and Jacobian), keypoint distance. Depth stage (DaGAN Sec. 3.1, Monodepth2): photometric
reprojection error 0.85 (1 - SSIM) / 2 + 0.15 L1 and edge-aware disparity smoothness.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dagan.geometry import Keypoints, RandomTransform
from dagan.networks.backbones import VGG19
from dagan.networks.blocks import AntiAliasDownsample


class ImagePyramid(nn.Module):
    """Anti-aliased copies of an image at several scales: {'prediction_<scale>': (B, C, H*s, W*s)}."""

    def __init__(self, scales: list[float], num_channels: int = 3):
        super().__init__()
        self.scales = [int(scale) if float(scale).is_integer() else scale for scale in scales]
        self.downsamplers = nn.ModuleList(AntiAliasDownsample(num_channels, scale) if scale != 1 else nn.Identity()
                                          for scale in self.scales)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {f"prediction_{scale}": down(image) for scale, down in zip(self.scales, self.downsamplers)}


def perceptual_loss(vgg: VGG19, real: dict[str, torch.Tensor], fake: dict[str, torch.Tensor],
                    weights: list[float]) -> torch.Tensor:
    """Sum over pyramid scales and VGG19 layers (relu1_1 ... relu5_1) of w_l mean |phi_l(fake) - phi_l(real)|."""
    total = 0.0
    for name, fake_image in fake.items():
        fake_features = vgg(fake_image)
        with torch.no_grad():
            real_features = vgg(real[name])
        for weight, fake_feature, real_feature in zip(weights, fake_features, real_features):
            total = total + weight * (fake_feature - real_feature.detach()).abs().mean()
    return total


def lsgan_generator_loss(fake_maps: dict[str, torch.Tensor]) -> torch.Tensor:
    """Least-squares GAN, generator side: mean (1 - D(fake))^2 summed over scales."""
    return sum(((1 - prediction) ** 2).mean() for prediction in fake_maps.values())


def lsgan_discriminator_loss(real_maps: dict[str, torch.Tensor], fake_maps: dict[str, torch.Tensor]) -> torch.Tensor:
    """Least-squares GAN, discriminator side: mean (1 - D(real))^2 + D(fake)^2 summed over scales."""
    return sum(((1 - real_maps[name]) ** 2 + fake_maps[name] ** 2).mean() for name in real_maps)


def feature_matching_loss(real_features: dict[str, list[torch.Tensor]], fake_features: dict[str, list[torch.Tensor]],
                          weights: list[float]) -> torch.Tensor:
    """Sum over scales and discriminator blocks of w_i mean |D_i(real) - D_i(fake)|."""
    total = 0.0
    for name, fake_maps in fake_features.items():
        for weight, real_map, fake_map in zip(weights, real_features[name], fake_maps):
            total = total + weight * (real_map.detach() - fake_map).abs().mean()
    return total


def equivariance_value_loss(kp_driving: Keypoints, kp_transformed: Keypoints, transform: RandomTransform
                            ) -> torch.Tensor:
    """Keypoints of T(driving) mapped back by T should be those of driving: mean |kp_d - T(kp_t)| (FOMM Eq. 8)."""
    return (kp_driving.value - transform.warp_coordinates(kp_transformed.value)).abs().mean()


def equivariance_jacobian_loss(kp_driving: Keypoints, kp_transformed: Keypoints, transform: RandomTransform
                               ) -> torch.Tensor:
    """mean |I - J_d^-1 (dT(kp_t) J_t)| (FOMM Eq. 9)."""
    transformed_jacobian = transform.jacobian(kp_transformed.value) @ kp_transformed.jacobian
    product = torch.inverse(kp_driving.jacobian) @ transformed_jacobian
    return (torch.eye(2, dtype=product.dtype, device=product.device) - product).abs().mean()


def keypoint_distance_loss(value: torch.Tensor, margin: float = 0.2, form: str = "hinge") -> torch.Tensor:
    """Push keypoints (B, K, 2) at least ``margin`` apart, averaged over all K x K pairs.

    ``hinge`` (default): relu(margin - |k_i - k_j|), whose gradient really separates close keypoints.
    ``sign`` (the reference): 1 - sign(|k_i - k_j| - margin), which counts close pairs but has zero gradient,
    so it never moves a keypoint; kept to reproduce the reference's training.
    """
    num_kp = value.shape[1]
    difference = value.unsqueeze(2) - value.unsqueeze(1)  # (B, K, K, 2)
    distance = torch.sqrt((difference ** 2).sum(-1) + 1e-8)
    eye = torch.eye(num_kp, dtype=value.dtype, device=value.device)
    if form == "sign":
        return (1 - torch.sign(distance + eye * margin - margin)).mean()
    if form == "hinge":
        return (F.relu(margin - distance) * (1 - eye)).mean()
    raise ValueError(f"keypoint distance form must be 'hinge' or 'sign', got {form!r}")


# Depth stage.
def ssim_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel (1 - SSIM) / 2 over 3x3 reflection-padded windows (Monodepth2's form): (B, C, H, W) in [0, 1]."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    x, y = F.pad(x, (1, 1, 1, 1), mode="reflect"), F.pad(y, (1, 1, 1, 1), mode="reflect")
    mean_x, mean_y = F.avg_pool2d(x, 3, 1), F.avg_pool2d(y, 3, 1)
    variance_x = F.avg_pool2d(x * x, 3, 1) - mean_x ** 2
    variance_y = F.avg_pool2d(y * y, 3, 1) - mean_y ** 2
    covariance = F.avg_pool2d(x * y, 3, 1) - mean_x * mean_y
    numerator = (2 * mean_x * mean_y + c1) * (2 * covariance + c2)
    denominator = (mean_x ** 2 + mean_y ** 2 + c1) * (variance_x + variance_y + c2)
    return torch.clamp((1 - numerator / denominator) / 2, 0, 1)


def photometric_error(predicted: torch.Tensor, target: torch.Tensor, ssim_weight: float = 0.85) -> torch.Tensor:
    """Per-pixel reprojection error (B, 1, H, W): ssim_weight * (1 - SSIM)/2 + (1 - ssim_weight) * L1."""
    l1 = (predicted - target).abs().mean(1, keepdim=True)
    return ssim_weight * ssim_distance(predicted, target).mean(1, keepdim=True) + (1 - ssim_weight) * l1


def edge_aware_smoothness(disparity: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Mean |d disparity| e^{-|d image|} on the mean-normalised disparity (Monodepth2's smoothness)."""
    disparity = disparity / (disparity.mean(dim=(2, 3), keepdim=True) + 1e-7)
    gradient_x = (disparity[:, :, :, :-1] - disparity[:, :, :, 1:]).abs()
    gradient_y = (disparity[:, :, :-1, :] - disparity[:, :, 1:, :]).abs()
    image_x = (image[:, :, :, :-1] - image[:, :, :, 1:]).abs().mean(1, keepdim=True)
    image_y = (image[:, :, :-1, :] - image[:, :, 1:, :]).abs().mean(1, keepdim=True)
    return (gradient_x * torch.exp(-image_x)).mean() + (gradient_y * torch.exp(-image_y)).mean()
