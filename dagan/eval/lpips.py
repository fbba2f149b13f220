"""LPIPS (Zhang et al., CVPR 2018) with user-supplied weight files, without torchvision or the ``lpips`` package.

LPIPS needs two files, and neither can be downloaded here (nothing is ever downloaded by this module):

1. the ImageNet trunk in torchvision's format (keys ``features.N.weight`` / ``features.N.bias``; other keys,
   e.g. ``classifier.*``, are ignored):
   ``alexnet-owt-7be5be79.pth`` (net ``alex``) or ``vgg16-397923af.pth`` (net ``vgg``), from
   ``https://download.pytorch.org/models/<file>``;
2. the LPIPS v0.1 linear heads in the official ``lpips`` package format (keys ``lin0.model.1.weight`` ...
   ``lin4.model.1.weight``): ``alex.pth`` / ``vgg.pth`` from ``lpips/weights/v0.1/`` inside the ``lpips`` wheel
   (``pip download --no-deps lpips==0.1.4``, then unzip) or the PerceptualSimilarity repository on GitHub.

Paths come from ``--lpips_trunk`` / ``--lpips_head`` or the environment variables ``DAGAN_LPIPS_TRUNK`` /
``DAGAN_LPIPS_HEAD``. The computation follows ``lpips.LPIPS(net, version="0.1")`` with ``normalize=True``:
images in [0, 1] are mapped to [-1, 1], shifted and scaled per channel, passed through the trunk; at five ReLU
outputs the features are unit-normalised over channels, their squared difference is weighted by the 1x1 head,
averaged over space, and the five layers are summed.
"""
from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "AlexNetTrunk",
    "LPIPS",
    "LPIPSHead",
    "LPIPSWeightsMissing",
    "LPIPS_NETS",
    "VGG16Trunk",
    "lpips_distance",
    "load_lpips",
    "lpips_paths_from_env",
]

LPIPS_NETS = ("alex", "vgg")
TRUNK_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
TORCHVISION_URL = "https://download.pytorch.org/models/"
HEAD_FILES = {"alex": "alex.pth", "vgg": "vgg.pth"}
TRUNK_ENV, HEAD_ENV = "DAGAN_LPIPS_TRUNK", "DAGAN_LPIPS_HEAD"
SHIFT = (-0.030, -0.088, -0.188)  # lpips ScalingLayer, for inputs in [-1, 1]
SCALE = (0.458, 0.448, 0.450)
EPSILON = 1e-10  # lpips.normalize_tensor


class LPIPSWeightsMissing(RuntimeError):
    """The LPIPS weight files were not given or do not fit; the message says which files and where to get them."""


class AlexNetTrunk(nn.Module):
    """torchvision's AlexNet ``features`` (keys ``features.N.*``); returns relu1 ... relu5 (64, 192, 384, 256, 256
    channels), the taps of ``lpips.pretrained_networks.alexnet``."""

    channels = (64, 192, 384, 256, 256)
    taps = (2, 5, 8, 10, 12)  # slice ends: features[0:2], [2:5], [5:8], [8:10], [10:12]

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        return _tapped(self.features, image, self.taps)


VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16Trunk(nn.Module):
    """torchvision's VGG16 ``features`` (keys ``features.N.*``); returns relu1_2, relu2_2, relu3_3, relu4_3 and
    relu5_3 (64, 128, 256, 512, 512 channels), the taps of ``lpips.pretrained_networks.vgg16``."""

    channels = (64, 128, 256, 512, 512)
    taps = (4, 9, 16, 23, 30)

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_channels, item, kernel_size=3, padding=1), nn.ReLU()]
                in_channels = item
        self.features = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        return _tapped(self.features, image, self.taps)


def _tapped(features: nn.Sequential, x: torch.Tensor, taps: Sequence[int]) -> list[torch.Tensor]:
    """Run ``features[0:taps[-1]]`` and return the activations after each tap index."""
    outputs, start = [], 0
    for stop in taps:
        for index in range(start, stop):
            x = features[index](x)
        outputs.append(x)
        start = stop
    return outputs


