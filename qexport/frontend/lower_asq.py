"""Integer form of input-adaptive (per-sample) step sizes: the ASQ adapter subgraph and dynamic requantization.

An ASQ quantizer of an accumulator ``acc`` (scale ``a[c]``, optionally times an incoming per-sample
factor ``num[n] * 2**-F``) becomes, with nodes named ``<quantizer>.adapter.*``::

    features = requantize(acc [, num])       uint8 on 2**e_f, the ReLU's clip   ("mul" when num)
    mean     = global_avgpool(features)        (4-D inputs; flatten follows)
    fc1      = linear(mean)                    int8 weights, int32 bias
    hidden   = requantize(fc1)                 uint8 on 2**e_h, clip [0, 255]
    fc2      = linear(hidden)                  bias + 2**-k: the "1 +" of beta = 1 + out
    beta     = reshape(requantize(fc2), [])    B[n] = beta * 2**F, clip [B_min, B_max]
    y        = requantize(acc, [num,] B)       dynamic "div" / "muldiv", scale s (dynamic=True)

and the result is ``Quantized(y, dynamic=beta)``: the next requantization multiplies by ``B``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from qexport.errors import LoweringError
from qexport.frontend.patterns import describe
from qexport.frontend.requant import multiplier_and_shift
from qexport.ir.dtypes import INT32, IntType
from qexport.ir.graph import QuantInfo, Weight
from qexport.ir.ops import Op
from qexport.quant.asq import BETA_SUFFIX, FEATURE_LEVELS, HIDDEN_MAX, weight_exponent

if TYPE_CHECKING:
    from torch import fx

    from qexport.frontend.lower import Accumulator, Quantized, _Builder
    from qexport.quant.asq import AsqActQuant

ACC_MAGNITUDE_BITS = 31  # accumulators are INT32 while lowering (the accumulator pass only narrows them)
PRODUCT_BITS = 62  # the checker's bound on |acc * multiplier * num << left| and on den << shift


def _magnitude_bits(dtype: IntType) -> int:
    return dtype.bits - 1 if dtype.signed else dtype.bits


def fit_multiplier(ratio: float, budget: int) -> tuple[int, int]:
    """``multiplier_and_shift`` with the multiplier cut to ``budget`` bits (rounded half to even)."""
    multiplier, shift = multiplier_and_shift(ratio)
    drop = multiplier.bit_length() - budget
    if drop > 0:
        quotient, remainder = divmod(multiplier, 1 << drop)
        half = 1 << (drop - 1)
        multiplier = quotient + (remainder > half or (remainder == half and quotient % 2 == 1))
        shift -= drop
        if multiplier == 1 << budget:
            multiplier, shift = multiplier >> 1, shift - 1
    return multiplier, shift


def _requantize(
    b: _Builder,
    name: str,
    acc: str,
    ratios: np.ndarray,
    output: str,
    dtype: IntType,
    quant: QuantInfo,
    clip: tuple[int, int],
    num: str | None = None,
    den: str | None = None,
) -> str:
    """A requantize node computing ``acc * ratio[c] [* num] [/ den]``, multipliers sized for the 62-bit rule."""
    num_bits = 0 if num is None else _magnitude_bits(b.graph.tensors[num].dtype)
    acc_bits = min(ACC_MAGNITUDE_BITS, _magnitude_bits(b.graph.tensors[acc].dtype))
    pairs = [fit_multiplier(float(r), PRODUCT_BITS - acc_bits - num_bits) for r in ratios]
    den_bits = 0 if den is None else _magnitude_bits(b.graph.tensors[den].dtype)
    for multiplier, shift in pairs:
        left = max(-shift, 0)
        if acc_bits + multiplier.bit_length() + num_bits + left > PRODUCT_BITS or den_bits + max(shift, 0) > 62:
            raise LoweringError(f"node {name!r}: rescale factor {float(ratios[0]):g} is out of the 64-bit range")
    multipliers, shifts = [p[0] for p in pairs], [p[1] for p in pairs]
    if len(set(pairs)) == 1:
        multipliers, shifts = multipliers[:1], shifts[:1]
    operands = [x for x in (num, den) if x is not None]
    modes = {(True, False): "mul", (False, True): "div", (True, True): "muldiv"}
    attrs = {"dynamic": modes[num is not None, den is not None]} if operands else {}
    return b.add_node(
        Op.REQUANTIZE,
        name,
        [acc, *operands],
        output,
        dtype,
        quant,
        multiplier=multipliers,
        shift=shifts,
        clip_min=clip[0],
        clip_max=clip[1],
        **attrs,
    )


def _factor_scale(b: _Builder, acc: Accumulator) -> float:
    """The real value of one unit of the incoming per-sample factor (1 when there is none)."""
    return 1.0 if acc.dynamic is None else float(b.quant_of(acc.dynamic).scale)


def _clip(activation: str | None, dtype: IntType) -> tuple[int, int]:
    return (max(dtype.min, 0) if activation == "relu" else dtype.min), dtype.max


def _linear_weights(b: _Builder, prefix: str, layer: torch.nn.Linear, unit_in: float, extra_bias: int = 0) -> tuple:
    """IR int8 weight + int32 bias of an adapter layer; returns (weight name, bias name, accumulator unit)."""
    exponent = weight_exponent(layer.weight)
    step = 2.0**exponent
    w = layer.weight.detach().double()
    values = torch.clamp(torch.round(w / step), -128, 127).to(torch.int64).numpy()
    unit = unit_in * step
    bias = torch.clamp(torch.round(layer.bias.detach().double() / unit), -(2**31), 2**31 - 1).to(torch.int64)
    bias = bias.numpy() + extra_bias
    if np.abs(bias).max(initial=0) >= 2**31:
        raise LoweringError(f"{prefix}: adapter bias does not fit INT32 (steps too small)")
    out = values.shape[0]
    b.graph.weights[f"{prefix}.weight"] = Weight(
        f"{prefix}.weight",
        "int_affine",
        tuple(values.shape),
        {"values": values},
        {"dtype": "INT8", "scale": step, "zero_point": 0, "axis": 0},
    )
    b.graph.weights[f"{prefix}.bias"] = Weight(
        f"{prefix}.bias",
        "int_affine",
        (out,),
        {"values": bias},
        {"dtype": "INT32", "scale": [unit] * out, "zero_point": 0, "axis": 0},
    )
    return f"{prefix}.weight", f"{prefix}.bias", unit


def lower_asq_requant(b: _Builder, node: fx.Node, acc: Accumulator, quantizer: AsqActQuant) -> Quantized:
    """Lower one ASQ quantizer applied to ``acc`` (see the module docstring)."""
    from qexport.frontend.lower import Quantized

    if not bool(quantizer.initialized):
        raise LoweringError(f"layer {describe(b.gm, node)}: ASQ quantizer was never run (calibrate first)")
    if acc.activation == "relu6":
        raise LoweringError(f"layer {describe(b.gm, node)}: ASQ after ReLU6 is not supported (per-sample clip)")
    prefix = f"{node.target}.adapter"
    frac = quantizer.frac_bits
    factor = _factor_scale(b, acc)
    info = b.graph.tensors[acc.tensor]
    feature_step = quantizer.feature_step()
    feature_type = IntType.for_range(*FEATURE_LEVELS[quantizer.signed])
    x = _requantize(
        b,
        f"{prefix}.features",
        acc.tensor,
        acc.scale * factor / feature_step,
        f"{prefix}.features",
        feature_type,
        QuantInfo(feature_step, 0),
        _clip(acc.activation, feature_type),
        num=acc.dynamic,
    )
    if len(info.shape) == 4:
        x = b.add_node(
            Op.GLOBAL_AVGPOOL, f"{prefix}.mean", [x], f"{prefix}.mean", feature_type, QuantInfo(feature_step)
        )
        x = b.add_node(Op.FLATTEN, f"{prefix}.flatten", [x], f"{prefix}.flat", feature_type, QuantInfo(feature_step))
    weight, bias, unit = _linear_weights(b, f"{prefix}.fc1", quantizer.fc1, feature_step)
    x = b.add_node(
        Op.LINEAR, f"{prefix}.fc1", [x], f"{prefix}.fc1_acc", INT32, QuantInfo(unit), weight=weight, bias=bias
    )
    hidden_step, hidden_type = quantizer.hidden_step(), IntType(False, 8)
    x = _requantize(
        b,
        f"{prefix}.hidden",
        x,
        np.array([unit / hidden_step]),
        f"{prefix}.hidden",
        hidden_type,
        QuantInfo(hidden_step),
        (0, HIDDEN_MAX),
    )
    unit = hidden_step * 2.0 ** weight_exponent(quantizer.fc2.weight)
    one = 1.0 / unit  # beta = 1 + out: the 1 joins fc2's bias, in its accumulator units
    if one != math.floor(one):
        raise LoweringError(f"layer {describe(b.gm, node)}: ASQ adapter step {unit} > 1 cannot hold beta's 1")
    weight, bias, unit = _linear_weights(b, f"{prefix}.fc2", quantizer.fc2, hidden_step, int(one))
    x = b.add_node(
        Op.LINEAR, f"{prefix}.fc2", [x], f"{prefix}.fc2_acc", INT32, QuantInfo(unit), weight=weight, bias=bias
    )
    beta_type = IntType.for_range(quantizer.b_min, quantizer.b_max)
    beta_quant = QuantInfo(2.0**-frac)
    x = _requantize(
        b,
        f"{prefix}.fixed_point",
        x,
        np.array([unit * 2.0**frac]),
        f"{prefix}.beta_2d",
        beta_type,
        beta_quant,
        (quantizer.b_min, quantizer.b_max),
    )
    beta = b.add_node(
        Op.RESHAPE, f"{prefix}.reshape", [x], f"{node.name}{BETA_SUFFIX}", beta_type, beta_quant, shape=[]
    )
    step = float(b.steps(quantizer)[0])
    dtype = IntType(quantizer.signed, quantizer.bits)
    # y = acc * a[c] * factor * num / (s * B * 2**-F)
    out = _requantize(
        b,
        node.target,
        acc.tensor,
        acc.scale * factor * 2.0**frac / step,
        node.name,
        dtype,
        QuantInfo(step, 0, dynamic=True),
        _clip(acc.activation, dtype),
        num=acc.dynamic,
        den=beta,
    )
    return Quantized(out, dynamic=beta)


def lower_dynamic_requant(b: _Builder, node: fx.Node, acc: Accumulator) -> Quantized:
    """A static (LSQ) quantizer of an accumulator with a per-sample factor: requantize "mul" by that factor."""
    from qexport.frontend.lower import Quantized, _activation_clip

    quantizer = b.gm.get_submodule(node.target)
    step = float(b.steps(quantizer)[0])
    dtype = IntType(quantizer.signed, quantizer.bits)
    clip = _activation_clip(acc.activation, step, dtype)
    ratios = acc.scale * _factor_scale(b, acc) / step
    return Quantized(
        _requantize(b, node.target, acc.tensor, ratios, node.name, dtype, QuantInfo(step, 0), clip, num=acc.dynamic)
    )
