"""A small CNN for scikit-learn's 8x8 digits: the shipped default model."""

from __future__ import annotations

import torch
from torch import nn


class DigitsCNN(nn.Module):
    input_shape = (1, 8, 8)

    def __init__(self, channels: tuple[int, int, int] = (16, 32, 32), num_classes: int = 10):
        super().__init__()
        c1, c2, c3 = channels
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(1, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv3, self.bn3, self.relu3 = nn.Conv2d(c2, c3, 3, padding=1, bias=False), nn.BatchNorm2d(c3), nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.pool(self.relu2(self.bn2(self.conv2(x))))
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(self.gap(x), 1))
