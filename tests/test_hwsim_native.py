"""hwsim's native C kernels (``hwsim/native/qconv.c``) against numpy and qexport's integer rule.

Every kernel runs in both variants (AVX-512 VNNI where this CPU has it, and portable C), for each
requantize form the engine hands them (float32 exact, float32 checked with near-tie scales, int64),
on random layer geometries, activation types (offsets into uint8), zero points and output types.
The reference is ``int8_conv.reference_conv`` (plain numpy sums) followed by the IR's rounding
(``qexport.reference.rounding.round_half_even_shift``), with the counters hwsim reports."""

from __future__ import annotations

import hashlib
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_hwsim_requant_checked import near_tie_scales
from test_hwsim_requant_int import _integer_requant, _limits

from hwsim import int8_conv, native_conv
from hwsim.channels_last import checked_requant, float_requant, int_requant
from hwsim.native_conv import AMX, AVX512, KINDS, PORTABLE, plan_native_conv

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
needs_library = pytest.mark.skipif(native_conv.library() is None, reason="hwsim's C kernels are not built here")
needs_onednn = pytest.mark.skipif(not int8_conv.available(), reason="oneDNN int8 convolutions unavailable")
OUT_TYPES = (np.uint8, np.int8, np.int16, np.int32)


def variants_here() -> list[int]:
    return [v for v in (PORTABLE, AVX512, AMX) if native_conv.variants() & v]


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler here")
def test_library_is_built_from_the_current_source() -> None:
    """With a compiler the install builds the kernels; a stale build (its source edited since) fails here."""
    assert native_conv.library() is not None, "pip install -e . should have built hwsim/_qconv*.so"
    digest = hashlib.sha256((ROOT / "hwsim/native/qconv.c").read_bytes()).hexdigest()
    assert native_conv.built_from() == digest, "hwsim/_qconv*.so is stale: run pip install -e . again"


