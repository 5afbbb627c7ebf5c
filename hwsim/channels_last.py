"""Fused channels-last steps of hwsim's fast mode: a torch convolution or a residual add, then the
requantize that reads it, in float arithmetic that is proven exact, else in int64.

A requantize computes round_half_even(value * multiplier / 2**shift). When every |value| is at most
``bound`` and bound * multiplier < 2**24 (2**53), value * (multiplier * 2**-shift) is exact in
float32 (float64), and np.rint rounds it half to even: the integer rule, bit for bit. The kernels
(``hwsim.kernels.requant.*_rows_float``) then run vectorized on [rows, C] data, which is the layout
the torch convolutions (``hwsim.int8_conv``, ``hwsim.float_conv``) write. Overflow of the
accumulator type is only checked where the bound does not already rule it out.

Free (LSQ) scales have 31-bit multipliers and shifts near 40: past float64's bound. Their steps use
``CheckedRequant``: float32 with the scale rounded where values stay below 2**24, else float64, each
product checked against the nearest half and the few that may round differently recomputed in int64
(``hwsim.kernels.requant_checked``); else ``IntRequant``, the integer rule itself in vectorized int64
(``hwsim.kernels.requant_int``). Same layout, same counters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from hwsim.exact import FLOAT32_EXACT, FLOAT64_EXACT, float_type
from hwsim.float_conv import FloatConv
from hwsim.int8_conv import Int8Conv
from hwsim.kernels import requant, requant_checked, requant_int
from hwsim.native_conv import NativeConv, ResidualAdd

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1  # the kernels convert clipped results through int32
INT64_LIMIT = 2**63
CHECKED_CLIP_LIMIT = 2**21  # checked forms: |zero point| + |clip limits| below this (larger results only clip)
# checked forms: |p - exact| <= error * |p| for p = value * float(scale): float32 rounds the scale and the
# product (2**-24 each), float64 only the product (the scale, 31 bits x a power of two, is exact)
CHECKED_ERROR = {np.float32: 2.0**-22, np.float64: 2.0**-51}
CHECKED_EXACT = {np.float32: FLOAT32_EXACT, np.float64: FLOAT64_EXACT}
TILE = 256  # per-channel constants are tiled to a whole number of channel rows of about this length


@dataclass
class FloatRequant:
    """A per-channel requantization in the float type that performs it exactly, tiled for the kernels."""

    scale: np.ndarray  # multiplier * 2**-shift, tiled: element i of a flattened [rows, C] block uses scale[i % len]
    bias: np.ndarray  # tiled like scale
    limits: tuple  # (zero point, clip min, clip max, accumulator min, max, low_counts, check_overflow)
    kind = "float"

    @property
    def coeffs(self) -> tuple[np.ndarray, ...]:
        """The kernels' per-channel arguments before ``bias``."""
        return (self.scale,)

    @property
    def dtype(self) -> type:
        return self.scale.dtype.type


@dataclass
class IntRequant:
    """The same requantization in int64, the IR's integer rule (``hwsim.kernels.requant_int``), for any
    scale whose products fit int64; tiled like ``FloatRequant``."""

    multiplier: np.ndarray
    shift: np.ndarray  # 1..62
    up: np.ndarray  # 2**(shift - 1) - 1
    bias: np.ndarray
    limits: tuple  # as FloatRequant's, in int64 (flags: bool)
    kind = "int"

    @property
    def coeffs(self) -> tuple[np.ndarray, ...]:
        return (self.multiplier, self.shift, self.up)

    @property
    def dtype(self) -> type:
        return np.int64


@dataclass
class CheckedRequant:
    """A requantization in float32 (float64) with the scale rounded, checked per element (``requant_checked``),
    with the int64 form for the elements near a half; tiled like ``FloatRequant``."""

    scale: np.ndarray  # float(multiplier * 2**-shift), tiled
    bias: np.ndarray  # in the scale's type, tiled
    limits: tuple  # FloatRequant's limits, error, 0.5 (the scale's type), the int64 form's multiplier, shift, up
    int_form: IntRequant
    products: float = math.inf  # a bound on every |v * scale| (the C kernels skip a clamp below 2**29)
    kind = "checked"

    @property
    def coeffs(self) -> tuple[np.ndarray, ...]:
        return (self.scale,)

    @property
    def dtype(self) -> type:
        return self.scale.dtype.type

    @classmethod
    def of(cls, form: FloatRequant | CheckedRequant, int_form: IntRequant | None) -> CheckedRequant | None:
        """A float form as a checked one (error 0: only exact ties, which np.rint already rounds right, go to int64)."""
        if form.kind == "checked":
            return form
        if int_form is None:
            return None
        exact = float(FLOAT32_EXACT if form.dtype is np.float32 else FLOAT64_EXACT)  # a float form's products are exact
        return cls(form.scale, form.bias, _checked_limits(form.limits, 0.0, int_form), int_form, exact)


