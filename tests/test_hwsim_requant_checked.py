"""hwsim's checked float requantize kernels (free scales in float32/float64, elements near a half redone in
int64) against the int64 kernels, which ``test_hwsim_requant_int`` holds to qexport's integer rule.

Random products rarely land within float32's error of a half, so the cases also build near ties: a
multiplier chosen so that a given accumulator's product lies a few 2**-shift steps from j + 1/2."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from irgen import add_operands, quantized_types
from test_hwsim_requant_int import _limits, _with_ties, int_cases

from hwsim.channels_last import ChannelsLastStep, ResidualStep, add_alignment, checked_requant, int_requant
from hwsim.kernels import requant_checked, requant_int

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = (np.float32, np.float64)


def near_tie_scales(values: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per channel a 31-bit multiplier and a shift that put values[c] * m / 2**shift a few 2**-shift
    steps (0 to 3: ties included) from a half j + 1/2, |j| < 150. values: nonzero integers, one per channel."""
    values = np.where(values == 0, 1, values)
    halves = rng.integers(-150, 150, size=values.size) + 0.5
    magnitude = np.abs(values)
    shift = np.floor(np.log2(magnitude)).astype(np.int64) + 30 - np.ceil(np.log2(np.abs(halves) + 1)).astype(np.int64)
    shift = np.clip(shift, 1, 62)
    multiplier = np.round(halves * 2.0**shift / values).astype(np.int64) + rng.integers(-3, 4, size=values.size)
    return multiplier, shift


@st.composite
def near_tie_cases(draw):
    """Per channel an accumulator v and a 31-bit multiplier m with v * m / 2**shift = j + 1/2 + k * 2**-shift
    for small k (exact ties at k = 0); the accumulators are v, -v and neighbours."""
    channels, rows = draw(st.integers(1, 12)), draw(st.integers(1, 30))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.integers(2**12, 2**23, size=channels)
    multiplier, shift = near_tie_scales(values, rng)
    acc = values * rng.choice([-1, 1], size=(rows, channels)) + rng.integers(-2, 3, size=(rows, channels))
    acc = np.where(rng.random((rows, channels)) < 0.2, rng.integers(-(2**23), 2**23, size=(rows, channels)), acc)
    bound = 2**23 + 2
    zero_point = draw(st.integers(-100, 100))
    clip_min = draw(st.integers(-300, 0))
    clip_max = draw(st.integers(clip_min, 300))
    acc_bits = draw(st.integers(20, 32))
    return (
        acc,
        np.float32,
        np.zeros(channels, np.int64),
        multiplier,
        shift,
        bound,
        zero_point,
        (clip_min, clip_max),
        acc_bits,
    )


CASES = st.one_of(int_cases(), near_tie_cases())