class LinearLayer(nn.Module):
    """lpips ``NetLinLayer`` with dropout (the layout of the released weights): key ``model.1.weight``, (1, C, 1, 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))
        with torch.no_grad():  # LPIPS clamps its head weights to >= 0 in training; keep random ones so too
            self.model[1].weight.abs_()


class LPIPSHead(nn.Module):
    """The five 1x1 linear heads ``lin0`` ... ``lin4`` (state-dict keys as the official ``alex.pth`` / ``vgg.pth``)."""

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        for index, width in enumerate(channels):
            self.add_module(f"lin{index}", LinearLayer(width))

    def layers(self) -> list[LinearLayer]:
        return [getattr(self, f"lin{index}") for index in range(len(self._modules))]


class LPIPS(nn.Module):
    """LPIPS v0.1 distance. ``forward(image0, image1)``: (B, 3, H, W) in [0, 1] each -> (B,) distances (0 for
    identical images). Build with :func:`load_lpips`; a bare instance has random weights (tests only)."""

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net not in LPIPS_NETS:
            raise ValueError(f"LPIPS net must be one of {', '.join(LPIPS_NETS)}, got {net!r}")
        self.net = net
        self.trunk = AlexNetTrunk() if net == "alex" else VGG16Trunk()
        self.head = LPIPSHead(self.trunk.channels)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    def forward(self, image0: torch.Tensor, image1: torch.Tensor) -> torch.Tensor:
        features0 = self.trunk((image0 * 2 - 1 - self.shift) / self.scale)
        features1 = self.trunk((image1 * 2 - 1 - self.shift) / self.scale)
        total = torch.zeros(image0.shape[0], device=image0.device)
        for feature0, feature1, linear in zip(features0, features1, self.head.layers()):
            difference = (_unit_normalize(feature0) - _unit_normalize(feature1)) ** 2  # (B, C, h, w)
            total = total + linear.model(difference).mean(dim=(1, 2, 3))  # (B, 1, h, w) -> (B,)
        return total


def _unit_normalize(features: torch.Tensor) -> torch.Tensor:
    """Divide (B, C, h, w) features by their L2 norm over channels (lpips.normalize_tensor)."""
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + EPSILON)


# Loading.

def lpips_paths_from_env(trunk: Optional[str] = None,
                         head: Optional[str] = None) -> tuple[Optional[str], Optional[str]]:
    """The given paths, or else ``$DAGAN_LPIPS_TRUNK`` / ``$DAGAN_LPIPS_HEAD`` (``None`` when unset)."""
    return trunk or os.environ.get(TRUNK_ENV) or None, head or os.environ.get(HEAD_ENV) or None


def missing_weights_message(net: str = "alex", problem: str = "no weight files were given") -> str:
    """The refusal text: which files LPIPS needs, where they come from, and how to pass them."""
    found = _installed_lpips_head(net)
    found_hint = f" (the installed lpips package has it at {found})" if found else ""
    return (
        f"the lpips metric cannot run: {problem}. LPIPS-{net} needs two files, which are never downloaded here: "
        f"(1) the ImageNet trunk {TRUNK_FILES[net]} (torchvision's file, from {TORCHVISION_URL}{TRUNK_FILES[net]}) "
        f"and (2) the LPIPS v0.1 linear heads {HEAD_FILES[net]} (lpips/weights/v0.1/{HEAD_FILES[net]} in the lpips "
        f"wheel: pip download --no-deps lpips==0.1.4, then unzip){found_hint}. Pass them with --lpips_net {net} "
        f"--lpips_trunk PATH --lpips_head PATH (or set {TRUNK_ENV} and {HEAD_ENV}), or leave lpips out of --metrics"
    )


def _installed_lpips_head(net: str) -> Optional[str]:
    """Where an installed ``lpips`` distribution keeps its head file (found without importing it), else None."""
    try:
        path = importlib.metadata.distribution("lpips").locate_file(f"lpips/weights/v0.1/{HEAD_FILES[net]}")
    except importlib.metadata.PackageNotFoundError:
        return None
    return str(path) if Path(str(path)).is_file() else None


def _read_state(path: str, net: str, what: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise LPIPSWeightsMissing(missing_weights_message(net, f"the {what} file {path!r} does not exist"))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors vary: report them in one line
        raise LPIPSWeightsMissing(missing_weights_message(net, f"the {what} file {path!r} could not be read "
                                                               f"({type(error).__name__}: {error})")) from None
    if not isinstance(state, dict):
        raise LPIPSWeightsMissing(missing_weights_message(net, f"the {what} file {path!r} holds no state dict"))
    return state


def head_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Head weights from an official head file (``linK.model.1.weight``), a full LPIPS state dict (which also has
    the ``lins.K...`` aliases) or a head saved without dropout (``linK.model.0.weight``)."""
    heads = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) == 4 and parts[0].startswith("lin") and parts[0][3:].isdigit() and parts[1] == "model":
            heads[f"{parts[0]}.model.1.weight"] = value
    return heads


def load_lpips(net: str = "alex", trunk_path: Optional[str] = None, head_path: Optional[str] = None,
               device: str | torch.device = "cpu") -> LPIPS:
    """LPIPS with the trunk and head weights read from the given files (see the module docstring).

    Raises:
        LPIPSWeightsMissing: a path is missing, or a file cannot be read or does not fit ``net``.
    """
    if net not in LPIPS_NETS:
        raise ValueError(f"LPIPS net must be one of {', '.join(LPIPS_NETS)}, got {net!r}")
    if not trunk_path or not head_path:
        missing = [name for name, path in (("--lpips_trunk", trunk_path), ("--lpips_head", head_path)) if not path]
        raise LPIPSWeightsMissing(missing_weights_message(net, f"{' and '.join(missing)} not given"))
    model = LPIPS(net)
    trunk = {key: value for key, value in _read_state(trunk_path, net, "trunk").items()
             if key.startswith("features.")}
    _load_strict(model.trunk, trunk, net, f"trunk file {trunk_path!r} (expected {TRUNK_FILES[net]})")
    head = head_state(_read_state(head_path, net, "head"))
    _load_strict(model.head, head, net, f"head file {head_path!r} (expected {HEAD_FILES[net]})")
    return model.to(device)


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], net: str, what: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
        raise LPIPSWeightsMissing(missing_weights_message(
            net, f"the {what} does not fit LPIPS-{net} ({first}); is it for the other net?")) from None


@torch.no_grad()
def lpips_distance(model: LPIPS, generated: np.ndarray, reference: np.ndarray) -> float:
    """LPIPS between two ``(H, W, 3)`` images (uint8, or float in [0, 1]) of the same size."""
    from dagan.eval.metrics import as_float_image

    generated, reference = as_float_image(generated), as_float_image(reference)
    if generated.shape != reference.shape:
        raise ValueError(f"images differ in size: generated {generated.shape}, reference {reference.shape}")
    device = model.shift.device
    batch = torch.from_numpy(np.stack([generated, reference])).float().permute(0, 3, 1, 2).to(device)  # (2, 3, H, W)
    return float(model(batch[:1], batch[1:])[0])
