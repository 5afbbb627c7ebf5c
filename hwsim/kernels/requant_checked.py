"""Channels-last requantize kernels for free scales in float, checked element by element.

Free (LSQ) scales have 31-bit multipliers: value * multiplier * 2**-shift is not exact in float
(``hwsim.kernels.requant_int`` computes it in int64). These kernels compute p = value * s32 in float32,
with s32 the scale rounded to float32 and |value| < 2**24 (exact). Then |p - value * scale| <=
2**-22 * |p|: two roundings of relative error 2**-24 each (float64, past 2**24: 2**-51 * |p|, the scale
exact). np.rint(p) equals the exact rule's
round-half-even whenever p lies farther than that from the nearest half-integer floor(p) + 0.5 (no
half-integer then lies between p and the exact value, and the exact value is none). The elements
closer than that (about one in 10**4 for outputs below 300, and every exact tie) are recomputed with
the int64 rule (``requant_int``), their counters corrected. Results beyond 2**21 in magnitude only
ever clip: ``hwsim.channels_last.checked_requant`` keeps the clip limits and zero point well inside.
The int64 rule's zero point, clip limits and add alignment are the float ones converted (integers
below 2**24, exact). Outputs and counters are those of the int64 kernels bit for bit; the float32 loops run 16 lanes per
AVX-512 vector instead of int64's 8, without vpmullq.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from hwsim.kernels.config import SERIAL
from hwsim.kernels.requant import _outside
from hwsim.kernels.requant import round_clip_product as _round_clip
from hwsim.kernels.requant_int import _round_clip_int


@njit(**SERIAL)
def _near_half(p, error, half):
    """1 (int32) when the product p, |p - exact| <= error * |p|, may round differently from the exact value.
    half: 0.5 in p's type (a literal would widen float32 lanes to float64)."""
    return np.int32(np.abs(p - np.floor(p) - half) <= np.abs(p) * error)


@njit(**SERIAL)
def _redo_exact(value, p, zero_point, clip_min, clip_max, low_counts, multiplier, shift, up):
    """The int64 rule's output for the integer ``value`` whose float product p was near a half, and the
    correction to the saturation count that the float result of p added."""
    float_clipped = _round_clip(p, zero_point, clip_min, clip_max, low_counts)[1]
    q, clipped = _round_clip_int(
        np.int64(value), multiplier, shift, up, np.int64(zero_point), np.int64(clip_min), np.int64(clip_max),
        low_counts,
    )  # fmt: skip
    return q, clipped - float_clipped


@njit(**SERIAL)
def requantize_rows_checked(
    acc, scale, bias, zero_point, clip_min, clip_max, acc_min, acc_max, low_counts, check_overflow, error, half,
    multiplier, shift, up, out,
):  # fmt: skip
    """Fused bias + requantize of a flattened channels-last block (``requant.requantize_rows_float``'s
    layout and returns); multiplier/shift/up: the int64 form, tiled like scale, for the checked-out elements."""
    tile = scale.size
    saturations = 0
    overflows = 0
    for base in range(0, acc.size, tile):
        block, target = acc[base : base + tile], out[base : base + tile]
        saturated, overflowed, near = np.int32(0), np.int32(0), np.int32(0)
        for t in range(block.size):
            value = block[t] + bias[t]
            if check_overflow:
                overflowed = np.int32(overflowed + _outside(value, acc_min, acc_max))
            p = value * scale[t]
            near = np.int32(near + _near_half(p, error, half))
            q, clipped = _round_clip(p, zero_point, clip_min, clip_max, low_counts)
            saturated = np.int32(saturated + clipped)
            target[t] = np.int32(q)
        if near:
            for t in range(block.size):
                value = block[t] + bias[t]
                p = value * scale[t]
                if _near_half(p, error, half):
                    q, correction = _redo_exact(
                        value, p, zero_point, clip_min, clip_max, low_counts, multiplier[t], shift[t], up[t]
                    )
                    saturated += correction
                    target[t] = q
        saturations += saturated
        overflows += overflowed
    return saturations, overflows