@SETTINGS
@given(case=CASES, dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_checked_requant_equals_int64_kernel(case, dtype, seed) -> None:
    acc, storage, bias, multiplier, shift, bound, zero_point, clips, acc_bits = case
    acc = _with_ties(acc, bias, multiplier, shift, np.random.default_rng(seed))
    form = checked_requant(multiplier, shift, bias, bound, zero_point, clips, _limits(acc_bits), dtype)
    assume(form is not None)
    int_form = form.int_form
    stored = acc.astype(storage).reshape(-1)
    expected = np.empty(acc.size, dtype=np.int32)
    expected_counts = requant_int.requantize_rows_int(
        stored, *int_form.coeffs, int_form.bias, *int_form.limits, expected
    )
    got = np.empty(acc.size, dtype=np.int32)
    counts = requant_checked.requantize_rows_checked(stored, *form.coeffs, form.bias, *form.limits, got)
    np.testing.assert_array_equal(got, expected)
    assert counts == expected_counts


@SETTINGS
@given(
    lhs_type=quantized_types(2, 9),
    rhs_type=quantized_types(2, 9),
    multipliers=st.tuples(st.integers(-(2**17), 2**17), st.integers(-(2**17), 2**17)),
    case=CASES,
    dtype=st.sampled_from(DTYPES),
    near_ties=st.booleans(),
)
def test_checked_add_requant_equals_int64_kernel(lhs_type, rhs_type, multipliers, case, dtype, near_ties) -> None:
    _, _, _, multiplier, shift, _, zero_point, clips, acc_bits = case
    rows, channels = 9, multiplier.size
    rng = np.random.default_rng(int(np.abs(multiplier).sum()) % 2**32)
    (_, lhs_zero), (_, rhs_zero) = lhs_type, rhs_type
    lhs, rhs, bound = add_operands(lhs_type, rhs_type, multipliers, (rows, channels), rng)
    value = (lhs - lhs_zero) * multipliers[0] + (rhs - rhs_zero) * multipliers[1]
    if near_ties:  # the scales that put row 0's sums next to halves
        multiplier, shift = near_tie_scales(value[0], rng)
    no_bias = np.zeros(channels, np.int64)
    form = checked_requant(multiplier, shift, no_bias, bound, zero_point, clips, _limits(acc_bits), dtype)
    assume(form is not None)
    int_form = form.int_form
    operands = (lhs.astype(np.int16).reshape(-1), rhs.reshape(-1))
    expected = np.empty(lhs.size, dtype=np.int64)
    int_alignment = add_alignment(int_form, (lhs_zero, rhs_zero), multipliers)
    expected_counts = requant_int.add_requantize_rows_int(
        *operands, *int_alignment, *int_form.coeffs, *int_form.limits, expected
    )
    got = np.empty(lhs.size, dtype=np.int64)
    alignment = add_alignment(form, (lhs_zero, rhs_zero), multipliers)
    counts = requant_checked.add_requantize_rows_checked(*operands, *alignment, *form.coeffs, *form.limits, got)
    np.testing.assert_array_equal(got, expected)
    assert counts == expected_counts


@SETTINGS
@given(
    first=CASES,
    second=CASES,
    dtypes=st.tuples(st.sampled_from(DTYPES), st.sampled_from(DTYPES)),
    other_type=quantized_types(2, 8),
    conv_side=st.integers(0, 1),
    seed=st.integers(0, 2**16),
    near_ties=st.booleans(),
)
def test_checked_residual_kernel_equals_int64_kernel(
    first, second, dtypes, other_type, conv_side, seed, near_ties
) -> None:
    """Both steps checked (in the same or different float types) against both in int64: ResidualStep's
    two forms, so the alignment handed to each kernel is the one ResidualStep gives it."""
    acc, storage, bias, multiplier, shift, bound, zero_point, clips, acc_bits = first
    acc = _with_ties(acc, bias, multiplier, shift, np.random.default_rng(seed))
    rows, channels = acc.shape
    add_multiplier, add_shift = second[3][:1].repeat(channels), second[4][:1].repeat(channels)
    (other_dtype, other_zero), multipliers = other_type, (-983, 65536) if conv_side else (65536, -983)  # own: 65536
    rng = np.random.default_rng(int(acc.sum()) % 2**32)
    other = rng.integers(other_dtype.min, other_dtype.max, size=(rows, channels), endpoint=True)
    own_range = max(abs(clips[0] - zero_point), abs(clips[1] - zero_point))
    add_bound = own_range * 65536 + max(abs(other_dtype.min - other_zero), abs(other_dtype.max - other_zero)) * 65536
    no_bias = np.zeros(channels, np.int64)
    first_form = checked_requant(multiplier, shift, bias, bound, zero_point, clips, _limits(acc_bits), dtypes[0])
    assume(first_form is not None)
    if near_ties:  # the add's scales that put row 0's exact sums next to halves: both steps then check out elements
        own = np.empty(acc.size, dtype=np.int64)
        int_form = first_form.int_form
        stored = acc.astype(storage).reshape(-1)
        requant_int.requantize_rows_int(stored, *int_form.coeffs, int_form.bias, *int_form.limits, own)
        own = own.reshape(rows, channels)
        pair = (own - zero_point, other - other_zero) if conv_side == 0 else (other - other_zero, own - zero_point)
        totals = pair[0][0] * multipliers[0] + pair[1][0] * multipliers[1]
        add_multiplier, add_shift = near_tie_scales(totals, rng)
    forms = (
        first_form,
        checked_requant(add_multiplier, add_shift, no_bias, add_bound, *second[6:8], _limits(second[8]), dtypes[1]),
    )
    assume(None not in forms)
    zeros = (zero_point, other_zero) if conv_side == 0 else (other_zero, zero_point)
    steps = []
    for form in forms, tuple(form.int_form for form in forms):
        conv_step = ChannelsLastStep(form[0], (channels,), np.int32)
        add_step = ChannelsLastStep(
            form[1], (channels,), np.int32, alignment=add_alignment(form[1], zeros, multipliers)
        )
        steps.append(ResidualStep.of(conv_step, add_step, "other", conv_side))
    stored = acc.astype(storage).reshape(-1)
    checked, exact = steps
    expected = np.empty(acc.size, dtype=np.int32)
    expected_counts = requant_int.residual_rows_int(
        stored, *exact.conv.form.coeffs, exact.conv.form.bias, *exact.conv.form.limits, other.reshape(-1),
        *exact.alignment, *exact.add.form.coeffs, *exact.add.form.limits, expected,
    )  # fmt: skip
    got = np.empty(acc.size, dtype=np.int32)
    counts = requant_checked.residual_rows_checked(
        stored, *checked.conv.form.coeffs, checked.conv.form.bias, *checked.conv.form.limits, other.reshape(-1),
        *checked.alignment, *checked.add.form.coeffs, *checked.add.form.limits, got,
    )  # fmt: skip
    np.testing.assert_array_equal(got, expected)
    assert counts == expected_counts


def test_checked_form_refuses_what_it_cannot_hold() -> None:
    """Values at float32's exact limit (float64 holds them), clips too wide, no int64 form: no checked form
    (``exact_requant`` then takes the next one)."""
    m, s, b, acc = np.array([2**30 + 1]), np.array([40]), np.zeros(1, np.int64), (-(2**31), 2**31 - 1)
    assert checked_requant(m, s, b, 2**24, 0, (-128, 127), acc, np.float32) is None
    assert checked_requant(m, s, b, 2**24, 0, (-128, 127), acc, np.float64) is not None
    assert checked_requant(m, s, b, 2**20, 0, (0, 2**21), acc) is None
    assert checked_requant(m, np.array([0]), b, 2**20, 0, (0, 255), acc) is None
    assert int_requant(m, np.array([0]), b, 2**20, 0, (0, 255), acc) is None
