"""The reference executor, op by op, against naive loop oracles written out in this file.

Each test builds a one-node IR graph by hand, runs ``check_graph`` on it, executes it
with ``qexport.reference.run_graph`` and compares with explicit Python loops over the
output positions (exact integers, ``fractions.Fraction`` for every rounding).
"""

from __future__ import annotations

from fractions import Fraction

import irgen
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qexport.errors import GraphError, QExportError
from qexport.ir import IntType, Op
from qexport.ir.checker import check_graph
from qexport.passes.infer_accumulator_bits import infer_accumulator_bits
from qexport.reference import run_graph

INT32 = IntType(True, 32)


def execute(graph, feeds: dict[str, np.ndarray], infer: bool) -> np.ndarray:
    """Check the graph, optionally narrow the accumulator type, and run it."""
    if infer:
        infer_accumulator_bits(graph)
    check_graph(graph)
    (out,) = graph.outputs
    result = run_graph(graph, feeds)[out]
    info = graph.tensors[out]
    assert result.shape[1:] == tuple(info.shape[1:])
    assert result.size == 0 or (info.dtype.min <= result.min() and result.max() <= info.dtype.max)
    return result


def assert_same(result: np.ndarray, expected: np.ndarray) -> None:
    assert result.shape == expected.shape, (result.shape, expected.shape)
    mismatch = np.argwhere(result != expected)
    assert mismatch.size == 0, (
        f"{len(mismatch)} mismatches, first at {mismatch[0].tolist()}: "
        f"got {result[tuple(mismatch[0])]}, expected {expected[tuple(mismatch[0])]}"
    )


class Products:
    """product(x, weight element) from the independent format oracle, memoised per element."""

    def __init__(self, weight):
        self.weight = weight
        self.linear = weight.format != "post"
        self.integers = (
            {index: irgen.integer_weight(weight, index) for index in irgen.indices(weight.shape)}
            if self.linear
            else None
        )

    def __call__(self, index: tuple[int, ...], x: int) -> int:
        if self.linear:
            return x * self.integers[index]
        return irgen.weight_product(self.weight, index, x)


def bias_values(weight, channels: int) -> list[int]:
    if weight is None:
        return [0] * channels
    zero_point = weight.attrs.get("zero_point", 0)
    return [
        int(v) - int(zero_point if not isinstance(zero_point, list) else zero_point[i])
        for i, v in enumerate(weight.arrays["values"])
    ]


# ---------------------------------------------------------------------------------------------
# conv2d


def conv2d_oracle(x, zp, weight, bias, stride, padding, dilation, groups):
    n_batch, _, height, width = x.shape
    out_c, in_per_group, k_h, k_w = weight.shape
    top, left, bottom, right = padding
    out_h = (height + top + bottom - dilation[0] * (k_h - 1) - 1) // stride[0] + 1
    out_w = (width + left + right - dilation[1] * (k_w - 1) - 1) // stride[1] + 1
    product = Products(weight)
    biases = bias_values(bias, out_c)
    out = np.zeros((n_batch, out_c, out_h, out_w), dtype=np.int64)
    out_per_group = out_c // groups
    for n in range(n_batch):
        for o in range(out_c):
            group = o // out_per_group
            for oy in range(out_h):
                for ox in range(out_w):
                    total = biases[o]
                    for ci in range(in_per_group):
                        for ky in range(k_h):
                            for kx in range(k_w):
                                iy = oy * stride[0] - top + ky * dilation[0]
                                ix = ox * stride[1] - left + kx * dilation[1]
                                if 0 <= iy < height and 0 <= ix < width:
                                    value = int(x[n, group * in_per_group + ci, iy, ix]) - zp
                                    total += product((o, ci, ky, kx), value)
                    out[n, o, oy, ox] = total
    return out


