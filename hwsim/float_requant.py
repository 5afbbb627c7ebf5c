"""Requantize in float32 form (``float_scale``, imported from ONNX Runtime's QOperator kernels).

The step is ONNX Runtime's MLAS requantize: convert the integer accumulator to float32 (round to
nearest even), multiply by the per-channel float32 scale in float32, clamp to the output range less
the zero point, convert with round-half-to-even, add the zero point. numpy's float32 arithmetic is
IEEE single precision, so this is bit-exact. Graphs with this form run unfused in hwsim.

The add form (``float_add``, onnxruntime's QLinearAdd with FMA) is computed in float64 with an exactness
check per element (``_fma32``), independently of the reference's exact rationals.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np


def requantize_float(
    acc: np.ndarray, scale: list[float], zero_point: int, clip_min: int, clip_max: int
) -> tuple[np.ndarray, int]:
    """(requantized int64 array, number of saturated elements) for an [N, C, ...] accumulator."""
    factors = np.asarray(scale, dtype=np.float32).reshape((1, -1) + (1,) * (acc.ndim - 2))
    product = np.asarray(acc, dtype=np.int64).astype(np.float32) * factors
    low, high = np.float32(clip_min - zero_point), np.float32(clip_max - zero_point)
    saturated = int(np.count_nonzero((product < low) | (product > high)))
    out = np.rint(np.minimum(np.maximum(product, low), high)).astype(np.int64) + zero_point
    return out, saturated


def _fma32(x: np.ndarray, y: float, z: np.ndarray) -> np.ndarray:
    """float32 fma(x, y, z) for small integers x and float32 y, z: the float64 product is exact; the float64
    sum is checked exact (TwoSum error 0), so one rounding to float32 is the fused result; elements whose sum
    is inexact in float64 are recomputed with exact rationals."""
    product = x.astype(np.float64) * np.float64(y)
    z64 = z.astype(np.float64)
    total = product + z64
    virtual = total - product
    error = (product - (total - virtual)) + (z64 - virtual)  # TwoSum: product + z64 == total + error exactly
    out = total.astype(np.float32)
    for index in np.flatnonzero(error != 0):
        exact = Fraction(float(product.flat[index])) + Fraction(float(z64.flat[index]))
        out.flat[index] = np.float32(_round_f32(exact))
    return out


def _round_f32(value: Fraction) -> float:
    """Nearest float32 of a rational, ties to even, via the exact float64 neighbours of the result."""
    low = np.float32(float(value))  # within one float32 ulp
    candidates = [np.nextafter(low, np.float32(-np.inf)), low, np.nextafter(low, np.float32(np.inf))]
    best = min(candidates, key=lambda c: (abs(Fraction(float(c)) - value), int(np.float32(c).view(np.int32)) & 1))
    return float(best)


def requantize_float_add(
    acc: np.ndarray, coefficients: list[float], pack: int, zero_points: tuple[int, int], clip: tuple[int, int]
) -> tuple[np.ndarray, int]:
    """onnxruntime's QLinearAdd: clip(rint(fma32(a, r_a, fma32(b, r_b, k)))) on the packed raw operands."""
    acc = np.asarray(acc, dtype=np.int64)
    r_a, r_b, k = coefficients
    b = (acc + pack // 2) % pack - pack // 2
    a = (acc - b) // pack + zero_points[0]
    b = b + zero_points[1]
    inner = _fma32(b, r_b, np.full(acc.shape, k, dtype=np.float32))
    value = np.rint(_fma32(a, r_a, inner)).astype(np.int64)
    saturated = int(np.count_nonzero((value < clip[0]) | (value > clip[1])))
    return np.clip(value, clip[0], clip[1]), saturated


def run_float_form(graph, node, acc: np.ndarray) -> tuple[np.ndarray, int]:
    """A requantize in either float32 form (``qexport.ir.ops.float_form``): (int64 result, saturations)."""
    out_quant = graph.tensors[node.outputs[0]].quant
    zero_point = out_quant.zero_point if out_quant else 0
    clip = (node.attrs["clip_min"], node.attrs["clip_max"])
    if "float_add" not in node.attrs:
        return requantize_float(acc, node.attrs["float_scale"], zero_point, *clip)
    producer = next(n for n in graph.nodes if n.outputs[0] == node.inputs[0])
    zero_points = tuple(graph.tensors[t].quant.zero_point for t in producer.inputs)
    return requantize_float_add(acc, node.attrs["float_add"], producer.attrs["lhs_multiplier"], zero_points, clip)