@njit(**SERIAL)
def add_requantize_rows_checked(
    lhs, rhs, lhs_zero, rhs_zero, lhs_multiplier, rhs_multiplier, scale, zero_point, clip_min, clip_max,
    acc_min, acc_max, low_counts, check_overflow, error, half, multiplier, shift, up, out,
):  # fmt: skip
    """Fused residual add + requantize (``requant.add_requantize_rows_float``'s layout and returns); the
    aligned sum is exact in float32 (``checked_requant`` bounds it below 2**24)."""
    tile = scale.size
    saturations = 0
    overflows = 0
    for base in range(0, lhs.size, tile):
        left, right, target = lhs[base : base + tile], rhs[base : base + tile], out[base : base + tile]
        saturated, overflowed, near = np.int32(0), np.int32(0), np.int32(0)
        for t in range(left.size):
            value = (left[t] - lhs_zero) * lhs_multiplier + (right[t] - rhs_zero) * rhs_multiplier
            if check_overflow:
                overflowed = np.int32(overflowed + _outside(value, acc_min, acc_max))
            p = value * scale[t]
            near = np.int32(near + _near_half(p, error, half))
            q, clipped = _round_clip(p, zero_point, clip_min, clip_max, low_counts)
            saturated = np.int32(saturated + clipped)
            target[t] = np.int32(q)
        if near:
            for t in range(left.size):
                value = (left[t] - lhs_zero) * lhs_multiplier + (right[t] - rhs_zero) * rhs_multiplier
                p = value * scale[t]
                if _near_half(p, error, half):
                    q, correction = _redo_exact(
                        value, p, zero_point, clip_min, clip_max, low_counts, multiplier[t], shift[t], up[t]
                    )
                    saturated += correction
                    target[t] = q
        saturations += saturated
        overflows += overflowed
    return saturations, overflows


@njit(**SERIAL)
def residual_rows_checked(
    acc, scale, bias, zero_point, clip_min, clip_max, acc_min, acc_max, low_counts, check_overflow, error, half,
    multiplier, shift, up,
    other, own_zero, other_zero, own_multiplier, other_multiplier,
    add_scale, add_zero_point, add_clip_min, add_clip_max, add_min, add_max, add_low_counts, add_check_overflow,
    add_error, add_half, add_multiplier, add_shift, add_up,
    out,
):  # fmt: skip
    """A convolution's requantize, the residual add it feeds and that add's requantize in one pass
    (``requant.residual_rows_float``'s layout and returns). An element where either product is near a
    half is recomputed through both steps in int64 (its first result feeds the second)."""
    tile = scale.size
    saturations, overflows, add_saturations, add_overflows = 0, 0, 0, 0
    for base in range(0, acc.size, tile):
        block, shortcut, target = acc[base : base + tile], other[base : base + tile], out[base : base + tile]
        saturated, overflowed, add_saturated, add_overflowed = np.int32(0), np.int32(0), np.int32(0), np.int32(0)
        near = np.int32(0)
        for t in range(block.size):
            value = block[t] + bias[t]
            if check_overflow:
                overflowed = np.int32(overflowed + _outside(value, acc_min, acc_max))
            p = value * scale[t]
            near = np.int32(near + _near_half(p, error, half))
            q, clipped = _round_clip(p, zero_point, clip_min, clip_max, low_counts)
            saturated = np.int32(saturated + clipped)
            total = (q - own_zero) * own_multiplier + (shortcut[t] - other_zero) * other_multiplier
            if add_check_overflow:
                add_overflowed = np.int32(add_overflowed + _outside(total, add_min, add_max))
            p2 = total * add_scale[t]
            near = np.int32(near + _near_half(p2, add_error, add_half))
            r, add_clipped = _round_clip(p2, add_zero_point, add_clip_min, add_clip_max, add_low_counts)
            add_saturated = np.int32(add_saturated + add_clipped)
            target[t] = np.int32(r)
        if near:
            for t in range(block.size):
                value = block[t] + bias[t]
                p = value * scale[t]
                q = _round_clip(p, zero_point, clip_min, clip_max, low_counts)[0]
                total = (q - own_zero) * own_multiplier + (shortcut[t] - other_zero) * other_multiplier
                p2 = total * add_scale[t]
                # near a half in either step: undo this element's float counts, redo both steps in int64
                if _near_half(p, error, half) | _near_half(p2, add_error, add_half):
                    qi, correction = _redo_exact(
                        value, p, zero_point, clip_min, clip_max, low_counts, multiplier[t], shift[t], up[t]
                    )
                    saturated += correction
                    total_i = (qi - np.int64(own_zero)) * np.int64(own_multiplier)
                    total_i += (np.int64(shortcut[t]) - np.int64(other_zero)) * np.int64(other_multiplier)
                    if add_check_overflow:
                        add_overflowed += _outside(total_i, add_min, add_max) - _outside(total, add_min, add_max)
                    ri, add_correction = _redo_exact(
                        total_i, p2, add_zero_point, add_clip_min, add_clip_max, add_low_counts, add_multiplier[t],
                        add_shift[t], add_up[t],
                    )  # fmt: skip
                    add_saturated += add_correction
                    target[t] = ri
        saturations += saturated
        overflows += overflowed
        add_saturations += add_saturated
        add_overflows += add_overflowed
    return saturations, overflows, add_saturations, add_overflows
