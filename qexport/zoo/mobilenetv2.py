"""MobileNetV2 (Sandler et al., 2018) for small inputs: inverted residuals, ReLU6, depthwise convs."""

from __future__ import annotations

import torch
from torch import nn

# expansion t, output channels c, repeats n, first stride s (CIFAR variant: early strides 1)
DEFAULT_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _scaled(channels: int, width: float) -> int:
    return max(8, int(round(channels * width / 8)) * 8)


def _conv_bn_relu6(in_channels: int, out_channels: int, kernel: int, stride: int, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(),
    ]


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        layers = [] if expansion == 1 else _conv_bn_relu6(in_channels, hidden, 1, 1)
        layers += _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden)
        layers += [nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual:
            return x + self.block(x)
        return self.block(x)


class MobileNetV2(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        width: float = 1.0,
        in_channels: int = 3,
        image_size: int = 32,
        settings: tuple = DEFAULT_SETTINGS,
        last_channels: int = 1280,
    ):
        super().__init__()
        self.input_shape = (in_channels, image_size, image_size)
        channels = _scaled(32, width)
        layers: list[nn.Module] = _conv_bn_relu6(in_channels, channels, 3, 1)
        for expansion, out, repeats, stride in settings:
            for index in range(repeats):
                layers.append(InvertedResidual(channels, _scaled(out, width), stride if index == 0 else 1, expansion))
                channels = _scaled(out, width)
        last = _scaled(last_channels, max(width, 1.0)) if width > 1.0 else last_channels
        layers += _conv_bn_relu6(channels, last, 1, 1)
        self.features = nn.Sequential(*layers)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.gap(self.features(x)), 1))
