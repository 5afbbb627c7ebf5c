"""Requantization: clip(round_half_even(acc * multiplier [* num[n]] [/ den[n]] >> shift) + zero_point)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from hwsim.kernels.config import PARALLEL, SERIAL

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@njit(**SERIAL)
def _requantize_row(values, bias, multiplier, shift, zero_point, clip_min, clip_max, acc_min, acc_max, low_counts, out):
    """One channel's run of accumulators -> outputs; returns (saturations, overflows). Branch-free inner loops."""
    saturations = np.int64(0)
    overflows = np.int64(0)
    if shift > 0:
        up = (np.int64(1) << (shift - 1)) - 1  # ties to even: + half - 1 + (bit that becomes the lsb)
        for p in range(values.size):
            value = np.int64(values[p]) + bias
            overflows += (value < acc_min) | (value > acc_max)
            scaled = value * multiplier
            q = ((scaled + up + ((scaled >> shift) & 1)) >> shift) + zero_point
            saturations += ((q < clip_min) & low_counts) | (q > clip_max)
            out[p] = min(max(q, clip_min), clip_max)
    else:
        for p in range(values.size):
            value = np.int64(values[p]) + bias
            overflows += (value < acc_min) | (value > acc_max)
            q = ((value * multiplier) << -shift) + zero_point
            saturations += ((q < clip_min) & low_counts) | (q > clip_max)
            out[p] = min(max(q, clip_min), clip_max)
    return saturations, overflows


@njit(**SERIAL)
def requantize_exact_float(acc, bias, multiplier, shift, zero_point, clip_min, clip_max, acc_min, acc_max, out):
    """Fused bias + requantize of acc[n, c, p], exact integers held in floats (a BLAS GEMM's result).

    Writes out[n, c, p]; returns (saturated count, accumulator overflow count). Saturated: past
    clip_max, or below a clip_min that is not a fused ReLU's zero.
    """
    batch, channels, _ = acc.shape
    saturations = np.zeros(batch * channels, dtype=np.int64)
    overflows = np.zeros(batch * channels, dtype=np.int64)
    low_counts = np.int64(clip_min < zero_point)
    for nc in prange(batch * channels):
        n, c = nc // channels, nc % channels
        saturations[nc], overflows[nc] = _requantize_row(
            acc[n, c],
            np.int64(bias[c]),
            np.int64(multiplier[c]),
            np.int64(shift[c]),
            zero_point,
            clip_min,
            clip_max,
            acc_min,
            acc_max,
            low_counts,
            out[n, c],
        )
    return saturations.sum(), overflows.sum()


@njit(**SERIAL)
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
    saturations = np.zeros(batch * channels, dtype=np.int64)
    overflows = np.zeros(batch * channels, dtype=np.int64)
    low_counts = np.int64(clip_min < zero_point)
    for nc in prange(batch * channels):
        n, c = nc // channels, nc % channels
        aligned = np.empty(spatial, dtype=np.int64)
        for p in range(spatial):
            aligned[p] = (lhs[n, c, p] - lhs_zero) * lhs_multiplier + (rhs[n, c, p] - rhs_zero) * rhs_multiplier
        saturations[nc], overflows[nc] = _requantize_row(
            aligned,
            np.int64(0),
            np.int64(multiplier[c]),
            np.int64(shift[c]),
            zero_point,
            clip_min,
            clip_max,
            acc_min,
            acc_max,
            low_counts,
            out[n, c],
        )
    return saturations.sum(), overflows.sum()


@njit(**SERIAL)
def _requantize_row_div(values, multiplier, shift, den, zero_point, clip_min, clip_max, low_counts, out):
    """One channel's run divided by a per-sample ``den`` > 0: a single exact rounding; returns saturations."""
    saturations = np.int64(0)
    left = np.int64(max(-shift, 0))
    divisor = np.int64(den) << np.int64(max(shift, 0))
    for p in range(values.size):
        numerator = (np.int64(values[p]) * multiplier) << left
        quotient = numerator // divisor  # floor division, as in Python
        twice = (numerator - quotient * divisor) * 2
        quotient += (twice > divisor) | ((twice == divisor) & ((quotient & 1) == 1))
        q = quotient + zero_point
        saturations += ((q < clip_min) & low_counts) | (q > clip_max)
        out[p] = min(max(q, clip_min), clip_max)
    return saturations


@njit(**PARALLEL)
def requantize(acc, multiplier, shift, num, den, zero_point, clip_min, clip_max):
    """acc: [N, C, S] int64 (S = spatial size, 1 for linear); multiplier/shift: [C]; num, den: [N] or empty.

    The per-sample operands (input-adaptive steps) multiply (num) and divide (den, > 0) each
    sample's values before the one rounding. Returns (output int64 [N, C, S], number of saturated values).
    """
    batch, channels, _ = acc.shape
    out = np.empty_like(acc)
    saturations = np.zeros(batch * channels, dtype=np.int64)
    low_counts = np.int64(clip_min < zero_point)
    for nc in prange(batch * channels):
        n, c = nc // channels, nc % channels
        scale = np.int64(multiplier[c]) if num.size == 0 else np.int64(multiplier[c]) * np.int64(num[n])
        if den.size == 0:
            saturations[nc], _ = _requantize_row(
                acc[n, c],
                np.int64(0),
                scale,
                np.int64(shift[c]),
                zero_point,
                clip_min,
                clip_max,
                INT64_MIN,
                INT64_MAX,
                low_counts,
                out[n, c],
            )
        else:
            saturations[nc] = _requantize_row_div(
                acc[n, c], scale, np.int64(shift[c]), den[n], zero_point, clip_min, clip_max, low_counts, out[n, c]
            )
    return out, saturations.sum()


