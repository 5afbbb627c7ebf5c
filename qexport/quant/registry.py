"""Quantizer factories by method name; each method module provides its own.

Weight factories: ``make_weight_quantizer(bits, channels, config) -> nn.Module`` with
``forward(w)``, ``step()`` (per-channel accumulator grid), ``to_ir_weight(name, w)`` and ``bits``.
Activation factories: ``make_act_quantizer(bits, signed, config) -> nn.Module`` with
``forward(x)``, ``step()`` (one value), ``bits``, ``signed``, ``qmin``, ``qmax``.
Modules are imported lazily so a method's dependencies load only when it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from qexport.quant.config import QuantConfig

WEIGHT_METHODS = {
    "lsq": "qexport.quant.lsq",  # uniform integers with a learned step (Esser et al. 2020)
    "pot": "qexport.quant.pot",  # powers of two
    "post": "qexport.quant.post",  # powers of sqrt(2) (seed 002)
    "apot": "qexport.quant.apot",  # additive powers of two
    "codebook": "qexport.quant.codebook",  # learned levels (seed 003)
    "ddq": "qexport.quant.ddq",  # learned bit width / range / step (seed 001)
    "mde": "qexport.quant.pqde",  # minimize-discretization-error quantizer (seed 000)
}
ACT_METHODS = {
    "lsq": "qexport.quant.lsq",
    "asq": "qexport.quant.asq",  # adaptive step size (seed 002)
    "channel": "qexport.quant.codebook",  # channel-aware activation quantizer (seed 003)
    "ddq": "qexport.quant.ddq",
    "mde": "qexport.quant.pqde",
}
MIN_WEIGHT_BITS = {"pot": 3, "post": 3, "apot": 3}


def min_weight_bits(method: str) -> int:
    return MIN_WEIGHT_BITS.get(method, 2)


def make_weight_quantizer(method: str, bits: int, channels: int, config: QuantConfig) -> nn.Module:
    return importlib.import_module(WEIGHT_METHODS[method]).make_weight_quantizer(bits, channels, config)


def make_act_quantizer(method: str, bits: int, signed: bool, config: QuantConfig) -> nn.Module:
    return importlib.import_module(ACT_METHODS[method]).make_act_quantizer(bits, signed, config)
