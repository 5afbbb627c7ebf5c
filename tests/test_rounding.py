"""Round-half-to-even shift and divide against exact rational arithmetic."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qexport.reference.rounding import round_half_even_divide, round_half_even_shift

VALUE_BOUND = 2**40 - 1
values_int = st.integers(-VALUE_BOUND, VALUE_BOUND)
shifts = st.integers(-20, 40)


def oracle_shift(value: int, shift: int) -> int:
    """value * 2**-shift, ties to even (Python's round is half-to-even on Fractions)."""
    return round(Fraction(value) / Fraction(2) ** shift)


def oracle_divide(value: int, divisor: int) -> int:
    return round(Fraction(value, divisor))


def near_ties(shift_strategy):
    """Values that sit exactly on, or one off, a rounding tie for the drawn shift."""

    @st.composite
    def build(draw):
        shift = draw(shift_strategy)
        if shift <= 0:
            return draw(values_int), shift
        base = draw(st.integers(-(VALUE_BOUND >> shift), VALUE_BOUND >> shift))
        offset = draw(st.sampled_from([0, -1, 1])) + (1 << (shift - 1))
        value = max(-VALUE_BOUND, min(VALUE_BOUND, (base << shift) + offset))
        return value, shift

    return build()


@settings(max_examples=250, deadline=None)
@given(st.one_of(st.tuples(values_int, shifts), near_ties(shifts)))
def test_shift_scalar_matches_fraction_oracle(case):
    value, shift = case
    result = round_half_even_shift(np.int64(value), shift)
    assert int(result) == oracle_shift(value, shift)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_shift_array_with_scalar_shift(data):
    shift = data.draw(shifts)
    values = data.draw(hnp.arrays(np.int64, hnp.array_shapes(max_dims=3, max_side=5), elements=values_int))
    result = round_half_even_shift(values, shift)
    assert result.shape == values.shape
    expected = [oracle_shift(int(v), shift) for v in values.ravel()]
    assert result.ravel().tolist() == expected


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_shift_per_channel_broadcast(data):
    """A per-channel shift vector shaped (1, C, 1, ...) broadcasts over batch and space."""
    batch, channels = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 5))
    spatial = data.draw(st.lists(st.integers(1, 3), max_size=2))
    shape = (batch, channels, *spatial)
    values = data.draw(hnp.arrays(np.int64, shape, elements=values_int))
    shift_vector = data.draw(st.lists(shifts, min_size=channels, max_size=channels))
    shift = np.asarray(shift_vector, dtype=np.int64).reshape((1, channels) + (1,) * len(spatial))
    result = round_half_even_shift(values, shift)
    assert result.shape == shape
    for index in np.ndindex(*shape):
        assert int(result[index]) == oracle_shift(int(values[index]), shift_vector[index[1]]), index


@settings(max_examples=250, deadline=None)
@given(values_int, st.one_of(st.integers(1, 16), st.integers(1, 2**20)))
def test_divide_scalar_matches_fraction_oracle(value, divisor):
    assert int(round_half_even_divide(np.int64(value), divisor)) == oracle_divide(value, divisor)


@settings(max_examples=200, deadline=None)
@given(st.integers(-(2**20), 2**20), st.integers(1, 2**10), st.sampled_from([0, 1, -1]))
def test_divide_exact_ties(quotient, divisor, nudge):
    """value = (q + 1/2) * d (+-1) exercises the tie-breaking rule for even divisors."""
    divisor *= 2
    value = quotient * divisor + divisor // 2 + nudge
    assert int(round_half_even_divide(np.int64(value), divisor)) == oracle_divide(value, divisor)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_divide_broadcast_divisor_array(data):
    shape = data.draw(st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)))
    values = data.draw(hnp.arrays(np.int64, shape, elements=values_int))
    divisors = data.draw(hnp.arrays(np.int64, (1,) + shape[1:], elements=st.integers(1, 50)))
    result = round_half_even_divide(values, divisors)
    for index in np.ndindex(*shape):
        assert int(result[index]) == oracle_divide(int(values[index]), int(divisors[(0,) + index[1:]])), index


@settings(max_examples=250, deadline=None)
@given(
    st.one_of(
        st.tuples(st.integers(-(2**24) + 1, 2**24 - 1), shifts), near_ties(shifts).filter(lambda c: abs(c[0]) < 2**24)
    )
)
def test_power_of_two_shift_equals_onnx_quantize_linear(case):
    """For |v| < 2**24 the float32 QuantizeLinear rule rint(v / 2**s) is exact and must agree."""
    value, shift = case
    onnx = np.rint(np.float32(value) / np.float32(2.0**shift))
    assert int(round_half_even_shift(np.int64(value), shift)) == int(onnx)