@st.composite
def conv_cases(draw, fmt: str):
    kind = draw(st.sampled_from(["dense", "depthwise", "grouped"]))
    if kind == "dense":
        groups, c_in, c_out = 1, draw(st.integers(1, 3)), draw(st.integers(1, 3))
    elif kind == "depthwise":
        c_in = groups = draw(st.integers(1, 4))
        c_out = c_in * draw(st.integers(1, 2))
    else:
        groups = 2
        c_in, c_out = 2 * draw(st.integers(1, 2)), 2 * draw(st.integers(1, 2))
    k_h, k_w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    dilation = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    padding = draw(st.lists(st.integers(0, 2), min_size=4, max_size=4))
    min_h = max(1, dilation[0] * (k_h - 1) + 1 - padding[0] - padding[2])
    min_w = max(1, dilation[1] * (k_w - 1) + 1 - padding[1] - padding[3])
    height, width = draw(st.integers(min_h, min_h + 4)), draw(st.integers(min_w, min_w + 4))
    x_dtype, x_zp = draw(irgen.quantized_types(1, 8))
    weight = draw(irgen.weights(fmt, (c_out, c_in // groups, k_h, k_w), draw(irgen.names("w_")), small=True))
    bias = irgen.bias_weight(draw, draw(irgen.names("b_")), c_out) if draw(st.booleans()) else None
    batch = draw(st.integers(1, 2))
    x_info = irgen.tensor("x", x_dtype, (-1, c_in, height, width), x_zp, draw(irgen.float32_scales()))
    x = irgen.random_feed(draw, x_info, batch)
    return dict(
        weight=weight,
        bias=bias,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        x_info=x_info,
        x=x,
        infer=draw(st.booleans()),
    )


@pytest.mark.parametrize("fmt", irgen.FORMAT_NAMES)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_conv2d_matches_loop_oracle(fmt, data):
    case = data.draw(conv_cases(fmt))
    weight, bias, x_info = case["weight"], case["bias"], case["x_info"]
    expected = conv2d_oracle(
        case["x"],
        x_info.quant.zero_point,
        weight,
        bias,
        case["stride"],
        case["padding"],
        case["dilation"],
        case["groups"],
    )
    weights = {weight.name: weight} | ({bias.name: bias} if bias else {})
    out = irgen.tensor("acc", INT32, (-1, *expected.shape[1:]))
    attrs = dict(
        weight=weight.name,
        bias=bias.name if bias else None,
        stride=case["stride"],
        padding=case["padding"],
        dilation=case["dilation"],
        groups=case["groups"],
    )
    graph = irgen.single_node_graph(Op.CONV2D, [x_info], out, attrs, weights)
    assert_same(execute(graph, {"x": case["x"]}, case["infer"]), expected)


# ---------------------------------------------------------------------------------------------
# linear


@pytest.mark.parametrize("fmt", irgen.FORMAT_NAMES)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_linear_matches_loop_oracle(fmt, data):
    features, outputs = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 5))
    x_dtype, x_zp = data.draw(irgen.quantized_types(1, 8))
    weight = data.draw(irgen.weights(fmt, (outputs, features), data.draw(irgen.names("w_")), small=True))
    bias = irgen.bias_weight(data.draw, "fc.bias", outputs) if data.draw(st.booleans()) else None
    x_info = irgen.tensor("x", x_dtype, (-1, features), x_zp)
    x = irgen.random_feed(data.draw, x_info, data.draw(st.integers(1, 3)))
    product, biases = Products(weight), bias_values(bias, outputs)
    expected = np.array(
        [
            [biases[m] + sum(product((m, k), int(x[n, k]) - x_zp) for k in range(features)) for m in range(outputs)]
            for n in range(x.shape[0])
        ],
        dtype=np.int64,
    )
    weights = {weight.name: weight} | ({bias.name: bias} if bias else {})
    graph = irgen.single_node_graph(
        Op.LINEAR,
        [x_info],
        irgen.tensor("acc", INT32, (-1, outputs)),
        {"weight": weight.name, "bias": bias.name if bias else None},
        weights,
    )
    assert_same(execute(graph, {"x": x}, data.draw(st.booleans())), expected)


# ---------------------------------------------------------------------------------------------
# add


@st.composite
def shapes(draw, min_rank: int = 2, max_rank: int = 4):
    rank = draw(st.integers(min_rank, max_rank))
    return (-1, *(draw(st.integers(1, 4)) for _ in range(rank - 1)))


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_add_matches_loop_oracle(data):
    shape = data.draw(shapes())
    (a_dtype, a_zp), (b_dtype, b_zp) = data.draw(irgen.quantized_types(1, 16)), data.draw(irgen.quantized_types(1, 16))
    lhs_m, rhs_m = data.draw(st.integers(-(2**12), 2**12)), data.draw(st.integers(-(2**12), 2**12))
    a_info, b_info = irgen.tensor("a", a_dtype, shape, a_zp), irgen.tensor("b", b_dtype, shape, b_zp)
    batch = data.draw(st.integers(1, 3))
    a, b = irgen.random_feed(data.draw, a_info, batch), irgen.random_feed(data.draw, b_info, batch)
    expected = np.zeros(a.shape, dtype=np.int64)
    for index in np.ndindex(*a.shape):
        expected[index] = (int(a[index]) - a_zp) * lhs_m + (int(b[index]) - b_zp) * rhs_m
    graph = irgen.single_node_graph(
        Op.ADD, [a_info, b_info], irgen.tensor("acc", INT32, shape), {"lhs_multiplier": lhs_m, "rhs_multiplier": rhs_m}
    )
    assert_same(execute(graph, {"a": a, "b": b}, data.draw(st.booleans())), expected)


# ---------------------------------------------------------------------------------------------
# requantize


@st.composite
def requantize_cases(draw):
    shape = draw(shapes())
    channels = shape[1]
    acc_bits = draw(st.integers(2, 32))
    acc_dtype = IntType(True, acc_bits)
    dynamic_bits = draw(st.sampled_from([0, 0, 4, 8]))
    mult_bits = draw(st.integers(1, 31))
    budget = 62 - (acc_bits - 1) - mult_bits - dynamic_bits  # keep |acc * m * d << left| < 2**62
    count = draw(st.sampled_from([1, channels]))
    multipliers = [draw(st.integers(0, (1 << mult_bits) - 1)) for _ in range(count)]
    shifts = [draw(st.integers(max(-62, -budget), 62) if budget >= 0 else st.integers(0, 62)) for _ in range(count)]
    out_dtype, out_zp = draw(irgen.quantized_types(1, 16))
    clip_min = draw(st.integers(out_dtype.min, out_dtype.max))
    clip_max = draw(st.integers(clip_min, out_dtype.max))
    return dict(
        shape=shape,
        acc_dtype=acc_dtype,
        multipliers=multipliers,
        shifts=shifts,
        out_dtype=out_dtype,
        out_zp=out_zp,
        clip=(clip_min, clip_max),
        dynamic_bits=dynamic_bits,
    )


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_requantize_matches_fraction_oracle(data):
    case = data.draw(requantize_cases())
    shape, multipliers, shifts = case["shape"], case["multipliers"], case["shifts"]
    acc_info = irgen.tensor("acc", case["acc_dtype"], shape)
    batch = data.draw(st.integers(1, 3))
    acc = irgen.random_feed(data.draw, acc_info, batch)
    # push some accumulators onto exact rounding ties
    for index in np.ndindex(*acc.shape):
        s = shifts[0 if len(shifts) == 1 else index[1]]
        if s > 0 and data.draw(st.integers(0, 3)) == 0:
            acc[index] = max(acc_info.dtype.min, min(acc_info.dtype.max, int(acc[index]) | (1 << (s - 1))))
    inputs, feeds, dynamic = [acc_info], {"acc": acc}, None
    if case["dynamic_bits"]:
        dyn_info = irgen.tensor("dyn", IntType(False, case["dynamic_bits"]), (-1,))
        dynamic = irgen.random_feed(data.draw, dyn_info, batch)
        inputs.append(dyn_info)
        feeds["dyn"] = dynamic
    out_dtype, out_zp, (low, high) = case["out_dtype"], case["out_zp"], case["clip"]
    expected = np.zeros(acc.shape, dtype=np.int64)
    for index in np.ndindex(*acc.shape):
        channel = 0 if len(multipliers) == 1 else index[1]
        scaled = int(acc[index]) * multipliers[channel] * (1 if dynamic is None else int(dynamic[index[0]]))
        rounded = round(Fraction(scaled) / Fraction(2) ** shifts[channel])
        expected[index] = min(max(rounded + out_zp, low), high)
    out = irgen.tensor("y", out_dtype, shape, out_zp)
    attrs = {"multiplier": multipliers, "shift": shifts, "clip_min": low, "clip_max": high}
    graph = irgen.single_node_graph(Op.REQUANTIZE, inputs, out, attrs)
    assert_same(execute(graph, feeds, False), expected)


@pytest.mark.parametrize(("acc", "shift"), [(2, -62), (3, -62), (1 << 20, -45), (5, -61)])
def test_requantize_left_shift_that_can_overflow_64_bits_is_rejected(acc, shift):
    """A 32-bit accumulator shifted left this far may not fit 64 bits: the checker refuses the node."""
    acc_info, out = irgen.tensor("acc", INT32, (-1, 1)), irgen.tensor("y", IntType(True, 8), (-1, 1))
    attrs = {"multiplier": [1], "shift": [shift], "clip_min": -128, "clip_max": 127}
    with pytest.raises(GraphError, match="can exceed 64 bits"):
        check_graph(irgen.single_node_graph(Op.REQUANTIZE, [acc_info], out, attrs))


# ---------------------------------------------------------------------------------------------
# pooling


@st.composite
def pool_cases(draw):
    k_h, k_w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    # pads of at most half the kernel (the checker's rule, as in PyTorch), so no window is all padding
    padding = [
        draw(st.integers(0, k_h // 2)),
        draw(st.integers(0, k_w // 2)),
        draw(st.integers(0, k_h // 2)),
        draw(st.integers(0, k_w // 2)),
    ]
    height = draw(st.integers(max(1, k_h - padding[0] - padding[2]), 6))
    width = draw(st.integers(max(1, k_w - padding[1] - padding[3]), 6))
    dtype, zp = draw(irgen.quantized_types(1, 8))
    info = irgen.tensor("x", dtype, (-1, draw(st.integers(1, 3)), height, width), zp)
    x = irgen.random_feed(draw, info, draw(st.integers(1, 2)))
    return info, x, [k_h, k_w], stride, padding


def pool_output_hw(x, kernel, stride, padding) -> tuple[int, int]:
    top, left, bottom, right = padding
    return (
        (x.shape[2] + top + bottom - kernel[0]) // stride[0] + 1,
        (x.shape[3] + left + right - kernel[1]) // stride[1] + 1,
    )


def windows(x, kernel, stride, padding):
    """Yield ((n, c, oy, ox), [in-bounds values]) over all output positions."""
    n_batch, channels, height, width = x.shape
    top, left = padding[0], padding[1]
    out_h, out_w = pool_output_hw(x, kernel, stride, padding)
    for n in range(n_batch):
        for c in range(channels):
            for oy in range(out_h):
                for ox in range(out_w):
                    values = []
                    for ky in range(kernel[0]):
                        for kx in range(kernel[1]):
                            iy, ix = oy * stride[0] - top + ky, ox * stride[1] - left + kx
                            if 0 <= iy < height and 0 <= ix < width:
                                values.append(int(x[n, c, iy, ix]))
                    yield (n, c, oy, ox), values


@settings(max_examples=100, deadline=None)
@given(pool_cases())
def test_maxpool_matches_loop_oracle(case):
    info, x, kernel, stride, padding = case
    out_hw = pool_output_hw(x, kernel, stride, padding)
    expected = np.zeros((x.shape[0], x.shape[1], *out_hw), dtype=np.int64)
    for index, values in windows(x, kernel, stride, padding):
        expected[index] = max(values)
    out = irgen.tensor("y", info.dtype, (-1, info.shape[1], *out_hw), info.quant.zero_point)
    graph = irgen.single_node_graph(Op.MAXPOOL, [info], out, {"kernel": kernel, "stride": stride, "padding": padding})
    assert_same(execute(graph, {"x": x}, False), expected)


@pytest.mark.parametrize("count_include_pad", [True, False])
@settings(max_examples=100, deadline=None)
@given(case=pool_cases())
def test_avgpool_matches_fraction_oracle(count_include_pad, case):
    info, x, kernel, stride, padding = case
    zp = info.quant.zero_point
    expected = np.zeros((x.shape[0], x.shape[1], *pool_output_hw(x, kernel, stride, padding)), dtype=np.int64)
    for index, values in windows(x, kernel, stride, padding):
        count = kernel[0] * kernel[1] if count_include_pad else len(values)
        expected[index] = round(Fraction(sum(v - zp for v in values), count)) + zp
    out = irgen.tensor("y", info.dtype, (-1, *expected.shape[1:]), zp)
    attrs = {"kernel": kernel, "stride": stride, "padding": padding, "count_include_pad": count_include_pad}
    graph = irgen.single_node_graph(Op.AVGPOOL, [info], out, attrs)
    assert_same(execute(graph, {"x": x}, False), expected)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_global_avgpool_matches_fraction_oracle(data):
    dtype, zp = data.draw(irgen.quantized_types(1, 16))
    shape = (-1, data.draw(st.integers(1, 3)), data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5)))
    info = irgen.tensor("x", dtype, shape, zp)
    x = irgen.random_feed(data.draw, info, data.draw(st.integers(1, 2)))
    expected = np.zeros((x.shape[0], x.shape[1], 1, 1), dtype=np.int64)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            total = sum(int(v) - zp for v in x[n, c].ravel())
            expected[n, c, 0, 0] = round(Fraction(total, shape[2] * shape[3])) + zp
    graph = irgen.single_node_graph(Op.GLOBAL_AVGPOOL, [info], irgen.tensor("y", dtype, (-1, shape[1], 1, 1), zp), {})
    assert_same(execute(graph, {"x": x}, False), expected)


# ---------------------------------------------------------------------------------------------
# elementwise and data movement


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_relu_clamps_at_zero_point(data):
    dtype, zp = data.draw(irgen.quantized_types(1, 16))
    info = irgen.tensor("x", dtype, data.draw(shapes()), zp)
    x = irgen.random_feed(data.draw, info, data.draw(st.integers(1, 3)))
    expected = np.zeros(x.shape, dtype=np.int64)
    for index in np.ndindex(*x.shape):
        real = int(x[index]) - zp  # real value / scale
        expected[index] = x[index] if real > 0 else zp
    graph = irgen.single_node_graph(Op.RELU, [info], irgen.tensor("y", dtype, info.shape, zp), {})
    assert_same(execute(graph, {"x": x}, False), expected)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_clip_matches_loop_oracle(data):
    dtype, zp = data.draw(irgen.quantized_types(1, 16))
    low = data.draw(st.integers(dtype.min, dtype.max))
    high = data.draw(st.integers(low, dtype.max))
    info = irgen.tensor("x", dtype, data.draw(shapes()), zp)
    x = irgen.random_feed(data.draw, info, data.draw(st.integers(1, 3)))
    expected = np.zeros(x.shape, dtype=np.int64)
    for index in np.ndindex(*x.shape):
        expected[index] = low if x[index] < low else high if x[index] > high else x[index]
    graph = irgen.single_node_graph(
        Op.CLIP, [info], irgen.tensor("y", dtype, info.shape, zp), {"clip_min": low, "clip_max": high}
    )
    assert_same(execute(graph, {"x": x}, False), expected)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_flatten_is_row_major(data):
    dtype, zp = data.draw(irgen.quantized_types(1, 8))
    shape = data.draw(shapes(3, 4))
    info = irgen.tensor("x", dtype, shape, zp)
    x = irgen.random_feed(data.draw, info, data.draw(st.integers(1, 3)))
    features = int(np.prod(shape[1:]))
    expected = np.zeros((x.shape[0], features), dtype=np.int64)
    for index in np.ndindex(*x.shape):
        flat = 0
        for axis in range(1, x.ndim):
            flat = flat * x.shape[axis] + index[axis]
        expected[index[0], flat] = x[index]
    graph = irgen.single_node_graph(Op.FLATTEN, [info], irgen.tensor("y", dtype, (-1, features), zp), {})
    assert_same(execute(graph, {"x": x}, False), expected)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_concat_matches_index_oracle(data):
    dtype, zp = data.draw(irgen.quantized_types(1, 8))
    base = data.draw(shapes(2, 4))
    axis = data.draw(st.integers(1, len(base) - 1))
    sizes = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=4))
    infos = [irgen.tensor(f"x{i}", dtype, (*base[:axis], size, *base[axis + 1 :]), zp) for i, size in enumerate(sizes)]
    batch = data.draw(st.integers(1, 2))
    feeds = {info.name: irgen.random_feed(data.draw, info, batch) for info in infos}
    out_shape = (*base[:axis], sum(sizes), *base[axis + 1 :])
    expected = np.zeros((batch, *out_shape[1:]), dtype=np.int64)
    for index in np.ndindex(*expected.shape):
        position, source = index[axis], 0
        while position >= sizes[source]:
            position -= sizes[source]
            source += 1
        expected[index] = feeds[f"x{source}"][(*index[:axis], position, *index[axis + 1 :])]
    graph = irgen.single_node_graph(Op.CONCAT, infos, irgen.tensor("y", dtype, out_shape, zp), {"axis": axis})
    assert_same(execute(graph, feeds, False), expected)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_reshape_keeps_row_major_order(data):
    dtype, zp = data.draw(irgen.quantized_types(1, 8))
    shape = data.draw(shapes(2, 4))
    info = irgen.tensor("x", dtype, shape, zp)
    x = irgen.random_feed(data.draw, info, data.draw(st.integers(1, 2)))
    total = int(np.prod(shape[1:]))
    first = data.draw(st.sampled_from([d for d in range(1, total + 1) if total % d == 0]))
    target = [first, total // first]
    expected = np.zeros((x.shape[0], *target), dtype=np.int64)
    for n in range(x.shape[0]):
        flat = [int(v) for v in x[n].ravel()]
        for i in range(target[0]):
            for j in range(target[1]):
                expected[n, i, j] = flat[i * target[1] + j]
    graph = irgen.single_node_graph(Op.RESHAPE, [info], irgen.tensor("y", dtype, (-1, *target), zp), {"shape": target})
    assert_same(execute(graph, {"x": x}, False), expected)


# ---------------------------------------------------------------------------------------------
# the executor's own checks


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_feed_outside_input_type_is_rejected(data):
    """A feed value outside the declared input type must raise, not index a product table wrongly."""
    dtype, zp = data.draw(irgen.quantized_types(1, 8))
    features = data.draw(st.integers(1, 4))
    weight = data.draw(irgen.weights("int_affine", (2, features), "w_fc", small=True))
    x_info = irgen.tensor("x", dtype, (-1, features), zp)
    x = irgen.random_feed(data.draw, x_info, 2)
    x[data.draw(st.integers(0, 1)), data.draw(st.integers(0, features - 1))] = data.draw(
        st.one_of(st.integers(dtype.min - 1000, dtype.min - 1), st.integers(dtype.max + 1, dtype.max + 1000))
    )
    graph = irgen.single_node_graph(
        Op.LINEAR, [x_info], irgen.tensor("acc", INT32, (-1, 2)), {"weight": "w_fc", "bias": None}, {"w_fc": weight}
    )
    check_graph(graph)
    with pytest.raises(QExportError, match="'x'"):
        run_graph(graph, {"x": x})


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_declared_type_overflow_is_reported(data):
    """A result outside the declared output type raises, naming the node."""
    info = irgen.tensor("a", IntType(True, 8), (-1, 3))
    graph = irgen.single_node_graph(
        Op.ADD,
        [info, irgen.tensor("b", IntType(True, 8), (-1, 3))],
        irgen.tensor("acc", IntType(True, 8), (-1, 3)),
        {"lhs_multiplier": 1, "rhs_multiplier": 1},
    )
    check_graph(graph)
    a = np.full((1, 3), data.draw(st.integers(64, 127)))
    with pytest.raises(QExportError, match="'add_node'"):
        run_graph(graph, {"a": a, "b": a})
