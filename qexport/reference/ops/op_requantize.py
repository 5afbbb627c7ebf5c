"""requantize: clip(round_half_even(acc * multiplier[c] * num[n] / (den[n] * 2**shift[c])) + zp).

``num`` and ``den`` are the optional per-sample operands named by the ``dynamic`` attribute
("mul": [acc, num], "div": [acc, den], "muldiv": [acc, num, den]; "mul" when absent). One rounding,
exact in integers: the numerator acc * multiplier * num (<< -shift) and the divisor den (<< shift)
stay below 2**62 (the checker's rule).

Float form (``float_scale``, imported from ONNX Runtime's QOperator kernels): the accumulator is
rounded to the nearest float32, multiplied by the float32 scale in float32 (one IEEE rounding),
rounded half to even, then the zero point is added and the result clipped.

Float add form (``float_add`` = [r_a, r_b, k], onnxruntime's QLinearAdd on x86-64 with FMA): the
accumulator packs the raw operands, (a - zp_a) * 2**P + (b - zp_b); the result is
clip(rint(fma32(a, r_a, fma32(b, r_b, k)))) (k already holds the output zero point).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from qexport.errors import QExportError
from qexport.ir.graph import Graph, Node
from qexport.ir.ops import dynamic_operands, float_add, float_scale
from qexport.reference.ops.common import zero_point
from qexport.reference.rounding import fma_float32, round_half_even_divide, round_half_even_shift


def _per_channel(values: list[int], ndim: int) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape((1, -1) + (1,) * (ndim - 2))


def run_float(graph: Graph, node: Node, acc: np.ndarray) -> np.ndarray:
    """clip(rint(float32(float32(acc) * float_scale[c])) + zp, clip_min, clip_max)."""
    scale = np.asarray(float_scale(node), dtype=np.float32).reshape((1, -1) + (1,) * (acc.ndim - 2))
    product = acc.astype(np.float32) * scale  # numpy: float32 * float32 -> float32, one IEEE rounding
    zp = zero_point(graph, node.outputs[0])
    low, high = node.attrs["clip_min"] - zp, node.attrs["clip_max"] - zp
    # clamping before rounding (as onnxruntime does) equals clamping after: the bounds are integers
    return np.rint(np.clip(product, np.float32(low), np.float32(high))).astype(np.int64) + zp


def packed_operands(graph: Graph, node: Node, acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The raw operands (a, b) of the add that packed them as (a - zp_a) * 2**P + (b - zp_b)."""
    producer = graph.producer()[node.inputs[0]]
    pack = producer.attrs["lhs_multiplier"]
    b_centred = (acc + pack // 2) % pack - pack // 2
    a_centred = (acc - b_centred) // pack
    return a_centred + zero_point(graph, producer.inputs[0]), b_centred + zero_point(graph, producer.inputs[1])


def run_float_add(graph: Graph, node: Node, acc: np.ndarray) -> np.ndarray:
    """clip(rint(fma32(a, r_a, fma32(b, r_b, k)))): onnxruntime's QLinearAdd, exact rationals per (a, b) pair."""
    r_a, r_b, k = (Fraction(v) for v in float_add(node))
    a, b = packed_operands(graph, node, acc)
    pairs, inverse = np.unique(np.stack([a.reshape(-1), b.reshape(-1)], axis=1), axis=0, return_inverse=True)
    results = np.array(
        [round(fma_float32(Fraction(int(x)), r_a, fma_float32(Fraction(int(y)), r_b, k))) for x, y in pairs],
        dtype=np.int64,
    )
    out = results[np.asarray(inverse).reshape(-1)].reshape(acc.shape)
    return np.clip(out, node.attrs["clip_min"], node.attrs["clip_max"])


def run(graph: Graph, node: Node, inputs: list[np.ndarray]) -> np.ndarray:
    acc = inputs[0].astype(np.int64)
    if float_scale(node) is not None:
        return run_float(graph, node, acc)
    if float_add(node) is not None:
        return run_float_add(graph, node, acc)
    operands = dict(zip(dynamic_operands(node), inputs[1:], strict=False))
    per_sample = (-1,) + (1,) * (acc.ndim - 1)
    product = acc * _per_channel(node.attrs["multiplier"], acc.ndim)
    if "num" in operands:
        product = product * operands["num"].astype(np.int64).reshape(per_sample)
    shift = _per_channel(node.attrs["shift"], acc.ndim)
    if "den" in operands:
        den = operands["den"].astype(np.int64)
        if den.size and den.min() <= 0:
            raise QExportError(
                f"node {node.name!r}: dynamic divisor {node.inputs[-1]!r} must be positive, got {den.min()}"
            )
        divisor = den.reshape(per_sample) << np.maximum(shift, 0)
        rounded = round_half_even_divide(product << np.maximum(-shift, 0), divisor)
    else:
        rounded = round_half_even_shift(product, shift)
    shifted = rounded + zero_point(graph, node.outputs[0])
    return np.clip(shifted, node.attrs["clip_min"], node.attrs["clip_max"])
