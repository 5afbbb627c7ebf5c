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

    Returns (output int64 [N, C, S], number of saturated values). A value counts as saturated when it
    exceeds clip_max, or falls below clip_min where clip_min is not a fused ReLU's zero.
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
                    clipped[n] += clip_min < zero_point
                elif value > clip_max:
                    value = clip_max
                    clipped[n] += 1
                out[n, c, p] = value
    return out, clipped.sum()


@njit(**PARALLEL)
def requantize_exact_float(acc, bias, multiplier, shift, zero_point, clip_min, clip_max, acc_min, acc_max, out):
    """Fused bias + requantize of acc[n, c, p], exact integers held in floats (a BLAS GEMM's result).

    Branch-free inner loop: ties-to-even rounding as (v + half - 1 + ((v >> s) & 1)) >> s.
    Writes out[n, c, p]; returns (clipped count, accumulator overflow count).
    """
    batch, channels, spatial = acc.shape
    clipped = np.zeros(batch * channels, dtype=np.int64)
    overflows = np.zeros(batch * channels, dtype=np.int64)
    for nc in prange(batch * channels):
        n, c = nc // channels, nc % channels
        m, s, b = np.int64(multiplier[c]), np.int64(shift[c]), np.int64(bias[c])
        left = -s if s < 0 else np.int64(0)
        right = s if s > 0 else np.int64(0)
        bias_up = np.int64(1) << (right - 1) if right > 0 else np.int64(0)
        clip_count = np.int64(0)
        overflow_count = np.int64(0)
        for p in range(spatial):
            value = np.int64(acc[n, c, p]) + b
            overflow_count += (value < acc_min) + (value > acc_max)
            scaled = (value * m) << left
            odd = (scaled >> right) & 1 if right > 0 else np.int64(0)
            q = ((scaled + bias_up - (right > 0) + odd) >> right) + zero_point
            clip_count += (q < clip_min) * (clip_min < zero_point) + (q > clip_max)
            out[n, c, p] = min(max(q, clip_min), clip_max)
        clipped[nc] = clip_count
        overflows[nc] = overflow_count
    return clipped.sum(), overflows.sum()


@njit(**PARALLEL)
def add_requantize(
    lhs,
    rhs,
    lhs_zero,
    rhs_zero,
    lhs_multiplier,
    rhs_multiplier,
    multiplier,
    shift,
    zero_point,
    clip_min,
    clip_max,
    acc_min,
    acc_max,
    out,
):
    """Fused residual add + requantize on [N, C, P] integer tensors (per-channel multiplier/shift)."""
    batch, channels, spatial = lhs.shape
    clipped = np.zeros(batch * channels, dtype=np.int64)
    overflows = np.zeros(batch * channels, dtype=np.int64)
    for nc in prange(batch * channels):
        n, c = nc // channels, nc % channels
        m, s = np.int64(multiplier[c]), np.int64(shift[c])
        left = -s if s < 0 else np.int64(0)
        right = s if s > 0 else np.int64(0)
        bias_up = np.int64(1) << (right - 1) if right > 0 else np.int64(0)
        clip_count = np.int64(0)
        overflow_count = np.int64(0)
        for p in range(spatial):
            value = (lhs[n, c, p] - lhs_zero) * lhs_multiplier + (rhs[n, c, p] - rhs_zero) * rhs_multiplier
            overflow_count += (value < acc_min) + (value > acc_max)
            scaled = (value * m) << left
            odd = (scaled >> right) & 1 if right > 0 else np.int64(0)
            q = ((scaled + bias_up - (right > 0) + odd) >> right) + zero_point
            clip_count += (q < clip_min) * (clip_min < zero_point) + (q > clip_max)
            out[n, c, p] = min(max(q, clip_min), clip_max)
        clipped[nc] = clip_count
        overflows[nc] = overflow_count
    return clipped.sum(), overflows.sum()