@st.composite
def layers(draw, int8_in_place: bool = False, wide: bool = False):
    """A dense, pointwise or depthwise layer: weights, input values of a <= 8-bit type, zero point, geometry.
    ``int8_in_place``: no padding, channels a multiple of 4, int8 input: what dense kernels read in place
    (depthwise ones copy it to uint8). ``wide``: 3 x 3 (or 1 x 1) layers over whole blocks of 16 channels
    (and a partial one) and rows of 8-20 pixels: the kernels' widest register tiles."""
    kind = draw(st.sampled_from(KINDS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    channels = 4 * draw(st.integers(1, 10)) if int8_in_place else draw(st.integers(1, 40))
    if wide:
        channels = 16 * draw(st.integers(1, 3)) + draw(st.sampled_from([0, 0, 5]))
    if kind == "pointwise":
        kernel, stride, padding, dilation = 1, 1, (0, 0, 0, 0), 1
    elif wide:
        kernel, stride, dilation = 3, draw(st.integers(1, 2)), 1
        padding = draw(st.sampled_from([(1, 1, 1, 1), (0, 0, 0, 0), (0, 1, 0, 1)]))
    else:
        kernel = draw(st.sampled_from([1, 2, 3, 5, 6] if kind == "depthwise" else [1, 2, 3, 5]))
        stride, dilation = draw(st.integers(1, 3)), draw(st.integers(1, 2))
        padding = (0,) * 4 if int8_in_place else tuple(draw(st.lists(st.integers(0, kernel), min_size=4, max_size=4)))
    out_channels = channels if kind == "depthwise" else draw(st.integers(1, 70))
    size = draw(st.integers(dilation * (kernel - 1) + 1, dilation * (kernel - 1) + 9))
    if wide:
        size = draw(st.integers(8, 20))
    batch = draw(st.integers(1, 3))
    signed = int8_in_place or draw(st.booleans())
    x_min, x_max = (-128, 127) if signed else (0, 255)
    zero_point = draw(st.sampled_from([x_min, x_max, 0, int(rng.integers(x_min, x_max + 1))]))
    top = draw(st.sampled_from([2, 20, 127]))
    per_group = 1 if kind == "depthwise" else channels
    weight = rng.integers(-top, top + 1, (out_channels, per_group, kernel, kernel))
    if draw(st.booleans()):
        weight[:, :, 0, 0] = draw(st.sampled_from([-128, 127]))
    x = rng.integers(x_min, x_max + 1, (batch, channels, size, size))
    if draw(st.booleans()):  # extremes, where a saturating 16-bit product would show
        x = np.where(rng.random(x.shape) < 0.5, x_min, x_max)
    groups = channels if kind == "depthwise" else 1
    geometry = ((stride, stride), padding, (dilation, dilation), groups, (size, size))
    return weight, x, (x_min, x_max), zero_point, geometry


def requant_form(
    draw, rule: str, centred: np.ndarray, bound: int, channels: int, rng, with_bias: bool = True, ties: bool = False,
    per_tensor: bool = False,
):
    """A requantize form of ``rule`` for sums of magnitude <= bound (plus a random bias unless ``with_bias``
    is False: an add's), or None where that rule does not apply. ``ties`` (int rule): shifts of 1-4, so
    many products end in an exact half, where rounding half to even shows."""
    zero_point = draw(st.integers(-100, 100))
    clip_min = draw(st.integers(-300, 100))
    clips = (clip_min, draw(st.integers(clip_min, 300)))
    acc_limits = _limits(draw(st.sampled_from([16, 20, 32])))
    bias = rng.integers(-(bound // 8) - 1, bound // 8 + 1, channels) * with_bias
    bound += int(np.abs(bias).max())
    if rule == "float":
        shift = rng.integers(0, 12, channels)
        multiplier = rng.integers(1, max(2, (2**24 - 1) // max(bound, 1) // 4), channels)
        form = float_requant(multiplier, shift, bias, bound, zero_point, clips, acc_limits)
        if form is None or form.dtype is not np.float32:
            return None
        return form, None, (multiplier, shift, bias, zero_point, clips, acc_limits)
    if rule == "checked" and centred.size and draw(st.booleans()):
        multiplier, shift = near_tie_scales(centred.reshape(-1, channels)[0] + bias, rng)
    elif rule == "int" and per_tensor:  # one scale, as an add's requantize: shifts >= 32; with ``ties``
        # small sums, whose results stay inside the clips, and many exact halves
        top = draw(st.sampled_from([2**30, 3 * 2**29] if ties else [2**30, 3 * 2**29, 5 * 2**28, 2**31 - 1]))
        multiplier = np.full(channels, top * draw(st.sampled_from([-1, 1])))
        low = 32 if ties else int(np.clip(np.ceil(np.log2(top * bound + 1)) - 8, 32, 62))
        shift = np.full(channels, draw(st.integers(low, low + (1 if ties else 4))))
    elif rule == "int" and ties:
        multiplier, shift = rng.integers(1, 8, channels), rng.integers(1, 5, channels)
    else:
        multiplier = rng.integers(2**29, 2**31, channels) * rng.choice([-1, 1], channels)
        shift = np.clip(np.ceil(np.log2(np.abs(multiplier) * bound + 1)).astype(np.int64) - 8, 1, 62)
    make = checked_requant if rule == "checked" else int_requant
    form = make(multiplier, shift, bias, bound, zero_point, clips, acc_limits)
    if form is None:
        return None
    int_form = form.int_form if rule == "checked" else form
    return form, int_form, (multiplier, shift, bias, zero_point, clips, acc_limits)


def requantized_layer(layer, rule: str, seed: int, data):
    """The layer's oneDNN plan and its reference: numpy sums requantized by a form of ``rule`` with the
    integer rule. -> (conv, form, int_form, (expected, saturations, overflows), clips)."""
    weight, x, (x_min, x_max), zero_point, geometry = layer
    conv = int8_conv.plan_int8_conv(weight, x_min, x_max, zero_point, *geometry)
    assume(conv is not None)
    stride, padding, dilation, _, _ = geometry
    centred = int8_conv.reference_conv(x, weight, zero_point, stride, padding, dilation)
    out_channels = weight.shape[0]
    magnitude = int(np.abs(weight.reshape(out_channels, -1)).sum(axis=1).max())
    bound = magnitude * max(abs(x_min - zero_point), abs(x_max - zero_point))
    made = requant_form(data.draw, rule, centred, bound, out_channels, np.random.default_rng(seed))
    assume(made is not None)
    form, int_form, (multiplier, shift, bias, rq_zero, clips, acc_limits) = made
    if form.kind == "checked" and data.draw(st.booleans()):
        form = replace(form, products=math.inf)  # no bound known: the vector epilogue clamps the products first
    acc_bits = int(np.log2(acc_limits[1] + 1)) + 1
    reference = _integer_requant(centred + bias, multiplier, shift, rq_zero, clips, acc_bits)
    return conv, form, int_form, reference, clips


@needs_library
@needs_onednn
@SETTINGS
@given(layer=layers(), rule=st.sampled_from(["float", "checked", "int"]), out_type=st.sampled_from(OUT_TYPES),
       seed=st.integers(0, 2**16), data=st.data())  # fmt: skip
def test_native_conv_equals_numpy_and_the_integer_rule(layer, rule, out_type, seed, data) -> None:
    # the input as the engine holds it: int64 NCHW, or its storage type channels-last (the copies' fast paths)
    check_native_conv(layer, rule, out_type, seed, data, data.draw(st.sampled_from(["int64", "channels-last"])))


@needs_library
@needs_onednn
@SETTINGS
@given(layer=layers(int8_in_place=True), rule=st.sampled_from(["float", "checked", "int"]),
       out_type=st.sampled_from(OUT_TYPES), seed=st.integers(0, 2**16), data=st.data())  # fmt: skip
def test_native_conv_reads_int8_inputs_in_place(layer, rule, out_type, seed, data) -> None:
    """Layers without padding over int8 channels-last inputs: dense ones read them without a copy, each
    byte as v + 128; depthwise ones (read padded or not) convert them."""
    check_native_conv(layer, rule, out_type, seed, data, "channels-last", int8_in_place=True)


@needs_library
@needs_onednn
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layer=layers(wide=True), rule=st.sampled_from(["float", "checked", "int"]), out_type=st.sampled_from(OUT_TYPES),
       seed=st.integers(0, 2**16), data=st.data())  # fmt: skip
def test_native_conv_on_wide_rows(layer, rule, out_type, seed, data) -> None:
    """Rows wide enough and channels many enough for every register tile (8 pixels, whole blocks of 16)."""
    check_native_conv(layer, rule, out_type, seed, data, data.draw(st.sampled_from(["int64", "channels-last"])))


def check_native_conv(layer, rule, out_type, seed, data, layout: str, int8_in_place: bool = False) -> None:
    weight, x, (x_min, _), _, geometry = layer
    conv, form, int_form, (expected, saturations, overflows), _ = requantized_layer(layer, rule, seed, data)
    check_overflow = bool(form.limits[6])
    narrow = np.int8 if x_min < 0 else np.uint8
    channels_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1), dtype=narrow)  # (astype would keep NCHW order)
    stored = x.astype(np.int64) if layout == "int64" else channels_last.transpose(0, 3, 1, 2)
    for variant in variants_here():
        native = plan_native_conv(conv, variant, KINDS)
        if native is None:  # AMX: no dilation along x; vector depthwise: at most 5 x 5 taps (portable: any)
            depthwise = weight.shape[1] == 1 and geometry[3] > 1
            too_many_taps = depthwise and weight[0, 0].size > native_conv.DEPTHWISE_TAPS
            assert variant != PORTABLE and (too_many_taps or (variant == AMX and geometry[2][1] != 1))
            continue
        if variant == AMX and rule == "int" and not native.depthwise:
            continue  # the engine hands the native kernels float32 forms only; AMX has no int64 epilogue
        if int8_in_place:  # AMX reads a padded uint8 copy; depthwise kernels a uint8 one
            in_place = variant != AMX and not native.depthwise
            assert native._input(stored, padded=True)[3] == in_place, f"variant {variant}"
        for pad_pixels in (0, 10**9) if native.depthwise else (0,):  # depthwise: unpadded and padded input
            native.pad_pixels = pad_pixels
            out = np.empty(expected.shape, dtype=out_type)
            counts = native.requantize_into(stored, form, int_form, out)
            where = f"variant {variant}, pad_pixels {pad_pixels}"
            np.testing.assert_array_equal(out, expected.astype(out_type), err_msg=where)
            assert counts == (saturations, overflows if check_overflow else 0), where


@needs_library
@needs_onednn
@pytest.mark.skipif(not native_conv.available(), reason="the fused residual runs only on the AVX-512 VNNI kernels")
@SETTINGS
@given(layer=layers(),
       rules=st.tuples(st.sampled_from(["float", "checked"]), st.sampled_from(["float", "checked", "int"])),
       other_type=st.sampled_from([np.uint8, np.int8, np.int16]), out_type=st.sampled_from(OUT_TYPES),
       seed=st.integers(0, 2**16), data=st.data())  # fmt: skip
def test_native_residual_equals_the_integer_rule(layer, rules, other_type, out_type, seed, data) -> None:
    """Convolution, requantize, residual add with another tensor, the add's requantize (float32, checked
    float32, or the int64 rule with multipliers up to 2**16, as LSQ's free scales align adds): one kernel."""
    check_native_residual(layer, rules, other_type, out_type, seed, data)


@needs_library
@needs_onednn
@pytest.mark.skipif(not native_conv.available(), reason="the fused residual runs only on the AVX-512 VNNI kernels")
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layer=layers(), first=st.sampled_from(["float", "checked"]), other_type=st.sampled_from([np.uint8, np.int8]),
       out_type=st.sampled_from(OUT_TYPES), seed=st.integers(0, 2**16), data=st.data())  # fmt: skip
def test_native_residual_per_tensor_int_rule_rounds_halves_to_even(layer, first, other_type, out_type, seed, data):
    """The add's requantize with one multiplier and a shift >= 32 (a per-tensor scale: the kernels' 32 x 32-bit
    product path) on small sums, many of them exact halves."""
    check_native_residual(layer, (first, "int"), other_type, out_type, seed, data, ties=True, per_tensor=True)


def check_native_residual(layer, rules, other_type, out_type, seed, data, ties=None, per_tensor=None) -> None:
    weight, x, _, _, _ = layer
    conv, form, int_form, (own, saturations, overflows), clips = requantized_layer(layer, rules[0], seed, data)
    out_channels = weight.shape[0]
    rng = np.random.default_rng(seed + 1)
    info = np.iinfo(other_type)
    other = rng.integers(info.min, int(info.max) + 1, own.shape).astype(other_type)
    other_zero = data.draw(st.integers(int(info.min), int(info.max)))
    own_zero = data.draw(st.integers(-20, 20))
    if ties is None:  # small sums and shifts: exact halves, few clips
        ties = rules[1] == "int" and data.draw(st.booleans())
    largest = 3 if ties else 2**16 if rules[1] == "int" else 2**9
    multipliers = (data.draw(st.integers(-largest, largest)), data.draw(st.integers(-largest, largest)))
    total = (own - own_zero) * multipliers[0] + (other.astype(np.int64) - other_zero) * multipliers[1]
    own_range = max(abs(clips[0] - own_zero), abs(clips[1] - own_zero))
    other_range = max(abs(int(info.min) - other_zero), abs(int(info.max) - other_zero))
    add_bound = own_range * abs(multipliers[0]) + other_range * abs(multipliers[1])
    assume(add_bound < 2**31)  # the kernels sum the add in int32
    if per_tensor is None:
        per_tensor = rules[1] == "int" and data.draw(st.booleans())
    made = requant_form(
        data.draw, rules[1], total, add_bound, out_channels, rng, with_bias=False, ties=ties, per_tensor=per_tensor
    )
    assume(made is not None)
    add_form, add_int_form, (add_multiplier, add_shift, _, add_zero, add_clips, add_limits) = made
    add_bits = int(np.log2(add_limits[1] + 1)) + 1
    expected, add_saturations, add_overflows = _integer_requant(
        total, add_multiplier, add_shift, add_zero, add_clips, add_bits
    )
    alignment = (own_zero, other_zero, *multipliers)
    residual = native_conv.ResidualAdd.of(add_form, add_int_form, out_type, out_channels, alignment, add_bound)
    assert residual is not None
    for variant in (v for v in (AVX512, AMX) if native_conv.variants() & v):
        native = plan_native_conv(conv, variant, KINDS)
        if native is None:
            continue  # AMX: dilation along x; depthwise past 5 x 5
        out = np.empty(expected.shape, dtype=out_type)
        counts = native.requantize_into(x, form, int_form, out, residual.with_other(other.reshape(-1)))
        np.testing.assert_array_equal(out, expected.astype(out_type), err_msg=f"variant {variant}")
        assert counts == (
            saturations, overflows if form.limits[6] else 0, add_saturations, add_overflows if add_form.limits[6] else 0
        ), f"variant {variant}"


@needs_library
@needs_onednn
def test_depthwise_past_25_taps_stays_off_the_vector_kernels() -> None:
    """A 6 x 6 depthwise layer (36 taps, like a lowered global average pool): the vector kernel holds at
    most 25 taps in registers, so the engine's planner leaves it to oneDNN; the portable kernel takes it."""
    rng = np.random.default_rng(3)
    weight = rng.integers(-2, 3, (2, 1, 6, 6))
    x = rng.integers(0, 256, (2, 2, 6, 6))
    conv = int8_conv.plan_int8_conv(weight, 0, 255, 0, (1, 1), (0, 0, 0, 0), (1, 1), 2, (6, 6))
    assert conv is not None
    assert native_conv.plan_fast_conv(conv) is None
    for variant in (AVX512, AMX):
        assert plan_native_conv(conv, variant, KINDS) is None
    portable = plan_native_conv(conv, PORTABLE, KINDS)
    ones, zeros = np.ones(2, np.int64), np.zeros(2, np.int64)
    form = int_requant(ones, ones, zeros, 2**16, 0, (0, 255), _limits(32))
    out = np.empty((2, 1, 1, 2), dtype=np.uint8)
    portable.requantize_into(x, form, form, out)
    centred = int8_conv.reference_conv(x, weight, 0, (1, 1), (0, 0, 0, 0), (1, 1))
    expected, _, _ = _integer_requant(centred, ones, ones, 0, (0, 255), 32)
    np.testing.assert_array_equal(out, expected)
