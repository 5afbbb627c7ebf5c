"""Architectures a checkpoint can name; each takes keyword arguments stored in the checkpoint."""

from __future__ import annotations

from torch import nn

from qexport.errors import CheckpointError
from qexport.zoo.digits_cnn import DigitsCNN
from qexport.zoo.mobilenetv2 import MobileNetV2
from qexport.zoo.resnet18 import ResNet18
from qexport.zoo.resnet20 import ResNet20

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "digits_cnn": DigitsCNN,
    "resnet20": ResNet20,
    "mobilenetv2": MobileNetV2,
    "resnet18": ResNet18,
}


def build(name: str, **kwargs) -> nn.Module:
    if name not in ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {name!r} (known: {', '.join(ARCHITECTURES)})")
    try:
        return ARCHITECTURES[name](**kwargs)
    except TypeError as error:
        raise CheckpointError(f"architecture {name!r}: bad arguments ({error})") from None
