"""Requantize in float32 form (``float_scale``, imported from ONNX Runtime's QOperator kernels).

The step is ONNX Runtime's MLAS requantize: convert the integer accumulator to float32 (round to
nearest even), multiply by the per-channel float32 scale in float32, clamp to the output range less
the zero point, convert with round-half-to-even, add the zero point. numpy's float32 arithmetic is
IEEE single precision, so this is bit-exact. Graphs with this form run unfused in hwsim.
"""

from __future__ import annotations

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
