"""ImageNet-shaped ResNet-18 (He et al., 2016): 7x7 stem, max pool, four stages of two basic blocks."""

from __future__ import annotations

import torch
from torch import nn

from qexport.zoo.resnet20 import BasicBlock


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000, width: int = 64, in_channels: int = 3, image_size: int = 224):
        super().__init__()
        self.input_shape = (in_channels, image_size, image_size)
        self.conv = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(3, 2, 1)
        layers, channels = [], width
        for stage in range(4):
            out_channels = width << stage
            for index in range(2):
                layers.append(BasicBlock(channels, out_channels, 2 if stage > 0 and index == 0 else 1))
                channels = out_channels
        self.layers = nn.Sequential(*layers)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.pool(self.relu(self.bn(self.conv(x)))))
        return self.fc(torch.flatten(self.gap(x), 1))
