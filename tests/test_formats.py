"""Every weight number format: valid weights pass ``check``, ``terms`` give the exact product,
``real_values`` match the documented value, and malformed weights are rejected by name."""

from __future__ import annotations

import copy

import irgen
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qexport.errors import GraphError
from qexport.formats import FORMATS, get_format
from qexport.ir.graph import Weight

SHAPES = st.one_of(
    st.tuples(st.integers(1, 4), st.integers(1, 6)),
    st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 2), st.integers(1, 2)),
)


def test_registry_lists_the_five_formats():
    assert set(FORMATS) == set(irgen.FORMAT_NAMES)
    for name, module in FORMATS.items():
        assert module.name == name
        assert module.linear is (name != "post")
    with pytest.raises(GraphError, match="nosuchformat"):
        get_format("nosuchformat")


@st.composite
def format_cases(draw, fmt: str, zero_channel: bool | None = None):
    shape = draw(SHAPES)
    weight = draw(irgen.weights(fmt, shape, draw(irgen.names("w_")), zero_channel=zero_channel))
    dtype, zero_point = draw(irgen.quantized_types(1, 8))
    return weight, dtype.min - zero_point, dtype.max - zero_point


def summed_terms(weight: Weight, x_min: int, x_max: int) -> np.ndarray:
    """sum_t table[x - x_min] * coeff[w] as exact Python integers, shape (#x, #weights)."""
    total = np.zeros((x_max - x_min + 1, int(np.prod(weight.shape))), dtype=object)
    for term in get_format(weight.format).terms(weight, x_min, x_max):
        assert term.table.shape == (x_max - x_min + 1,)
        assert np.issubdtype(term.table.dtype, np.integer) and np.issubdtype(term.coeff.dtype, np.integer)
        assert term.coeff.shape == weight.shape
        total = total + np.outer(term.table.astype(object), term.coeff.reshape(-1).astype(object))
    return total


def oracle_products(weight: Weight, x_min: int, x_max: int) -> np.ndarray:
    expected = np.zeros((x_max - x_min + 1, int(np.prod(weight.shape))), dtype=object)
    for flat, index in enumerate(irgen.indices(weight.shape)):
        if weight.format == "post":
            for row, x in enumerate(range(x_min, x_max + 1)):
                expected[row, flat] = irgen.weight_product(weight, index, x)
        else:
            integer = irgen.integer_weight(weight, index)
            expected[:, flat] = [x * integer for x in range(x_min, x_max + 1)]
    return expected


@pytest.mark.parametrize("fmt", irgen.FORMAT_NAMES)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_terms_reproduce_exact_product(fmt, data):
    weight, x_min, x_max = data.draw(format_cases(fmt))
    get_format(fmt).check(weight)
    got = summed_terms(weight, x_min, x_max)
    expected = oracle_products(weight, x_min, x_max)
    mismatch = np.argwhere(got != expected)
    assert mismatch.size == 0, f"first mismatch (x index, weight index): {mismatch[:3].tolist()}"


@pytest.mark.parametrize("fmt", irgen.FORMAT_NAMES)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_real_values_match_definition(fmt, data):
    weight, _, _ = data.draw(format_cases(fmt))
    module = get_format(fmt)
    module.check(weight)
    real = module.real_values(weight)
    assert real.shape == weight.shape
    for index in irgen.indices(weight.shape):
        expected = irgen.real_weight(weight, index)
        assert abs(float(real[index]) - expected) <= 1e-12 * abs(expected), (index, real[index], expected)


@pytest.mark.parametrize("fmt", irgen.FORMAT_NAMES)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_grid_scale_ties_products_to_real_values(fmt, data):
    """Accumulators are in units of input_scale * grid_scale[c]: product * grid ~ x * real weight."""
    weight, x_min, x_max = data.draw(format_cases(fmt))
    module = get_format(fmt)
    grid = module.grid_scale(weight)
    assert grid.shape == (weight.shape[0],) and np.all(grid > 0)
    x = data.draw(st.integers(x_min, x_max))
    for index in irgen.indices(weight.shape):
        real = irgen.real_weight(weight, index)
        product = irgen.weight_product(weight, index, x)
        if module.linear:
            assert abs(product * grid[index[0]] - x * real) <= 1e-12 * abs(x * real)
        else:  # post rounds the product to the nearest grid step
            assert abs(product - x * real / grid[index[0]]) <= 0.5 + 1e-9 * (1 + abs(product))


@pytest.mark.parametrize("fmt", irgen.FORMAT_NAMES)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_all_zero_channel(fmt, data):
    """An output channel whose weights are all zero contributes nothing, for every activation."""
    weight, x_min, x_max = data.draw(format_cases(fmt, zero_channel=False))
    channel = data.draw(st.integers(0, weight.shape[0] - 1))
    irgen.make_channel_zero(weight.arrays, weight.attrs, fmt, channel)
    module = get_format(fmt)
    module.check(weight)
    got = summed_terms(weight, x_min, x_max).reshape(x_max - x_min + 1, *weight.shape)
    assert np.all(got[:, channel] == 0)
    assert np.all(module.real_values(weight)[channel] == 0)
    assert np.array_equal(got.reshape(got.shape[0], -1), oracle_products(weight, x_min, x_max))