@njit(**SERIAL)
def _outside(value, low, high):
    """1 when value lies outside [low, high] (an accumulator overflow), as int32."""
    return np.int32((value < low) | (value > high))


@njit(**SERIAL)
def _round_clip(value, scale, zero_point, clip_min, clip_max, low_counts):
    """(clip(rint(value * scale) + zero_point), 1 if that clipped as a saturation else 0): exact where
    value * scale is (the ``hwsim.channels_last`` bound)."""
    return round_clip_product(value * scale, zero_point, clip_min, clip_max, low_counts)


@njit(**SERIAL)
def round_clip_product(product, zero_point, clip_min, clip_max, low_counts):
    """``_round_clip`` of a product already formed (the checked kernels test it before rounding)."""
    q = np.rint(product) + zero_point
    saturated = np.int32(q > clip_max)
    if low_counts:
        saturated = np.int32(saturated + np.int32(q < clip_min))
    return min(max(q, clip_min), clip_max), saturated


@njit(**SERIAL)
def requantize_rows_float(
    acc, scale, bias, zero_point, clip_min, clip_max, acc_min, acc_max, low_counts, check_overflow, out
):  # fmt: skip
    """Fused bias + requantize of a channels-last block (flattened): out[i] from acc[i], exactly.

    scale/bias: tiled per channel, their dtype sets the arithmetic; value * scale is exact there
    (``hwsim.channels_last`` proves it), so np.rint rounds half to even like the integer rule.
    Returns (saturated count, accumulator overflow count), counted as ``requantize_exact_float``
    does; ``check_overflow`` False: proven impossible, not checked. The flags are loop invariant
    (LLVM unswitches them out of the vectorized loop). Clip limits fit int32 (``float_requant``);
    counts run in int32 lanes, twice as many per vector as int64.
    """
    tile = scale.size
    saturations = 0
    overflows = 0
    for base in range(0, acc.size, tile):
        block, target = acc[base : base + tile], out[base : base + tile]
        saturated = np.int32(0)
        overflowed = np.int32(0)
        for t in range(block.size):
            value = block[t] + bias[t]
            if check_overflow:
                overflowed = np.int32(overflowed + _outside(value, acc_min, acc_max))
            q, clipped = _round_clip(value, scale[t], zero_point, clip_min, clip_max, low_counts)
            saturated = np.int32(saturated + clipped)
            target[t] = np.int32(q)
        saturations += saturated
        overflows += overflowed
    return saturations, overflows


@njit(**SERIAL)
def add_requantize_rows_float(
    lhs, rhs, lhs_zero, rhs_zero, lhs_multiplier, rhs_multiplier, scale, zero_point, clip_min, clip_max,
    acc_min, acc_max, low_counts, check_overflow, out,
):  # fmt: skip
    """Fused residual add + requantize of flattened channels-last blocks, as ``requantize_rows_float``.

    The zero points and alignment multipliers come in the dtype of ``scale``.
    """
    tile = scale.size
    saturations = 0
    overflows = 0
    for base in range(0, lhs.size, tile):
        left, right, target = lhs[base : base + tile], rhs[base : base + tile], out[base : base + tile]
        saturated = np.int32(0)
        overflowed = np.int32(0)
        for t in range(left.size):
            value = (left[t] - lhs_zero) * lhs_multiplier + (right[t] - rhs_zero) * rhs_multiplier
            if check_overflow:
                overflowed = np.int32(overflowed + _outside(value, acc_min, acc_max))
            q, clipped = _round_clip(value, scale[t], zero_point, clip_min, clip_max, low_counts)
            saturated = np.int32(saturated + clipped)
            target[t] = np.int32(q)
        saturations += saturated
        overflows += overflowed
    return saturations, overflows


@njit(**SERIAL)
def residual_rows_float(
    acc, scale, bias, zero_point, clip_min, clip_max, acc_min, acc_max, low_counts, check_overflow,
    other, own_zero, other_zero, own_multiplier, other_multiplier,
    add_scale, add_zero_point, add_clip_min, add_clip_max, add_min, add_max, add_low_counts, add_check_overflow,
    out,
):  # fmt: skip
    """A convolution's requantize, the residual add it feeds and that add's requantize, in one pass.

    The same arithmetic as ``requantize_rows_float`` followed by ``add_requantize_rows_float``
    (the requantized convolution output is the add's ``own`` operand, never stored). Returns
    (saturations, overflows) of the first requantize, then of the add's.
    """
    tile = scale.size
    saturations, overflows, add_saturations, add_overflows = 0, 0, 0, 0
    for base in range(0, acc.size, tile):
        block, shortcut, target = acc[base : base + tile], other[base : base + tile], out[base : base + tile]
        saturated, overflowed, add_saturated, add_overflowed = np.int32(0), np.int32(0), np.int32(0), np.int32(0)
        for t in range(block.size):
            value = block[t] + bias[t]
            if check_overflow:
                overflowed = np.int32(overflowed + _outside(value, acc_min, acc_max))
            q, clipped = _round_clip(value, scale[t], zero_point, clip_min, clip_max, low_counts)
            saturated = np.int32(saturated + clipped)
            total = (q - own_zero) * own_multiplier + (shortcut[t] - other_zero) * other_multiplier
            if add_check_overflow:
                add_overflowed = np.int32(add_overflowed + _outside(total, add_min, add_max))
            r, add_clipped = _round_clip(
                total, add_scale[t], add_zero_point, add_clip_min, add_clip_max, add_low_counts
            )
            add_saturated = np.int32(add_saturated + add_clipped)
            target[t] = np.int32(r)
        saturations += saturated
        overflows += overflowed
        add_saturations += add_saturated
        add_overflows += add_overflowed
    return saturations, overflows, add_saturations, add_overflows
