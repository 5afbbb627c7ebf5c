"""Requantization: clip(round_half_even(acc * multiplier [* dynamic] >> shift) + zero_point)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from hwsim.kernels.config import PARALLEL, SERIAL


@njit(**SERIAL)
def shift_round_half_even(value, shift):
    """value * 2**-shift, ties to even; negative shifts are exact left shifts."""
    if shift <= 0:
        return value << -shift
    floor = value >> shift
    remainder = value - (floor << shift)
    half = np.int64(1) << (shift - 1)
    if remainder > half or (remainder == half and (floor & 1) == 1):
        return floor + 1
    return floor


@njit(**PARALLEL)
def requantize(acc, multiplier, shift, dynamic, zero_point, clip_min, clip_max):
    """acc: [N, C, S] int64 (S = spatial size, 1 for linear); multiplier/shift: [C]; dynamic: [N] or empty.

    Returns (output int64 [N, C, S], number of values that were clipped).
    """
    batch, channels, spatial = acc.shape
    out = np.empty_like(acc)
    clipped = np.zeros(batch, dtype=np.int64)
    for n in prange(batch):
        scale = np.int64(1) if dynamic.size == 0 else np.int64(dynamic[n])
        for c in range(channels):
            m = np.int64(multiplier[c]) * scale
            s = shift[c]
            for p in range(spatial):
                value = shift_round_half_even(acc[n, c, p] * m, s) + zero_point
                if value < clip_min:
                    value = clip_min
                    clipped[n] += 1
                elif value > clip_max:
                    value = clip_max
                    clipped[n] += 1
                out[n, c, p] = value
    return out, clipped.sum()


@njit(**PARALLEL)
def requantize_gemm(
    acc, bias, multiplier, shift, zero_point, clip_min, clip_max, acc_min, acc_max, batch, out_h, out_w, out
):
    """Fused bias + requantize of a GEMM result acc[(n, i, j), o] (exact integers held in floats).

    Writes out[n, o, i, j]; returns (clipped count, accumulator overflow count).
    """
    rows, channels = acc.shape
    clipped = np.zeros(batch, dtype=np.int64)
    overflows = np.zeros(batch, dtype=np.int64)
    per_image = out_h * out_w
    for n in prange(batch):
        for p in range(per_image):
            row = n * per_image + p
            i = p // out_w
            j = p % out_w
            for o in range(channels):
                value = np.int64(acc[row, o]) + bias[o]
                if value < acc_min or value > acc_max:
                    overflows[n] += 1
                q = shift_round_half_even(value * multiplier[o], shift[o]) + zero_point
                if q < clip_min:
                    q = clip_min
                    clipped[n] += 1
                elif q > clip_max:
                    q = clip_max
                    clipped[n] += 1
                out[n, o, i, j] = q
    return clipped.sum(), overflows.sum()
