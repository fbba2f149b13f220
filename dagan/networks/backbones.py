"""ResNet and VGG19 with torchvision-compatible state-dict keys, without importing torchvision.

Users who own torchvision weight files (``resnet18-f37072fd.pth``, ``vgg19-dcbb9e9d.pth``, ...) load them by path;
when online, :func:`load_vgg19_weights` can also fetch torchvision's published file through ``torch.hub``.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BasicBlock(nn.Module):
    """ResNet-18/34 block: two 3x3 convs; the first may stride."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """ResNet-50/101/152 block: 1x1 -> 3x3 (strided, torchvision v1.5) -> 1x1 with 4x expansion."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


RESNET_LAYOUTS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
                  50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3)), 152: (Bottleneck, (3, 8, 36, 3))}


class ResNet(nn.Module):
    """torchvision's ResNet layout (conv1, bn1, layer1-4, fc). ``in_channels`` > 3 serves the pose network,
    which stacks two frames (6 channels)."""

    def __init__(self, num_layers: int = 18, in_channels: int = 3, num_classes: int = 1000):
        super().__init__()
        if num_layers not in RESNET_LAYOUTS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_LAYOUTS)}, got {num_layers}")
        block, counts = RESNET_LAYOUTS[num_layers]
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, counts[0], stride=1)
        self.layer2 = self._make_layer(block, 128, counts[1], stride=2)
        self.layer3 = self._make_layer(block, 256, counts[2], stride=2)
        self.layer4 = self._make_layer(block, 512, counts[3], stride=2)
        # torchvision's classifier head: no forward here uses it, but the release's encoder.pth holds its keys. It
        # never gets a gradient, so it does not require one: DDP (find_unused_parameters=False) would otherwise
        # wait for it forever and average no gradient at all, and optimizers would carry it for nothing.
        self.fc = nn.Linear(512 * block.expansion, num_classes).requires_grad_(False)
        self.channels = [64, 64 * block.expansion, 128 * block.expansion, 256 * block.expansion, 512 * block.expansion]
        self._initialize()

    def _make_layer(self, block: type, planes: int, count: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.in_planes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.in_planes, planes * block.expansion, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.in_planes, planes, stride, downsample)]
        self.in_planes = planes * block.expansion
        layers += [block(self.in_planes, planes) for _ in range(count - 1)]
        return nn.Sequential(*layers)

    def _initialize(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five feature maps used by the depth and pose networks: strides 2, 4, 8, 16, 32."""
        first = self.relu(self.bn1(self.conv1(x)))
        outputs = [first]
        x = self.maxpool(first)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outputs.append(x)
        return outputs


# VGG19 "features" layout of torchvision: conv indices inside the Sequential matter for the keys.
VGG19_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
VGG19_SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))  # relu1_1, relu2_1, relu3_1, relu4_1, relu5_1


class VGG19(nn.Module):
    """VGG19 feature extractor (keys ``features.N.weight`` as torchvision): ImageNet-normalises an image in
    [0, 1] (B, 3, H, W) and returns relu1_1, relu2_1, relu3_1, relu4_1 and relu5_1."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in VGG19_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                in_channels = item
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = (image - self.mean) / self.std
        outputs = []
        for start, stop in VGG19_SLICES:
            for index in range(start, stop):
                x = self.features[index](x)
            outputs.append(x)
        return outputs


class PretrainedWeightsMissing(RuntimeError):
    """Pretrained weights were asked for but neither a local file nor the network gave them."""


def load_vgg19_weights(model: VGG19, path: Optional[str] = None, allow_download: bool = False) -> VGG19:
    """Load torchvision's ImageNet VGG19 weights from ``path`` (a torchvision ``vgg19-*.pth`` file; the
    ``classifier.*`` entries are ignored) or, when ``allow_download``, from torchvision's published URL via
    ``torch.hub`` (cached under ``$TORCH_HOME``). Without either, raise a message that says what to do."""
    if path is not None:
        if not os.path.isfile(path):
            raise PretrainedWeightsMissing(f"VGG19 weights file {path!r} does not exist; set "
                                           "train_params.vgg19_weights to a torchvision vgg19-dcbb9e9d.pth file")
        state = torch.load(path, map_location="cpu", weights_only=True)
    elif allow_download:
        try:
            state = torch.hub.load_state_dict_from_url(VGG19_URL, map_location="cpu", progress=True)
        except Exception as error:  # network errors vary by platform
            raise PretrainedWeightsMissing(
                f"could not download VGG19 weights from {VGG19_URL} ({error}); download the file elsewhere and "
                "set train_params.vgg19_weights to its path") from None
    else:
        raise PretrainedWeightsMissing("the perceptual loss needs ImageNet VGG19 weights: set train_params.vgg19_weights "
                                       f"to a torchvision vgg19-dcbb9e9d.pth file (from {VGG19_URL})")
    features = {key: value for key, value in state.items() if key.startswith("features.")}
    model.load_state_dict(features, strict=True)
    return model

