"""hwsim's fast channels-last path: oneDNN int8 convolutions and exact float requantization."""

from __future__ import annotations

import platform

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from irgen import add_operands, quantized_types
from modelgen import zoo_graph

from hwsim import float_conv, int8_conv, native_conv
from hwsim.channels_last import ChannelsLastStep, ResidualStep, add_alignment, float_requant
from hwsim.engine import Engine
from hwsim.exact import FLOAT32_EXACT
from hwsim.kernels import requant
from qexport.data import synthetic_images
from qexport.ir.dtypes import IntType
from qexport.quant.config import QuantConfig
from qexport.reference import quantize_input, run_graph
from qexport.reference.rounding import round_half_even_shift

needs_onednn = pytest.mark.skipif(
    not int8_conv.available(), reason="torch's oneDNN int8 convolution is missing or inexact on this machine"
)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def conv_cases(draw):
    """Small layers of every geometry class: groups (depthwise, one input channel per group), dilation,
    strides past the kernel, asymmetric padding and padding past the kernel (windows wholly in padding),
    signed and unsigned activations with any zero point."""
    groups = draw(st.sampled_from([1, 1, 2, 3, 8]))
    channels = groups * draw(st.integers(1, 4))
    out_channels = groups * draw(st.integers(1, 4))
    kernel = draw(st.integers(1, 3))
    dilation = draw(st.integers(1, 3))
    extent = (kernel - 1) * dilation + 1
    padding = tuple(draw(st.lists(st.integers(0, extent + 1), min_size=4, max_size=4)))
    if draw(st.booleans()):
        padding = (padding[0], padding[1], padding[0], padding[1])
    size = draw(st.integers(1, 7))
    assume(size + padding[0] + padding[2] >= extent and size + padding[1] + padding[3] >= extent)
    dtype, zero_point = draw(quantized_types(1, 8))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    low, high = draw(st.sampled_from([(-128, 127), (-8, 7), (-1, 1)]))
    weight = rng.integers(low, high, size=(out_channels, channels // groups, kernel, kernel), endpoint=True)
    x = rng.integers(dtype.min, dtype.max, size=(draw(st.integers(1, 3)), channels, size, size), endpoint=True)
    if draw(st.booleans()):  # the extremes, where a saturating 16-bit multiply-add would show
        weight = np.where(weight < 0, low, high)
        x = np.where(x > zero_point, dtype.max, dtype.min)
    stride = draw(st.integers(1, 4))
    return x, weight, dtype, zero_point, stride, padding, dilation, groups


def torch_reference(x, weight, zero_point, stride, padding, dilation, groups) -> np.ndarray:
    """float64 torch convolution of the centred input, padded explicitly with zeros -> int64 NHWC."""
    top, left, bottom, right = padding
    padded = np.pad(x.astype(np.int64) - zero_point, ((0, 0), (0, 0), (top, bottom), (left, right)))
    expected = torch.nn.functional.conv2d(
        torch.from_numpy(padded).double(),
        torch.from_numpy(weight).double(),
        stride=stride,
        dilation=dilation,
        groups=groups,
    )
    return expected.permute(0, 2, 3, 1).numpy().astype(np.int64)


@needs_onednn
@SETTINGS
@given(case=conv_cases())
def test_int8_convolution_equals_float64_convolution(case) -> None:
    x, weight, dtype, zero_point, stride, padding, dilation, groups = case
    conv = int8_conv.plan_int8_conv(
        weight, dtype.min, dtype.max, zero_point, (stride,) * 2, padding, (dilation,) * 2, groups, x.shape[2:]
    )
    assert conv is not None  # these layers are small: always provably exact, and every geometry passes its probe
    expected = torch_reference(x, weight, zero_point, stride, padding, dilation, groups)
    np.testing.assert_array_equal(conv(x.astype(np.int64)).astype(np.int64), expected)
    reference = int8_conv.reference_conv(x, weight, zero_point, (stride,) * 2, padding, (dilation,) * 2)
    np.testing.assert_array_equal(reference, expected)  # the probes' numpy reference agrees too


@needs_onednn
def test_windows_wholly_in_padding_read_the_zero_point() -> None:
    """The case oneDNN gets wrong on its own (one input channel per group, nonzero source zero point,
    padding past the kernel): outputs over padding only are 0, not stale memory."""
    rng = np.random.default_rng(0)
    for groups, out_channels in ((1, 1), (1, 4), (8, 16), (2, 4)):
        weight = rng.integers(-128, 128, (out_channels, 1, 3, 3))
        for zero_point in (-128, -3, 5):
            x = rng.integers(-128, 128, (2, groups, 4, 4))
            conv = int8_conv.plan_int8_conv(weight, -128, 127, zero_point, (1, 1), (3,) * 4, (1, 1), groups, (4, 4))
            assert conv is not None and conv.explicit_padding == (3,) * 4 and conv.padding == [0, 0]
            for _ in range(3):  # again and again, into whatever memory torch hands out
                got = conv(x).astype(np.int64)
                np.testing.assert_array_equal(got, torch_reference(x, weight, zero_point, 1, (3,) * 4, 1, groups))
                assert not got[:, 0].any() and not got[:, :, -1].any()  # rows/columns over padding only


@needs_onednn
def test_geometry_where_onednn_padding_crashes_is_padded_by_hwsim() -> None:
    """5x5, dilation 2, stride 2, padding 7 on a 1x1 input: oneDNN's own padding segfaults here."""
    rng = np.random.default_rng(1)
    weight = rng.integers(-128, 128, (4, 1, 5, 5))
    x = rng.integers(0, 256, (2, 1, 1, 1))
    conv = int8_conv.plan_int8_conv(weight, 0, 255, 7, (2, 2), (7,) * 4, (2, 2), 1, (1, 1))
    assert conv is not None and conv.padding == [0, 0]
    np.testing.assert_array_equal(conv(x).astype(np.int64), torch_reference(x, weight, 7, 2, (7,) * 4, 2, 1))


@given(
    size=st.integers(1, 9),
    kernel=st.integers(1, 4),
    stride=st.integers(1, 5),
    before=st.integers(0, 8),
    after=st.integers(0, 8),
    dilation=st.integers(1, 4),
)
def test_padding_only_windows_are_found(size, kernel, stride, before, after, dilation) -> None:
    """The planner's test for windows wholly in padding, against enumerating every window's taps."""
    outputs = int8_conv.output_size(size, kernel, stride, before, after, dilation)
    assume(outputs >= 1)
    padded = [False] * before + [True] * size + [False] * after
    reads = [[padded[o * stride + u * dilation] for u in range(kernel)] for o in range(outputs)]
    expected = any(not any(window) for window in reads)
    assert int8_conv.has_padding_only_window(size, kernel, stride, before, after, dilation) == expected


needs_float_conv = pytest.mark.skipif(
    not float_conv.available(), reason="torch's float convolutions are not exact on integer data on this machine"
)


@needs_float_conv
@SETTINGS
@given(case=conv_cases(), terms=st.integers(1, 3))
def test_float_convolution_of_stacked_terms_equals_integer_convolution(case, terms) -> None:
    x, weight, dtype, zero_point, stride, pads, dilation, groups = case
    assume(terms == 1 or groups == 1)
    rng = np.random.default_rng(int(weight.sum()) % 2**32)
    values = np.arange(dtype.min, dtype.max + 1)
    tables = [values - zero_point] + [rng.integers(-300, 300, size=values.size) for _ in range(terms - 1)]
    for table in tables:
        table[zero_point - dtype.min] = 0  # padding reads the zero point, worth 0 in every term
    coeffs = [weight.reshape(weight.shape[0], -1)] + [
        rng.integers(-3, 4, size=(weight.shape[0], weight[0].size)) for _ in range(terms - 1)
    ]
    top, left, bottom, right = pads
    planned = float_conv.plan_float_conv(
        list(zip(tables, coeffs, strict=True)),
        weight.shape,
        dtype.min,
        zero_point,
        (stride,) * 2,
        pads,
        (dilation,) * 2,
        groups,
        x.shape[2:],
    )
    assert planned is not None
    conv, bound = planned
    expected = 0
    for table, coeff in zip(tables, coeffs, strict=True):
        mapped = np.pad(table[x - dtype.min], ((0, 0), (0, 0), (top, bottom), (left, right)))
        expected = expected + torch.nn.functional.conv2d(
            torch.from_numpy(mapped).double(),
            torch.from_numpy(coeff.reshape(weight.shape)).double(),
            stride=stride,
            dilation=dilation,
            groups=groups,
        )
    expected = expected.permute(0, 2, 3, 1).numpy().astype(np.int64)
    got = conv(x.astype(np.int16))
    np.testing.assert_array_equal(got.astype(np.int64), expected)
    assert np.abs(expected).max(initial=0) <= bound


def test_int8_convolution_refuses_what_it_cannot_do_exactly() -> None:
    weight = np.ones((2, 2, 3, 3), dtype=np.int64)
    args = ((1, 1), (1, 1, 1, 1), (1, 1), 1, (6, 6))
    assert int8_conv.plan_int8_conv(weight * 200, 0, 255, 0, *args) is None  # weights past int8
    assert int8_conv.plan_int8_conv(weight, 0, 511, 0, *args) is None  # activations span 512 values
    assert int8_conv.plan_int8_conv(weight, -128, 127, 200, *args) is None  # zero point outside uint8 when shifted
    wide = np.full((1, 512, 3, 3), 127)
    assert int8_conv.plan_int8_conv(wide, 0, 255, 0, *args) is None  # 4608 * 127 * 255 >= 2**24


@st.composite
def requant_cases(draw):
    channels = draw(st.integers(1, 20))
    rows = draw(st.integers(1, 40))
    wide = draw(st.booleans())  # float64 (large multipliers) or float32 forms
    multiplier = np.array(draw(st.lists(st.integers(1, 2**20 if wide else 2**6), min_size=channels, max_size=channels)))
    shift = np.array(draw(st.lists(st.integers(-3, 24), min_size=channels, max_size=channels)))
    bound = draw(st.integers(1, 2**24))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    bias = rng.integers(-bound // 4, bound // 4, size=channels, endpoint=True)
    acc = rng.integers(-(bound - bound // 4), bound - bound // 4, size=(rows, channels), endpoint=True)
    halves = (np.int64(1) << np.maximum(shift - 1, 0)) * rng.integers(-64, 64, size=(rows, channels))
    acc = np.where(rng.random((rows, channels)) < 0.3, np.clip(halves - bias, acc.min(), acc.max()), acc)  # ties
    zero_point = draw(st.integers(-200, 200))
    clip_min = draw(st.integers(-300, 300))
    clip_max = draw(st.integers(clip_min, 400))
    acc_bits = draw(st.integers(8, 26))
    return acc, bias, multiplier, shift, bound, zero_point, (clip_min, clip_max), acc_bits


def _integer_requant(value, multiplier, shift, zero_point, clips, acc_bits):
    """The IR rule on int64 (qexport's reference rounding), and the counters hwsim reports."""
    q = round_half_even_shift(value * multiplier, shift) + zero_point
    low, high = clips
    saturations = int(((q > high) | ((q < low) & (low < zero_point))).sum())
    overflows = int(((value < -(2 ** (acc_bits - 1))) | (value >= 2 ** (acc_bits - 1))).sum())
    return np.clip(q, low, high), saturations, overflows


@SETTINGS
@given(case=requant_cases(), out_type=st.sampled_from([np.int16, np.int32, np.int64]))
def test_float_requant_equals_integer_rule(case, out_type) -> None:
    acc, bias, multiplier, shift, bound, zero_point, clips, acc_bits = case
    acc_limits = (-(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1) - 1)
    form = float_requant(multiplier, shift, bias, bound, zero_point, clips, acc_limits)
    assume(form is not None)
    expected, saturations, overflows = _integer_requant(acc + bias, multiplier, shift, zero_point, clips, acc_bits)
    stored = acc.astype(np.float32 if bound < FLOAT32_EXACT else np.float64)  # as oneDNN hands it over
    out = np.empty(acc.shape, dtype=out_type)
    counts = requant.requantize_rows_float(stored.reshape(-1), form.scale, form.bias, *form.limits, out.reshape(-1))
    np.testing.assert_array_equal(out, expected)
    assert counts[0] == saturations
    assert counts[1] == (overflows if form.limits[-1] else 0)
    if not form.limits[-1]:
        assert overflows == 0  # skipping the check is a proof, not a guess


@SETTINGS
@given(
    lhs_type=quantized_types(2, 9),
    rhs_type=quantized_types(2, 9),
    multipliers=st.tuples(st.integers(-64, 64), st.integers(-64, 64)),
    case=requant_cases(),
)
def test_float_add_requant_equals_integer_rule(lhs_type, rhs_type, multipliers, case) -> None:
    _, _, multiplier, shift, _, zero_point, clips, acc_bits = case
    rows, channels = 7, multiplier.size
    rng = np.random.default_rng(int(multiplier.sum()))
    (_, lhs_zero), (_, rhs_zero) = lhs_type, rhs_type
    lhs, rhs, bound = add_operands(lhs_type, rhs_type, multipliers, (rows, channels), rng)
    acc_limits = (-(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1) - 1)
    form = float_requant(multiplier, shift, np.zeros(channels, np.int64), bound, zero_point, clips, acc_limits)
    assume(form is not None)
    value = (lhs - lhs_zero) * multipliers[0] + (rhs - rhs_zero) * multipliers[1]
    expected, saturations, overflows = _integer_requant(value, multiplier, shift, zero_point, clips, acc_bits)
    out = np.empty((rows, channels), dtype=np.int64)
    alignment = add_alignment(form, (lhs_zero, rhs_zero), multipliers)
    counts = requant.add_requantize_rows_float(
        lhs.astype(np.int16).reshape(-1), rhs.reshape(-1), *alignment, form.scale, *form.limits, out.reshape(-1)
    )
    np.testing.assert_array_equal(out, expected)
    assert counts == (saturations, overflows if form.limits[-1] else 0)


@SETTINGS
@given(first=requant_cases(), second=requant_cases(), other_type=quantized_types(2, 8), conv_side=st.integers(0, 1))
def test_residual_kernel_equals_requant_then_add(first, second, other_type, conv_side) -> None:
    acc, bias, multiplier, shift, bound, zero_point, clips, acc_bits = first
    rows, channels = acc.shape
    own_type = IntType.for_range(min(clips[0], 0), max(clips[1], 1))
    add_multiplier, add_shift = second[2][:1].repeat(channels), second[3][:1].repeat(channels)
    (other_dtype, other_zero), multipliers = other_type, (3, -2) if conv_side else (-2, 3)
    rng = np.random.default_rng(int(acc.sum()) % 2**32)
    other = rng.integers(other_dtype.min, other_dtype.max, size=(rows, channels), endpoint=True)
    acc_limits = (-(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1) - 1)
    form = float_requant(multiplier, shift, bias, bound, zero_point, clips, acc_limits)
    add_bound = max(abs(own_type.min - zero_point), abs(own_type.max - zero_point)) * 3
    add_bound += max(abs(other_dtype.min - other_zero), abs(other_dtype.max - other_zero)) * 3
    no_bias = np.zeros(channels, np.int64)
    add_form = float_requant(add_multiplier, add_shift, no_bias, add_bound, *second[5:7], acc_limits)
    assume(form is not None and add_form is not None)
    stored = acc.astype(np.float32 if bound < FLOAT32_EXACT else np.float64).reshape(-1)
    own = np.empty(acc.size, dtype=np.int32)
    first_counts = requant.requantize_rows_float(stored, form.scale, form.bias, *form.limits, own)
    zeros = (zero_point, other_zero) if conv_side == 0 else (other_zero, zero_point)
    operands = (own, other.reshape(-1)) if conv_side == 0 else (other.reshape(-1), own)
    expected = np.empty(acc.size, dtype=np.int32)
    alignment = add_alignment(add_form, zeros, multipliers)
    add_counts = requant.add_requantize_rows_float(*operands, *alignment, add_form.scale, *add_form.limits, expected)
    conv_step = ChannelsLastStep(form, (channels,), np.int32, conv=None)
    add_step = ChannelsLastStep(add_form, (channels,), np.int32, alignment=alignment)
    step = ResidualStep.of(conv_step, add_step, "other", conv_side)
    got = np.empty(acc.size, dtype=np.int32)
    counts = requant.residual_rows_float(
        stored, form.scale, form.bias, *form.limits, other.reshape(-1), *step.alignment,
        add_form.scale, *add_form.limits, got,
    )  # fmt: skip
    np.testing.assert_array_equal(got, expected)
    assert counts == (*first_counts, *add_counts)


def test_float_requant_declines_inexact_products() -> None:
    assert float_requant(np.array([2**30]), np.array([40]), np.zeros(1), 2**24, 0, (0, 255), (-(2**31), 2**31)) is None
    form = float_requant(np.array([2**10]), np.array([12]), np.zeros(1), 2**12, 0, (0, 255), (-(2**31), 2**31))
    assert form.scale.dtype == np.float32  # 2**12 * 2**10 < 2**24
    wide = float_requant(np.array([2**10]), np.array([12]), np.zeros(1), 2**20, 0, (0, 255), (-(2**31), 2**31))
    assert wide.scale.dtype == np.float64


@needs_onednn
@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
@pytest.mark.parametrize("pow2", [True, False])
def test_networks_on_the_int8_path_equal_reference(name: str, bits: int, pow2: bool) -> None:
    _, graph, calibration = zoo_graph(name, QuantConfig(pow2_scales=pow2, weight_bits=bits, act_bits=bits))
    inputs = synthetic_images(tuple(calibration.shape[1:]), 3, seed=5)
    feeds = {graph.inputs[0]: quantize_input(graph.tensors[graph.inputs[0]], inputs)}
    engine = Engine(graph)
    assert sum(isinstance(plan.conv, int8_conv.Int8Conv) for plan in engine.plans.values()) == len(engine.plans) - 1
    # residual adds fuse too, mostly into the convolution before them: in float32 where exact (powers of two),
    # else checked float (LSQ's free scales: 31-bit multipliers, and adds aligned with 2**16-sized multipliers)
    assert any(step.conv is None for step in engine.channels_last.values())
    # the first layer (small K) and MobileNetV2's 1x1 and depthwise layers run on hwsim's C kernels, their
    # residual adds fused into the kernel; ResNet-20's 3x3 layers stay on oneDNN with fused residual passes
    native = [step for step in engine.channels_last.values() if step.native is not None]
    if native_conv.available():
        assert native
        assert any(step.native.depthwise for step in native) == (name == "mobilenetv2")
    # with free scales MobileNetV2's adds align two LSQ scales with ~2**16 multipliers: past float32's
    # bound, so the C kernels fuse them with the int64 rule
    assert engine.residuals
    assert {step.form.kind for step in engine.channels_last.values()} == ({"float"} if pow2 else {"checked"})
    assert len(set(engine._slots.values())) <= 6 < len(engine._slots)  # outputs share a few arrays
    outputs, counts = engine.run(feeds)
    expected = run_graph(graph, feeds)[graph.outputs[0]]
    np.testing.assert_array_equal(outputs[graph.outputs[0]], expected)
    again, _ = engine.run({name: values[:2] for name, values in feeds.items()})  # shared arrays, new shapes
    np.testing.assert_array_equal(again[graph.outputs[0]], expected[:2])
    blas_outputs, blas_counts = Engine(graph, conv="blas").run(feeds)
    np.testing.assert_array_equal(blas_outputs[graph.outputs[0]], expected)
    assert [c.to_dict() for c in counts] == [c.to_dict() for c in blas_counts]  # the same counters either way


def test_malloc_thresholds_respect_the_users_settings(monkeypatch) -> None:
    from hwsim import memory

    memory.retain_freed_memory.cache_clear()
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert memory.retain_freed_memory() is False  # the user's glibc settings win
    memory.retain_freed_memory.cache_clear()
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    assert memory.retain_freed_memory() is (platform.libc_ver()[0] == "glibc")
