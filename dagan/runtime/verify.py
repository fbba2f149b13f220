"""Exported graphs against the torch model: each graph fed the torch model's own upstream outputs."""
from __future__ import annotations

import os
from typing import Optional

import torch

from dagan.geometry import normalize_keypoints
from dagan.model import DaGAN
from dagan.runtime.backends import ExportedNetworks


@torch.no_grad()
def graph_differences(model: DaGAN, exported: ExportedNetworks, images: Optional[torch.Tensor] = None
                      ) -> dict[str, float]:
    """Max abs difference of every exported graph output vs torch (the unfolded model), by output name.

    images: (B >= 2, 3, H, W) in [0, 1]; image 0 is the source, image 1 the initial driving frame and all B are
    driving frames (relative motion with Jacobians). Default: two random images at the model's resolution.
    """
    model = model.eval()
    if images is None:
        height, width = model.config.dataset_params.frame_shape[:2]
        images = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    batch = images.shape[0]
    disparity = model.depth(images)
    keypoints = model.keypoints(images, disparity)
    features = model.encode_source(images[:1], disparity[:1])
    kp_source = keypoints.index(slice(0, 1))
    kp_norm = normalize_keypoints(kp_source, keypoints, keypoints.index(slice(1, 2)), use_relative_movement=True,
                                  use_relative_jacobian=True)
    source = images[:1].expand(batch, -1, -1, -1)
    prediction = model.generate(source, kp_source, kp_norm, source_features=features.expand(batch),
                                return_deformed=False).prediction
    ours_keypoints = exported.keypoints(images, disparity)
    ours_features = exported.encode_source(images[:1], disparity[:1])
    pairs = {
        "disparity": (exported.depth(images), disparity),
        "kp_value": (ours_keypoints.value, keypoints.value),
        "appearance": (ours_features.appearance, features.appearance),
        "depth_features": (ours_features.depth, features.depth),
        "prediction": (exported.render(source, kp_source, kp_norm, features.expand(batch)).prediction, prediction),
    }
    if keypoints.jacobian is not None:
        pairs["kp_jacobian"] = (ours_keypoints.jacobian, keypoints.jacobian)
    return {name: float((ours - theirs).abs().max()) for name, (ours, theirs) in pairs.items()}


def largest_difference(model: DaGAN, directory: str | os.PathLike, backend: str = "onnxruntime") -> float:
    return max(graph_differences(model, ExportedNetworks(directory, backend)).values())