def test_post_all_signs_zero_has_no_terms():
    weight = Weight(
        "w_zero",
        "post",
        (2, 3),
        {"sign": np.zeros((2, 3), np.int8), "exponent": np.ones((2, 3), np.int8)},
        {"scale": 1.0, "max_exponent": 3, "lut_frac_bits": 2},
    )
    FORMATS["post"].check(weight)
    assert FORMATS["post"].terms(weight, -8, 7) == []


# ---------------------------------------------------------------------------------------------
# rejection of malformed weights


def _set(weight: Weight, field: str, flat: int, value: int) -> None:
    array = weight.arrays[field].astype(np.int64)
    array.reshape(-1)[flat % array.size] = value
    weight.arrays[field] = array


def corruptions(fmt: str) -> list[str]:
    kinds = ["missing_array", "array_shape", "scale_entries"]
    if fmt in irgen.SIGN_FORMATS:
        kinds += ["sign", "exponent_high", "exponent_low", "max_exponent"]
    if fmt == "post":
        kinds += ["lut_frac_bits_small", "lut_frac_bits_large"]
    if fmt == "codebook":
        kinds += ["index_high", "index_negative", "levels_rows"]
    if fmt == "int_affine":
        kinds += ["value_high", "value_low", "zero_point", "dtype_missing", "dtype_bad"]
    return kinds


@st.composite
def corrupted_weights(draw, fmt: str):
    weight, _, _ = draw(format_cases(fmt, zero_channel=False))
    weight = copy.deepcopy(weight)
    kind = draw(st.sampled_from(corruptions(fmt)))
    flat = draw(st.integers(0, 10_000))
    step = draw(st.integers(1, 50))
    attrs, arrays = weight.attrs, weight.arrays
    first = {"int_affine": "values", "codebook": "indices"}.get(fmt, "sign")
    if kind == "missing_array":
        del arrays[draw(st.sampled_from(sorted(set(arrays) - {"levels"})))]
    elif kind == "array_shape":
        arrays[first] = np.concatenate([arrays[first], arrays[first]], axis=0)
    elif kind == "scale_entries":
        attrs["scale"] = [1.0] * (weight.shape[0] + step)
    elif kind == "sign":
        _set(weight, "sign", flat, draw(st.sampled_from([2, -2, 3, 7, -100])))
    elif kind == "exponent_high":
        _set(weight, "exponent", flat, attrs["max_exponent"] + step)
    elif kind == "exponent_low":
        _set(weight, "exponent", flat, (-1 if fmt == "apot" else 0) - step)
    elif kind == "max_exponent":
        attrs["max_exponent"] = draw(st.sampled_from([-step, (40 if fmt == "post" else 30) + step]))
        if fmt == "post":
            attrs["lut_frac_bits"] = 24
    elif kind == "lut_frac_bits_small":
        attrs["max_exponent"] = max(attrs["max_exponent"], 1)
        attrs["lut_frac_bits"] = draw(st.integers(-5, (attrs["max_exponent"] + 1) // 2 - 1))
    elif kind == "lut_frac_bits_large":
        attrs["lut_frac_bits"] = 24 + step
    elif kind == "index_high":
        _set(weight, "indices", flat, arrays["levels"].shape[-1] + step - 1)
    elif kind == "index_negative":
        _set(weight, "indices", flat, -step)
    elif kind == "levels_rows":
        arrays["levels"] = np.zeros((weight.shape[0] + step, 3), np.int64)
    elif kind in ("value_high", "value_low"):
        dtype = irgen.IntType.parse(attrs["dtype"])
        _set(weight, "values", flat, dtype.max + step if kind == "value_high" else dtype.min - step)
    elif kind == "zero_point":
        dtype = irgen.IntType.parse(attrs["dtype"])
        bad = draw(st.sampled_from([dtype.max + step, dtype.min - step]))
        zero_point = attrs["zero_point"]
        if isinstance(zero_point, list):
            zero_point[flat % len(zero_point)] = bad
        else:
            attrs["zero_point"] = bad
    elif kind == "dtype_missing":
        del attrs["dtype"]
    elif kind == "dtype_bad":
        attrs["dtype"] = draw(st.sampled_from(["INT0", "INT33", "int8", "FLOAT", "", 8, None]))
    return weight, kind


@pytest.mark.parametrize("fmt", irgen.FORMAT_NAMES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_malformed_weight_rejected_by_name(fmt, data):
    weight, kind = data.draw(corrupted_weights(fmt))
    with pytest.raises(GraphError) as error:
        get_format(fmt).check(weight)
    assert repr(weight.name) in str(error.value), (kind, str(error.value))