def _checked_limits(float_limits: tuple, error: float, int_form: IntRequant) -> tuple:
    dtype = type(float_limits[0])  # the float type of the zero point: the form's
    return (*float_limits, dtype(error), dtype(0.5), *int_form.coeffs)


def exact_requant(*args) -> FloatRequant | CheckedRequant | IntRequant | None:
    """The fastest exact form (same arguments): float32, checked float32, float64, checked float64, int64."""
    form = float_requant(*args)
    if form is not None and form.dtype is np.float32:
        return form
    return checked_requant(*args, np.float32) or form or checked_requant(*args, np.float64) or int_requant(*args)


def checked_requant(
    multiplier: np.ndarray,
    shift: np.ndarray,
    bias: np.ndarray,
    bound: int,
    zero_point: int,
    clips: tuple[int, int],
    acc_limits: tuple[int, int],
    dtype: type = np.float32,
) -> CheckedRequant | None:
    """The checked form in ``dtype`` of a requantization of values |v| <= bound, or None where it does not
    apply: values not exact in dtype, clip limits too wide, or no int64 form."""
    int_form = int_requant(multiplier, shift, bias, bound, zero_point, clips, acc_limits)
    too_wide = abs(zero_point) + max(map(abs, clips)) >= CHECKED_CLIP_LIMIT
    if int_form is None or bound >= CHECKED_EXACT[dtype] or too_wide:
        return None
    # int_requant's shifts 1..62 and 31-bit multipliers keep every nonzero scale and product normal in float32
    exact_scale = _exact_scale(multiplier, shift)
    repeats = -(-TILE // exact_scale.size)
    scale = exact_scale.astype(dtype)
    largest = (bound + float(np.abs(np.asarray(bias, dtype=np.float64)).max(initial=0))) * float(np.abs(scale).max())
    return CheckedRequant(
        np.tile(scale, repeats),
        np.tile(np.asarray(bias, dtype=dtype), repeats),
        _checked_limits(_float_limits(dtype, bound, zero_point, clips, acc_limits), CHECKED_ERROR[dtype], int_form),
        int_form,
        largest * (1 + 2.0**-20),
    )


def int_requant(
    multiplier: np.ndarray,
    shift: np.ndarray,
    bias: np.ndarray,
    bound: int,
    zero_point: int,
    clips: tuple[int, int],
    acc_limits: tuple[int, int],
) -> IntRequant | None:
    """The int64 form of a requantization of values |v| <= bound, or None when a product or shift does not fit."""
    multiplier, shift = np.asarray(multiplier, dtype=np.int64), np.asarray(shift, dtype=np.int64)
    if multiplier.size == 0 or shift.min() < 1 or shift.max() > 62:
        return None
    largest = bound * int(np.abs(multiplier).max()) + (1 << int(shift.max())) + abs(zero_point) + max(map(abs, clips))
    if largest >= INT64_LIMIT or not INT32_MIN <= clips[0] <= clips[1] <= INT32_MAX:
        return None
    repeats = -(-TILE // multiplier.size)
    low, high = acc_limits
    tiled_shift = np.tile(shift, repeats)
    return IntRequant(
        np.tile(multiplier, repeats),
        tiled_shift,
        (np.int64(1) << (tiled_shift - 1)) - 1,
        np.tile(np.asarray(bias, dtype=np.int64), repeats),
        (
            np.int64(zero_point),
            np.int64(clips[0]),
            np.int64(clips[1]),
            np.int64(max(low, -INT64_LIMIT + 1)),
            np.int64(min(high, INT64_LIMIT - 1)),
            clips[0] < zero_point,
            not (low <= -bound and bound <= high),
        ),
    )


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
    multiplier = np.asarray(multiplier, dtype=np.int64)
    largest = bound * int(np.abs(multiplier).max(initial=0)) + abs(zero_point) + max(map(abs, clips))
    dtype = float_type(largest)
    if dtype is None or not INT32_MIN <= clips[0] <= clips[1] <= INT32_MAX:
        return None
    exact_scale = _exact_scale(multiplier, shift)
    if not np.array_equal(exact_scale.astype(dtype).astype(np.float64), exact_scale):
        dtype = np.float64  # a scale beyond float32's exponent range
    repeats = -(-TILE // multiplier.size)
    return FloatRequant(
        np.tile(exact_scale.astype(dtype), repeats),
        np.tile(np.asarray(bias, dtype=dtype), repeats),
        _float_limits(dtype, bound, zero_point, clips, acc_limits),
    )


def _exact_scale(multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """multiplier * 2**-shift in float64, exact: |multiplier| < 2**53."""
    return np.asarray(multiplier, dtype=np.int64) * np.exp2(-np.asarray(shift, dtype=np.float64))


def _float_limits(dtype: type, bound: int, zero_point: int, clips: tuple[int, int], acc_limits: tuple[int, int]):
    """The float kernels' limits: (zero point, clip min, clip max, accumulator min, max, low_counts, check_overflow).
    The accumulator limits are only read when the bound exceeds them, and then they are exact in dtype."""
    low, high = acc_limits
    return (
        dtype(zero_point),
        dtype(clips[0]),
        dtype(clips[1]),
        dtype(max(low, -FLOAT64_EXACT)),
        dtype(min(high, FLOAT64_EXACT)),
        clips[0] < zero_point,  # clipping at clip_min counts as a saturation (not a fused ReLU's zero)
        not (low <= -bound and bound <= high),  # overflow possible: check it
    )


def channels_last_rows(x: np.ndarray) -> np.ndarray | None:
    """An [N, C, H, W] array stored channels-last (or [N, C]) as a flat view in that order; None if it is not."""
    if x.ndim not in (2, 4):
        return None
    rows = x.transpose(0, 2, 3, 1) if x.ndim == 4 else x
    return rows.reshape(-1) if rows.flags.c_contiguous else None


Form = FloatRequant | CheckedRequant | IntRequant
REQUANT_KERNELS = {
    "float": requant.requantize_rows_float,
    "checked": requant_checked.requantize_rows_checked,
    "int": requant_int.requantize_rows_int,
}
ADD_KERNELS = {
    "float": requant.add_requantize_rows_float,
    "checked": requant_checked.add_requantize_rows_checked,
    "int": requant_int.add_requantize_rows_int,
}
RESIDUAL_KERNELS = {
    "float": requant.residual_rows_float,
    "checked": requant_checked.residual_rows_checked,
    "int": requant_int.residual_rows_int,
}


@dataclass
class ChannelsLastStep:
    """A torch convolution (``conv``: Int8Conv or FloatConv) or an add (``alignment``), fused with its requantize."""

    form: Form
    spatial_channels: tuple[int, ...]  # the output's (H, W, C) or (C,)
    out_type: type  # numpy storage type of the requantized output
    conv: Int8Conv | FloatConv | None = None
    alignment: tuple = ()  # add: (lhs zero point, rhs zero point, lhs multiplier, rhs multiplier) in the form's type
    int_form: IntRequant | None = None  # the int64 form too, when ``form`` is a float one (for ResidualStep)
    native: NativeConv | None = None  # runs the convolution and its requantize in one C pass instead of ``conv``

    def out_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.spatial_channels)

    def accepts(self, inputs: list[np.ndarray]) -> bool:
        return self.conv is not None or all(channels_last_rows(x) is not None for x in inputs)

    def integer_form(self) -> IntRequant | None:
        """The int64 form of this step's requantize (None when it has none)."""
        if self.form.kind == "int":
            return self.form
        return self.form.int_form if self.form.kind == "checked" else self.int_form

    def as_checked(self) -> ChannelsLastStep | None:
        """This step with a checked form (None when it has no int64 form for the checked-out elements)."""
        form = CheckedRequant.of(self.form, self.int_form) if self.form.kind != "int" else None
        return None if form is None else replace(self, form=form)

    def as_int(self) -> ChannelsLastStep | None:
        """This step with its int64 form (None when it has none)."""
        if self.form.kind == "int":
            return self
        if self.int_form is None:
            return None
        alignment = tuple(np.int64(value) for value in self.alignment)
        return replace(self, form=self.int_form, alignment=alignment, int_form=None)

    def __call__(self, inputs: list[np.ndarray], out: np.ndarray) -> tuple[int, int]:
        """Write the requantized result into ``out`` [N, ..., C]; return (saturations, overflows).

        Runs in the calling thread: oneDNN's threads spin between convolutions, so a second worker
        here would only contend with them (measured slower on a 2-core machine).
        """
        flat_out = out.reshape(-1)
        form = self.form
        if self.conv is None:
            lhs, rhs = (channels_last_rows(x) for x in inputs)
            return ADD_KERNELS[form.kind](lhs, rhs, *self.alignment, *form.coeffs, *form.limits, flat_out)
        if self.native is not None:
            return self.native.requantize_into(inputs[0], form, self.integer_form(), out)
        acc = self.conv(inputs[0]).reshape(-1)
        return REQUANT_KERNELS[form.kind](acc, *form.coeffs, form.bias, *form.limits, flat_out)


def add_alignment(form: Form, zero_points: tuple[int, int], multipliers: tuple[int, int]) -> tuple:
    kind = form.dtype
    return (kind(zero_points[0]), kind(zero_points[1]), kind(multipliers[0]), kind(multipliers[1]))


@dataclass
class ResidualStep:
    """A fused torch convolution whose requantized output only feeds a fused residual add: one pass."""

    conv: ChannelsLastStep
    add: ChannelsLastStep
    other: str  # the add's other operand (computed before the convolution)
    alignment: tuple  # (own zero point, other's, own multiplier, other's), in the add form's type

    @classmethod
    def of(cls, conv: ChannelsLastStep, add: ChannelsLastStep, other: str, conv_side: int) -> ResidualStep | None:
        """The fused pass; both requantizes then run in one arithmetic (int64 if either needs it), None if
        they cannot."""
        if conv.form.kind != add.form.kind:  # float with checked: both checked; with int64: both int64
            checked = "int" not in (conv.form.kind, add.form.kind)
            conv, add = (conv.as_checked(), add.as_checked()) if checked else (conv.as_int(), add.as_int())
            if conv is None or add is None:
                return None
        lhs_zero, rhs_zero, lhs_multiplier, rhs_multiplier = add.alignment
        if conv_side == 0:
            return cls(conv, add, other, (lhs_zero, rhs_zero, lhs_multiplier, rhs_multiplier))
        return cls(conv, add, other, (rhs_zero, lhs_zero, rhs_multiplier, lhs_multiplier))

    def __call__(self, x: np.ndarray, other_rows: np.ndarray, out: np.ndarray) -> tuple[int, int, int, int]:
        """x: the convolution's input; other_rows: ``channels_last_rows`` of the other operand."""
        first, second = self.conv.form, self.add.form
        acc = self.conv.conv(x).reshape(-1)
        return RESIDUAL_KERNELS[first.kind](
            acc, *first.coeffs, first.bias, *first.limits, other_rows, *self.alignment, *second.coeffs,
            *second.limits, out.reshape(-1),
        )  # fmt: skip


@dataclass
class NativeResidualStep:
    """A native convolution (``ChannelsLastStep.native``) whose requantized output only feeds a fused
    residual add: the C kernel runs both requantizes and the add in its epilogue (``ResidualAdd``)."""

    conv: ChannelsLastStep
    add: ChannelsLastStep
    other: str  # the add's other operand (computed before the convolution)
    residual: ResidualAdd

    @classmethod
    def of(
        cls, conv: ChannelsLastStep, add: ChannelsLastStep, other: str, conv_side: int, bound: int
    ) -> NativeResidualStep | None:
        """None unless the kernels run the add's requantize (``ResidualAdd.of``; ``bound``: the add's
        largest |sum|)."""
        lhs_zero, rhs_zero, lhs_multiplier, rhs_multiplier = add.alignment
        if conv_side == 0:
            alignment = (lhs_zero, rhs_zero, lhs_multiplier, rhs_multiplier)
        else:
            alignment = (rhs_zero, lhs_zero, rhs_multiplier, lhs_multiplier)
        channels = add.spatial_channels[-1]
        residual = ResidualAdd.of(add.form, add.integer_form(), add.out_type, channels, alignment, bound)
        return None if residual is None else cls(conv, add, other, residual)

    def __call__(self, x: np.ndarray, other_rows: np.ndarray, out: np.ndarray) -> tuple[int, int, int, int]:
        """x: the convolution's input; other_rows: ``channels_last_rows`` of the other operand."""
        conv = self.conv
        return conv.native.requantize_into(x, conv.form, conv.integer_form(), out, self.residual.with_other(other_rows))
