"""Fused channels-last steps of hwsim's fast mode: a torch convolution or a residual add, then the
requantize that reads it, in float arithmetic that is proven exact.

A requantize computes round_half_even(value * multiplier / 2**shift). When every |value| is at most
``bound`` and bound * multiplier < 2**24 (2**53), value * (multiplier * 2**-shift) is exact in
float32 (float64), and np.rint rounds it half to even: the integer rule, bit for bit. The kernels
(``hwsim.kernels.requant.*_rows_float``) then run vectorized on [rows, C] data, which is the layout
the torch convolutions (``hwsim.int8_conv``, ``hwsim.float_conv``) write. Overflow of the
accumulator type is only checked where the bound does not already rule it out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwsim.exact import FLOAT64_EXACT, float_type
from hwsim.float_conv import FloatConv
from hwsim.int8_conv import Int8Conv
from hwsim.kernels import requant

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1  # the kernels convert clipped results through int32
TILE = 256  # per-channel constants are tiled to a whole number of channel rows of about this length


@dataclass
class FloatRequant:
    """A per-channel requantization in the float type that performs it exactly, tiled for the kernels."""

    scale: np.ndarray  # multiplier * 2**-shift, tiled: element i of a flattened [rows, C] block uses scale[i % len]
    bias: np.ndarray  # tiled like scale
    limits: tuple  # (zero point, clip min, clip max, accumulator min, max, low_counts, check_overflow)


def float_requant(
    multiplier: np.ndarray,
    shift: np.ndarray,
    bias: np.ndarray,
    bound: int,
    zero_point: int,
    clips: tuple[int, int],
    acc_limits: tuple[int, int],
) -> FloatRequant | None:
    """The float32 (else float64) form of a requantization of values |v| <= bound, or None if neither is exact."""
    multiplier, shift = np.asarray(multiplier, dtype=np.int64), np.asarray(shift, dtype=np.int64)
    largest = bound * int(np.abs(multiplier).max(initial=0)) + abs(zero_point) + max(map(abs, clips))
    dtype = float_type(largest)
    if dtype is None or not INT32_MIN <= clips[0] <= clips[1] <= INT32_MAX:
        return None
    exact_scale = multiplier * np.exp2(-shift.astype(np.float64))  # exact: |multiplier| < 2**53
    if not np.array_equal(exact_scale.astype(dtype).astype(np.float64), exact_scale):
        dtype = np.float64  # a scale beyond float32's exponent range
    repeats = -(-TILE // multiplier.size)
    low, high = acc_limits
    return FloatRequant(
        np.tile(exact_scale.astype(dtype), repeats),
        np.tile(np.asarray(bias, dtype=dtype), repeats),
        (
            dtype(zero_point),
            dtype(clips[0]),
            dtype(clips[1]),
            dtype(max(low, -FLOAT64_EXACT)),
            dtype(min(high, FLOAT64_EXACT)),
            clips[0] < zero_point,  # clipping at clip_min counts as a saturation (not a fused ReLU's zero)
            not (low <= -bound and bound <= high),  # overflow possible: check it
        ),
    )


def channels_last_rows(x: np.ndarray) -> np.ndarray | None:
    """An [N, C, H, W] array stored channels-last (or [N, C]) as a flat view in that order; None if it is not."""
    if x.ndim not in (2, 4):
        return None
    rows = x.transpose(0, 2, 3, 1) if x.ndim == 4 else x
    return rows.reshape(-1) if rows.flags.c_contiguous else None


@dataclass
class ChannelsLastStep:
    """A torch convolution (``conv``: Int8Conv or FloatConv) or an add (``alignment``), fused with its requantize."""

    form: FloatRequant
    spatial_channels: tuple[int, ...]  # the output's (H, W, C) or (C,)
    out_type: type  # numpy storage type of the requantized output
    conv: Int8Conv | FloatConv | None = None
    alignment: tuple = ()  # add: (lhs zero point, rhs zero point, lhs multiplier, rhs multiplier) in the form's type

    def out_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.spatial_channels)

    def accepts(self, inputs: list[np.ndarray]) -> bool:
        return self.conv is not None or all(channels_last_rows(x) is not None for x in inputs)

    def __call__(self, inputs: list[np.ndarray], out: np.ndarray) -> tuple[int, int]:
        """Write the requantized result into ``out`` [N, ..., C]; return (saturations, overflows).

        Runs in the calling thread: oneDNN's threads spin between convolutions, so a second worker
        here would only contend with them (measured slower on a 2-core machine).
        """
        flat_out = out.reshape(-1)
        form = self.form
        if self.conv is None:
            lhs, rhs = (channels_last_rows(x) for x in inputs)
            return requant.add_requantize_rows_float(lhs, rhs, *self.alignment, form.scale, *form.limits, flat_out)
        acc = self.conv(inputs[0]).reshape(-1)
        return requant.requantize_rows_float(acc, form.scale, form.bias, *form.limits, flat_out)


def add_alignment(form: FloatRequant, zero_points: tuple[int, int], multipliers: tuple[int, int]) -> tuple:
    kind = form.scale.dtype.type
    return (kind(zero_points[0]), kind(zero_points[1]), kind(multipliers[0]), kind(multipliers[1]))


@dataclass
class ResidualStep:
    """A fused torch convolution whose requantized output only feeds a fused residual add: one pass."""

    conv: ChannelsLastStep
    add: ChannelsLastStep
    other: str  # the add's other operand (computed before the convolution)
    alignment: tuple  # (own zero point, other's, own multiplier, other's), in the add form's type

    @classmethod
    def of(cls, conv: ChannelsLastStep, add: ChannelsLastStep, other: str, conv_side: int) -> ResidualStep:
        lhs_zero, rhs_zero, lhs_multiplier, rhs_multiplier = add.alignment
        if conv_side == 0:
            return cls(conv, add, other, (lhs_zero, rhs_zero, lhs_multiplier, rhs_multiplier))
        return cls(conv, add, other, (rhs_zero, lhs_zero, rhs_multiplier, lhs_multiplier))

    def __call__(self, x: np.ndarray, other_rows: np.ndarray, out: np.ndarray) -> tuple[int, int, int, int]:
        """x: the convolution's input; other_rows: ``channels_last_rows`` of the other operand."""
        first, second = self.conv.form, self.add.form
        acc = self.conv.conv(x).reshape(-1)
        return requant.residual_rows_float(
            acc, first.scale, first.bias, *first.limits, other_rows, *self.alignment, second.scale, *second.limits,
            out.reshape(-1),
        )  # fmt: skip
