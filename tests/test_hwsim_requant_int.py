"""hwsim's int64 channels-last requantize kernels (free scales) against qexport's integer rule, the forms
that choose between them and the float kernels, and the engine's batch slices against one thread."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from irgen import add_operands, cnn_graphs, quantized_types

from hwsim.channels_last import ChannelsLastStep, ResidualStep, add_alignment, exact_requant, int_requant
from hwsim.engine import Engine
from hwsim.kernels import requant_int
from qexport.ir.dtypes import IntType
from qexport.reference import run_graph
from qexport.reference.rounding import round_half_even_shift

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ACC_STORAGE = (np.float32, np.int32, np.int64)  # oneDNN's float32 accumulators, or integers


@st.composite
def int_cases(draw):
    """LSQ-like requantizations: multipliers up to 2**31, shifts 1..62, accumulators up to 2**24 (2**30
    stored as integers), ties (exact halves) forced often."""
    channels = draw(st.integers(1, 20))
    rows = draw(st.integers(1, 40))
    storage = draw(st.sampled_from(ACC_STORAGE))
    bound = draw(st.integers(1, 2**24 if storage is np.float32 else 2**30))
    multiplier = np.array(draw(st.lists(st.integers(-(2**31), 2**31), min_size=channels, max_size=channels)))
    shift = np.array(draw(st.lists(st.integers(1, 62), min_size=channels, max_size=channels)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    bias = rng.integers(-bound // 4, bound // 4, size=channels, endpoint=True)
    acc = rng.integers(-(bound - bound // 4), bound - bound // 4, size=(rows, channels), endpoint=True)
    if draw(st.booleans()):  # outputs near the clip range: shifts that keep value * multiplier / 2**shift small
        shift = np.clip(np.ceil(np.log2(np.abs(multiplier) * bound + 1)).astype(np.int64) - 8, 1, 62)
    zero_point = draw(st.integers(-200, 200))
    clip_min = draw(st.integers(-300, 300))
    clip_max = draw(st.integers(clip_min, 400))
    acc_bits = draw(st.integers(8, 32))
    return acc, storage, bias, multiplier, shift, bound, zero_point, (clip_min, clip_max), acc_bits


def _with_ties(acc, bias, multiplier, shift, rng):
    """Replace some accumulators by values whose product lands exactly on a half (where one exists)."""
    rows, _ = acc.shape
    odd = np.abs(multiplier) % 2 == 1
    halves = np.where(odd, np.int64(1) << np.minimum(shift - 1, 30), 0) * rng.choice([-3, -1, 1, 3], size=acc.shape)
    tie = (rng.random(acc.shape) < 0.3) & (halves != 0)
    return np.where(tie, np.clip(halves - bias, acc.min(), acc.max()), acc)


def _integer_requant(value, multiplier, shift, zero_point, clips, acc_bits):
    """The IR rule on int64 (qexport's reference rounding), and the counters hwsim reports."""
    q = round_half_even_shift(value * multiplier, shift) + zero_point
    low, high = clips
    saturations = int(((q > high) | ((q < low) & (low < zero_point))).sum())
    overflows = int(((value < -(2 ** (acc_bits - 1))) | (value >= 2 ** (acc_bits - 1))).sum())
    return np.clip(q, low, high), saturations, overflows


def _limits(acc_bits: int) -> tuple[int, int]:
    return -(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1) - 1


@SETTINGS
@given(case=int_cases(), out_type=st.sampled_from([np.int16, np.int32, np.int64]), seed=st.integers(0, 2**16))
def test_int_requant_equals_integer_rule(case, out_type, seed) -> None:
    acc, storage, bias, multiplier, shift, bound, zero_point, clips, acc_bits = case
    acc = _with_ties(acc, bias, multiplier, shift, np.random.default_rng(seed))
    form = int_requant(multiplier, shift, bias, bound, zero_point, clips, _limits(acc_bits))
    assume(form is not None)
    expected, saturations, overflows = _integer_requant(acc + bias, multiplier, shift, zero_point, clips, acc_bits)
    out = np.empty(acc.shape, dtype=out_type)
    stored = acc.astype(storage).reshape(-1)
    counts = requant_int.requantize_rows_int(stored, *form.coeffs, form.bias, *form.limits, out.reshape(-1))
    np.testing.assert_array_equal(out, expected)
    assert counts == (saturations, overflows if form.limits[-1] else 0)
    if not form.limits[-1]:
        assert overflows == 0  # skipping the check is a proof, not a guess


@SETTINGS
@given(
    lhs_type=quantized_types(2, 9),
    rhs_type=quantized_types(2, 9),
    multipliers=st.tuples(st.integers(-(2**17), 2**17), st.integers(-(2**17), 2**17)),
    case=int_cases(),
)
def test_int_add_requant_equals_integer_rule(lhs_type, rhs_type, multipliers, case) -> None:
    _, _, _, multiplier, shift, _, zero_point, clips, acc_bits = case
    rows, channels = 9, multiplier.size
    rng = np.random.default_rng(int(np.abs(multiplier).sum()) % 2**32)
    (_, lhs_zero), (_, rhs_zero) = lhs_type, rhs_type
    lhs, rhs, bound = add_operands(lhs_type, rhs_type, multipliers, (rows, channels), rng)
    form = int_requant(multiplier, shift, np.zeros(channels, np.int64), bound, zero_point, clips, _limits(acc_bits))
    assume(form is not None)
    value = (lhs - lhs_zero) * multipliers[0] + (rhs - rhs_zero) * multipliers[1]
    expected, saturations, overflows = _integer_requant(value, multiplier, shift, zero_point, clips, acc_bits)
    out = np.empty((rows, channels), dtype=np.int64)
    alignment = add_alignment(form, (lhs_zero, rhs_zero), multipliers)
    counts = requant_int.add_requantize_rows_int(
        lhs.astype(np.int16).reshape(-1), rhs.reshape(-1), *alignment, *form.coeffs, *form.limits, out.reshape(-1)
    )
    np.testing.assert_array_equal(out, expected)
    assert counts == (saturations, overflows if form.limits[-1] else 0)


@SETTINGS
@given(first=int_cases(), second=int_cases(), other_type=quantized_types(2, 8), conv_side=st.integers(0, 1))
def test_int_residual_kernel_equals_requant_then_add(first, second, other_type, conv_side) -> None:
    acc, storage, bias, multiplier, shift, bound, zero_point, clips, acc_bits = first
    rows, channels = acc.shape
    own_type = IntType.for_range(min(clips[0], 0), max(clips[1], 1))
    add_multiplier, add_shift = second[3][:1].repeat(channels), second[4][:1].repeat(channels)
    (other_dtype, other_zero), multipliers = other_type, (65536, -98317) if conv_side else (-98317, 65536)
    rng = np.random.default_rng(int(acc.sum()) % 2**32)
    other = rng.integers(other_dtype.min, other_dtype.max, size=(rows, channels), endpoint=True)
    form = int_requant(multiplier, shift, bias, bound, zero_point, clips, _limits(acc_bits))
    add_bound = max(abs(own_type.min - zero_point), abs(own_type.max - zero_point)) * 98317
    add_bound += max(abs(other_dtype.min - other_zero), abs(other_dtype.max - other_zero)) * 98317
    no_bias = np.zeros(channels, np.int64)
    add_form = int_requant(add_multiplier, add_shift, no_bias, add_bound, *second[6:8], _limits(second[8]))
    assume(form is not None and add_form is not None)
    stored = acc.astype(storage).reshape(-1)
    own = np.empty(acc.size, dtype=np.int32)
    first_counts = requant_int.requantize_rows_int(stored, *form.coeffs, form.bias, *form.limits, own)
    zeros = (zero_point, other_zero) if conv_side == 0 else (other_zero, zero_point)
    operands = (own, other.reshape(-1)) if conv_side == 0 else (other.reshape(-1), own)
    expected = np.empty(acc.size, dtype=np.int32)
    alignment = add_alignment(add_form, zeros, multipliers)
    add_counts = requant_int.add_requantize_rows_int(
        *operands, *alignment, *add_form.coeffs, *add_form.limits, expected
    )
    conv_step = ChannelsLastStep(form, (channels,), np.int32, conv=None)
    add_step = ChannelsLastStep(add_form, (channels,), np.int32, alignment=alignment)
    step = ResidualStep.of(conv_step, add_step, "other", conv_side)
    got = np.empty(acc.size, dtype=np.int32)
    counts = requant_int.residual_rows_int(
        stored, *form.coeffs, form.bias, *form.limits, other.reshape(-1), *step.alignment,
        *add_form.coeffs, *add_form.limits, got,
    )  # fmt: skip
    np.testing.assert_array_equal(got, expected)
    assert counts == (*first_counts, *add_counts)


def test_forms_prefer_float_and_fall_back_to_int64() -> None:
    limits = (-(2**31), 2**31 - 1)
    pow2 = exact_requant(np.array([1]), np.array([9]), np.zeros(1), 2**20, 0, (0, 255), limits)
    assert pow2.kind == "float"
    free = exact_requant(np.array([2**30 + 7]), np.array([40]), np.zeros(1), 2**23, 0, (0, 255), limits)
    assert (free.kind, free.dtype) == ("checked", np.float32)
    free = exact_requant(np.array([2**30 + 7]), np.array([40]), np.zeros(1), 2**24, 0, (0, 255), limits)
    assert (free.kind, free.dtype) == ("checked", np.float64)  # values past float32's exact integers
    wide = exact_requant(np.array([2**30 + 7]), np.array([40]), np.zeros(1), 2**24, 0, (0, 2**22), limits)
    assert wide.kind == "int"  # clip limits past the checked forms' 2**21
    assert int_requant(np.array([3]), np.array([0]), np.zeros(1), 2**20, 0, (0, 255), limits) is None  # shift 0
    assert int_requant(np.array([2**31]), np.array([40]), np.zeros(1), 2**33, 0, (0, 255), limits) is None  # 2**64


def test_residual_step_of_mixed_forms_runs_both_in_int64() -> None:
    limits = (-(2**31), 2**31 - 1)
    args = (np.array([1, 3]), np.array([4, 5]), np.zeros(2), 2**12, 0, (0, 255), limits)
    float_form, int_form = exact_requant(*args), int_requant(*args)
    add_form = exact_requant(np.array([2**30 + 1] * 2), np.array([47] * 2), np.zeros(2), 2**26, 0, (0, 2**22), limits)
    assert (float_form.kind, add_form.kind) == ("float", "int")
    alignment = add_alignment(add_form, (0, 0), (65536, 98317))
    add_step = ChannelsLastStep(add_form, (2,), np.uint8, alignment=alignment)
    without = ChannelsLastStep(float_form, (2,), np.uint8, conv=None)
    assert ResidualStep.of(without, add_step, "other", 0) is None  # no int64 form to switch to
    with_int = ChannelsLastStep(float_form, (2,), np.uint8, conv=None, int_form=int_form)
    step = ResidualStep.of(with_int, add_step, "other", 1)
    assert step.conv.form is int_form and step.add.form is add_form
    assert step.alignment == (np.int64(0), np.int64(0), np.int64(98317), np.int64(65536))


def test_residual_step_of_float_and_checked_forms_runs_both_checked() -> None:
    limits = (-(2**31), 2**31 - 1)
    args = (np.array([1, 3]), np.array([4, 5]), np.zeros(2), 2**12, 0, (0, 255), limits)
    float_form, int_form = exact_requant(*args), int_requant(*args)
    add_form = exact_requant(np.array([2**30 + 1] * 2), np.array([47] * 2), np.zeros(2), 2**26, 0, (0, 255), limits)
    assert (float_form.kind, add_form.kind) == ("float", "checked")
    alignment = add_alignment(add_form, (0, 0), (65536, 98317))
    add_step = ChannelsLastStep(add_form, (2,), np.uint8, alignment=alignment)
    assert ResidualStep.of(ChannelsLastStep(float_form, (2,), np.uint8), add_step, "other", 0) is None  # no int64
    with_int = ChannelsLastStep(float_form, (2,), np.uint8, int_form=int_form)
    step = ResidualStep.of(with_int, add_step, "other", 1)
    assert step.conv.form.kind == "checked" and step.add.form is add_form
    np.testing.assert_array_equal(step.conv.form.scale, float_form.scale)  # the exact float scale, error 0
    assert step.conv.form.limits[7] == 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=cnn_graphs(), seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 7))
def test_batch_slices_equal_one_thread_and_reference(graph, seed, batch) -> None:
    """The engine's per-worker batch slices (uneven ones too) give the outputs and counters of one thread."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in graph.inputs:
        info = graph.tensors[name]
        feeds[name] = rng.integers(info.dtype.min, info.dtype.max, (batch, *info.shape[1:]), endpoint=True)
    single = Engine(graph, threads=1)
    sliced = Engine(graph)
    sliced._workers = 3  # three slices whatever this machine's core count
    expected = run_graph(graph, feeds)
    one_outputs, one_counts = single.run(feeds)
    for _ in range(2):  # reused per-thread buffers on the second run
        outputs, counts = sliced.run(feeds)
        for name in graph.outputs:
            np.testing.assert_array_equal(outputs[name], expected[name])
            np.testing.assert_array_equal(one_outputs[name], expected[name])
        assert [c.to_dict() for c in counts] == [c.to_dict() for c in one_counts]
