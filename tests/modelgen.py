"""Build calibrated QAT models with random weights for equivalence tests (synthetic data only)."""

from __future__ import annotations

import torch
from torch import nn

from qexport.frontend.lower import lower
from qexport.frontend.prepare import prepare_qat
from qexport.ir.graph import Graph
from qexport.quant.config import QuantConfig
from qexport.zoo import build


def randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Give BN layers non-trivial statistics so folding is exercised."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            count = module.num_features
            module.running_mean.copy_(torch.rand(count, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(count, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(count, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(count, generator=generator) * 0.6 - 0.3)


def calibrated(model: nn.Module, config: QuantConfig, shape: tuple[int, ...], seed: int = 0, batch: int = 16):
    """prepare_qat + one calibration batch; returns (qat model, calibration inputs)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    with torch.no_grad():
        randomize_batchnorm(model, generator)
    qat = prepare_qat(model, config)
    inputs = torch.randn(batch, *shape, generator=generator)
    qat.train()
    with torch.no_grad():
        qat(inputs)
    qat.eval()
    return qat, inputs


ZOO_CASES = {
    "resnet20": ({}, (3, 32, 32)),
    "mobilenetv2": ({"width": 0.35, "last_channels": 256}, (3, 32, 32)),
    "digits_cnn": ({}, (1, 8, 8)),
}


def zoo_graph(name: str, config: QuantConfig, seed: int = 0) -> tuple[nn.Module, Graph, torch.Tensor]:
    kwargs, shape = ZOO_CASES[name]
    torch.manual_seed(seed)
    qat, inputs = calibrated(build(name, **kwargs), config, shape, seed)
    return qat, lower(qat, shape, name), inputs
