"""Channels-last requantize kernels in int64: the IR's integer rule, vectorized, for any scale.

The float kernels (``requant.*_rows_float``) need value * multiplier below 2**53; free (LSQ) scales
use 31-bit multipliers and shifts near 40, past that bound. These kernels compute the rule itself,
q = (value * multiplier + 2**(shift - 1) - 1 + bit) >> shift with bit = (value * multiplier >> shift) & 1
(ties to even; ``_requantize_row``), on flattened [rows, C] blocks with per-channel constants tiled
as in the float kernels. int64 multiplies and per-lane shifts vectorize on AVX-512 (vpmullq,
vpsravq). ``hwsim.channels_last.int_requant`` proves |value * multiplier| + 2**shift < 2**63 and
1 <= shift <= 62 before it builds a form. Returns and counters are those of the float kernels.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from hwsim.kernels.config import SERIAL


@njit(**SERIAL)
def _round_clip_int(value, multiplier, shift, up, zero_point, clip_min, clip_max, low_counts):
    """(clip(round_half_even(value * multiplier / 2**shift) + zero_point), 1 if that saturated else 0)."""
    scaled = value * multiplier
    q = ((scaled + up + ((scaled >> shift) & 1)) >> shift) + zero_point
    saturated = np.int32(q > clip_max)
    if low_counts:
        saturated = np.int32(saturated + np.int32(q < clip_min))
    return min(max(q, clip_min), clip_max), saturated


@njit(**SERIAL)
def _outside(value, low, high):
    return np.int32((value < low) | (value > high))


@njit(**SERIAL)
def requantize_rows_int(
    acc, multiplier, shift, up, bias, zero_point, clip_min, clip_max, acc_min, acc_max, low_counts, check_overflow, out
):  # fmt: skip
    """Fused bias + requantize of a flattened channels-last block: out[i] from acc[i] (integers, any
    numeric type, e.g. oneDNN's float32). multiplier/shift/up (2**(shift-1) - 1)/bias: int64, tiled.
    Returns (saturations, accumulator overflows); overflows only counted when ``check_overflow``."""
    tile = multiplier.size
    saturations = 0
    overflows = 0
    for base in range(0, acc.size, tile):
        block, target = acc[base : base + tile], out[base : base + tile]
        saturated = np.int32(0)
        overflowed = np.int32(0)
        for t in range(block.size):
            value = np.int64(block[t]) + bias[t]
            if check_overflow:
                overflowed = np.int32(overflowed + _outside(value, acc_min, acc_max))
            q, clipped = _round_clip_int(
                value, multiplier[t], shift[t], up[t], zero_point, clip_min, clip_max, low_counts
            )
            saturated = np.int32(saturated + clipped)
            target[t] = q
        saturations += saturated
        overflows += overflowed
    return saturations, overflows


@njit(**SERIAL)
def add_requantize_rows_int(
    lhs, rhs, lhs_zero, rhs_zero, lhs_multiplier, rhs_multiplier, multiplier, shift, up, zero_point, clip_min,
    clip_max, acc_min, acc_max, low_counts, check_overflow, out,
):  # fmt: skip
    """Fused residual add + requantize of flattened channels-last blocks, as ``requantize_rows_int``."""
    tile = multiplier.size
    saturations = 0
    overflows = 0
    for base in range(0, lhs.size, tile):
        left, right, target = lhs[base : base + tile], rhs[base : base + tile], out[base : base + tile]
        saturated = np.int32(0)
        overflowed = np.int32(0)
        for t in range(left.size):
            value = (np.int64(left[t]) - lhs_zero) * lhs_multiplier + (np.int64(right[t]) - rhs_zero) * rhs_multiplier
            if check_overflow:
                overflowed = np.int32(overflowed + _outside(value, acc_min, acc_max))
            q, clipped = _round_clip_int(
                value, multiplier[t], shift[t], up[t], zero_point, clip_min, clip_max, low_counts
            )
            saturated = np.int32(saturated + clipped)
            target[t] = q
        saturations += saturated
        overflows += overflowed
    return saturations, overflows


@njit(**SERIAL)
def residual_rows_int(
    acc, multiplier, shift, up, bias, zero_point, clip_min, clip_max, acc_min, acc_max, low_counts, check_overflow,
    other, own_zero, other_zero, own_multiplier, other_multiplier,
    add_multiplier, add_shift, add_up, add_zero_point, add_clip_min, add_clip_max, add_min, add_max, add_low_counts,
    add_check_overflow, out,
):  # fmt: skip
    """A convolution's requantize, the residual add it feeds and that add's requantize in one pass:
    ``requantize_rows_int`` then ``add_requantize_rows_int`` (the convolution's requantized output is
    the add's ``own`` operand, never stored). Returns the first requantize's (saturations, overflows),
    then the add's."""
    tile = multiplier.size
    saturations, overflows, add_saturations, add_overflows = 0, 0, 0, 0
    for base in range(0, acc.size, tile):
        block, shortcut, target = acc[base : base + tile], other[base : base + tile], out[base : base + tile]
        saturated, overflowed, add_saturated, add_overflowed = np.int32(0), np.int32(0), np.int32(0), np.int32(0)
        for t in range(block.size):
            value = np.int64(block[t]) + bias[t]
            if check_overflow:
                overflowed = np.int32(overflowed + _outside(value, acc_min, acc_max))
            q, clipped = _round_clip_int(
                value, multiplier[t], shift[t], up[t], zero_point, clip_min, clip_max, low_counts
            )
            saturated = np.int32(saturated + clipped)
            total = (q - own_zero) * own_multiplier + (np.int64(shortcut[t]) - other_zero) * other_multiplier
            if add_check_overflow:
                add_overflowed = np.int32(add_overflowed + _outside(total, add_min, add_max))
            r, add_clipped = _round_clip_int(
                total, add_multiplier[t], add_shift[t], add_up[t], add_zero_point, add_clip_min, add_clip_max,
                add_low_counts,
            )  # fmt: skip
            add_saturated = np.int32(add_saturated + add_clipped)
            target[t] = r
        saturations += saturated
        overflows += overflowed
        add_saturations += add_saturated
        add_overflows += add_overflowed
    return saturations, overflows, add_saturations, add_overflows
