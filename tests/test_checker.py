"""``check_graph`` accepts well-formed random graphs and rejects each kind of malformation
with a GraphError whose message names the offending node, tensor or weight."""

from __future__ import annotations

import re

import irgen
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qexport.errors import GraphError
from qexport.ir import IntType, Node, Op, TensorInfo, Weight
from qexport.ir.checker import check_graph
from qexport.ir.ops import OP_SIGNATURES
from qexport.passes.infer_accumulator_bits import infer_accumulator_bits

DTYPE_PRESERVING = (Op.RELU, Op.MAXPOOL, Op.AVGPOOL, Op.GLOBAL_AVGPOOL, Op.FLATTEN)


@st.composite
def valid_graphs(draw):
    graph = draw(irgen.chain_graphs())
    if draw(st.booleans()):
        infer_accumulator_bits(graph)
    check_graph(graph)  # the unmutated graph is fine
    return graph


def pick(data, graph, ops=None, where=None):
    candidates = [n for n in graph.nodes if (ops is None or n.op in ops) and (where is None or where(n))]
    return data.draw(st.sampled_from(candidates))


def weighted_nodes(graph):
    return [n for n in graph.nodes if n.op in (Op.CONV2D, Op.LINEAR)]


# every mutation edits the graph in place and returns the names the error message must contain


def unknown_op(graph, data):
    node = pick(data, graph)
    node.op = data.draw(st.sampled_from(["softmax", "Conv", "matmul", "gelu"]))
    return [node.name]


def missing_attribute(graph, data):
    node = pick(data, graph, where=lambda n: OP_SIGNATURES[n.op][1])
    key = data.draw(st.sampled_from(sorted(OP_SIGNATURES[node.op][1])))
    del node.attrs[key]
    return [node.name, key]


WRONG_VALUES = {
    int: [True, "1", 1.0, None, [1]],
    list: [(1, 1), 1, "1,1", None],
    str: [5, None, ["w"]],
    bool: [1, 0, "true", None],
}


def wrong_attribute_type(graph, data):
    node = pick(data, graph, where=lambda n: OP_SIGNATURES[n.op][1])
    key = data.draw(st.sampled_from(sorted(OP_SIGNATURES[node.op][1])))
    node.attrs[key] = data.draw(st.sampled_from(WRONG_VALUES[OP_SIGNATURES[node.op][1][key]]))
    return [node.name, key]


def input_used_before_produced(graph, data):
    index = data.draw(st.integers(1, len(graph.nodes) - 1))
    node = graph.nodes[index]
    producer = graph.producer()
    first = min(graph.nodes.index(producer[name]) for name in node.inputs if name in producer)
    graph.nodes.remove(node)
    graph.nodes.insert(data.draw(st.integers(0, first)), node)
    missing = [name for name in node.inputs if name in producer]
    return [node.name, *missing[:1]] if len(set(missing)) == 1 else [node.name]


def input_never_defined(graph, data):
    node = pick(data, graph)
    ghost = data.draw(irgen.names("ghost_"))
    node.inputs[0] = ghost
    return [node.name, ghost]


def duplicate_output(graph, data):
    index = data.draw(st.integers(0, len(graph.nodes) - 1))
    node = graph.nodes[index]
    earlier = [*graph.inputs, *(n.outputs[0] for n in graph.nodes[:index])]
    taken = data.draw(st.sampled_from(earlier))
    node.outputs = [taken]
    return [node.name, taken]


def duplicate_node_name(graph, data):
    second = data.draw(st.integers(1, len(graph.nodes) - 1))
    first = data.draw(st.integers(0, second - 1))
    graph.nodes[second].name = graph.nodes[first].name
    return [graph.nodes[first].name]


def missing_weight(graph, data):
    node = pick(data, graph, ops=(Op.CONV2D, Op.LINEAR))
    key = "bias" if node.attrs.get("bias") and data.draw(st.booleans()) else "weight"
    name = node.attrs[key]
    if data.draw(st.booleans()):
        del graph.weights[name]
    else:
        name = node.attrs[key] = data.draw(irgen.names("nowhere_"))
    return [node.name, name]


def weight_shape_mismatch(graph, data):
    node = pick(data, graph, ops=(Op.CONV2D, Op.LINEAR))
    weight = graph.weights[node.attrs["weight"]]
    shape = list(weight.shape)
    shape[1] += data.draw(st.sampled_from([-1, 1, 2])) if shape[1] > 1 else data.draw(st.integers(1, 3))
    graph.weights[weight.name] = data.draw(irgen.weights(weight.format, tuple(shape), weight.name, small=True))
    return [node.name]


def bias_shape_mismatch(graph, data):
    node = pick(data, graph, ops=(Op.CONV2D, Op.LINEAR))
    channels = graph.weights[node.attrs["weight"]].shape[0]
    bias = irgen.bias_weight(data.draw, data.draw(irgen.names("bias_")), channels + data.draw(st.integers(1, 3)))
    graph.weights[bias.name] = bias
    node.attrs["bias"] = bias.name
    return [node.name, bias.name]


def invalid_weight_field(graph, data):
    node = pick(data, graph, ops=(Op.CONV2D, Op.LINEAR))
    weight = graph.weights[node.attrs["weight"]]
    field = {"int_affine": "values", "codebook": "indices"}.get(weight.format, "sign")
    array = weight.arrays[field].astype("int64")
    array.reshape(-1)[0] = 1 << 20
    weight.arrays[field] = array
    return [weight.name]


def declared_output_shape_wrong(graph, data):
    node = pick(data, graph)
    info = graph.tensors[node.outputs[0]]
    dims = list(info.shape)
    axis = data.draw(st.integers(1, len(dims) - 1))
    dims[axis] += data.draw(st.sampled_from([-1, 1, 3])) if dims[axis] > 1 else data.draw(st.integers(1, 3))
    if data.draw(st.booleans()):
        dims.append(1)  # or a wrong rank
    info.shape = tuple(dims)
    return [node.name, info.name]


def clip_outside_dtype(graph, data):
    node = pick(data, graph, ops=(Op.REQUANTIZE,))
    dtype = graph.tensors[node.outputs[0]].dtype
    step = data.draw(st.integers(1, 1000))
    choice = data.draw(st.sampled_from(["low", "high", "crossed"]))
    if choice == "low":
        node.attrs["clip_min"] = dtype.min - step
    elif choice == "high":
        node.attrs["clip_max"] = dtype.max + step
    else:
        node.attrs["clip_min"], node.attrs["clip_max"] = dtype.max, dtype.max - step
    return [node.name]


def clip_node_outside_dtype(graph, data):
    """An explicit clip node (inserted after the relu) with a range beyond its type."""
    relu = pick(data, graph, ops=(Op.RELU,))
    info = graph.tensors[relu.outputs[0]]
    name = data.draw(irgen.names("clip_"))
    out = data.draw(irgen.names("tclip_"))
    graph.tensors[out] = TensorInfo(out, info.dtype, info.shape, info.quant)
    step = data.draw(st.integers(1, 100))
    attrs = data.draw(
        st.sampled_from(
            [
                {"clip_min": info.dtype.min - step, "clip_max": info.dtype.max},
                {"clip_min": info.dtype.min, "clip_max": info.dtype.max + step},
            ]
        )
    )
    index = graph.nodes.index(relu) + 1
    graph.nodes.insert(index, Node(Op.CLIP, name, [relu.outputs[0]], [out], attrs))
    return [name]


def pool_padding_too_large(graph, data):
    """A pooling node (inserted after the relu) padded by more than half its kernel."""
    relu = pick(data, graph, ops=(Op.RELU,))
    info = graph.tensors[relu.outputs[0]]
    name, out = data.draw(irgen.names("pool_")), data.draw(irgen.names("tpool_"))
    kernel = [data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))]
    padding = [0, 0, 0, 0]
    side = data.draw(st.integers(0, 3))
    padding[side] = kernel[side % 2] // 2 + data.draw(st.integers(1, 2))
    out_h = info.shape[2] + padding[0] + padding[2] - kernel[0] + 1
    out_w = info.shape[3] + padding[1] + padding[3] - kernel[1] + 1
    graph.tensors[out] = TensorInfo(out, info.dtype, (-1, info.shape[1], out_h, out_w), info.quant)
    op = data.draw(st.sampled_from([Op.MAXPOOL, Op.AVGPOOL]))
    attrs = {"kernel": kernel, "stride": [1, 1], "padding": padding}
    if op is Op.AVGPOOL:
        attrs["count_include_pad"] = data.draw(st.booleans())
    graph.nodes.insert(graph.nodes.index(relu) + 1, Node(op, name, [relu.outputs[0]], [out], attrs))
    return [name]


def multiplier_out_of_range(graph, data):
    node = pick(data, graph, ops=(Op.REQUANTIZE,))
    multipliers = node.attrs["multiplier"]
    multipliers[data.draw(st.integers(0, len(multipliers) - 1))] = data.draw(
        st.one_of(st.integers(-(2**40), -1), st.integers(2**31, 2**40))
    )
    return [node.name]


def shift_out_of_range(graph, data):
    node = pick(data, graph, ops=(Op.REQUANTIZE,))
    shifts = node.attrs["shift"]
    shifts[data.draw(st.integers(0, len(shifts) - 1))] = data.draw(st.sampled_from([63, 64, 100, -63, -200]))
    return [node.name]


def multiplier_count_wrong(graph, data):
    node = pick(data, graph, ops=(Op.REQUANTIZE,))
    channels = graph.tensors[node.inputs[0]].shape[1]
    key = data.draw(st.sampled_from(["multiplier", "shift"]))
    node.attrs[key] = [node.attrs[key][0]] * (channels + data.draw(st.integers(1, 3)))
    return [node.name]


def graph_input_without_quant(graph, data):
    name = graph.inputs[0]
    graph.tensors[name].quant = None
    return [name]


def graph_input_without_info(graph, data):
    name = data.draw(irgen.names("in_"))
    graph.inputs.append(name)
    return [name]


def dtype_preserving_changes_dtype(graph, data):
    node = pick(data, graph, ops=DTYPE_PRESERVING)
    info = graph.tensors[node.outputs[0]]
    info.dtype = data.draw(irgen.int_types(1, 16).filter(lambda t: t != info.dtype))
    if info.quant is not None:  # keep the zero point legal: the type change is the only fault
        info.quant.zero_point = min(max(info.quant.zero_point, info.dtype.min), info.dtype.max)
    return [node.name]


def graph_output_never_produced(graph, data):
    if data.draw(st.booleans()):
        name = graph.outputs[0]
        graph.nodes.pop()  # the final requantize
    else:
        name = data.draw(irgen.names("out_"))
        graph.tensors[name] = irgen.tensor(name, IntType(True, 8), (-1, 1))
        graph.outputs.append(name)
    return [name]


def graph_output_without_quant(graph, data):
    name = graph.outputs[0]
    graph.tensors[name].quant = None
    return [name]


def wrong_input_count(graph, data):
    node = pick(data, graph, where=lambda n: OP_SIGNATURES[n.op][0][1] < 3)
    node.inputs = node.inputs + [graph.inputs[0]] * (OP_SIGNATURES[node.op][0][1] - len(node.inputs) + 1)
    return [node.name]


def bad_window_attribute(graph, data):
    node = pick(data, graph, where=lambda n: {"stride", "padding"} & set(n.attrs))
    key = data.draw(st.sampled_from(sorted({"stride", "padding", "dilation", "kernel"} & set(node.attrs))))
    node.attrs[key] = data.draw(st.sampled_from([[0, 1], [1], [1, 1, 1], [-1, 0, 0, 0], [0, 0, 0]]))
    return [node.name, key]


MUTATIONS = [
    unknown_op,
    missing_attribute,
    wrong_attribute_type,
    input_used_before_produced,
    input_never_defined,
    duplicate_output,
    duplicate_node_name,
    missing_weight,
    weight_shape_mismatch,
    bias_shape_mismatch,
    invalid_weight_field,
    declared_output_shape_wrong,
    clip_outside_dtype,
    clip_node_outside_dtype,
    pool_padding_too_large,
    multiplier_out_of_range,
    shift_out_of_range,
    multiplier_count_wrong,
    graph_input_without_quant,
    graph_input_without_info,
    dtype_preserving_changes_dtype,
    graph_output_never_produced,
    graph_output_without_quant,
    wrong_input_count,
    bad_window_attribute,
]


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.__name__)
@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_malformed_graph_rejected_naming_the_culprit(mutation, data):
    graph = data.draw(valid_graphs())
    expected_names = mutation(graph, data)
    with pytest.raises(GraphError) as error:
        check_graph(graph)
    message = str(error.value)
    for name in expected_names:
        assert repr(name) in message, (mutation.__name__, name, message)


def test_mutations_cover_the_required_malformations():
    assert len({m.__name__ for m in MUTATIONS}) >= 12


# ---------------------------------------------------------------------------------------------
# integer types


@settings(max_examples=100, deadline=None)
@given(st.booleans(), st.one_of(st.integers(-100, 0), st.integers(33, 1000)))
def test_int_type_rejects_bit_widths_outside_1_to_32(signed, bits):
    with pytest.raises(GraphError, match=str(bits)):
        IntType(signed, bits)


def test_int_type_rejects_0_and_33_bits_and_1_bit_signed():
    for signed in (True, False):
        for bits in (0, 33):
            with pytest.raises(GraphError):
                IntType(signed, bits)
    with pytest.raises(GraphError):
        IntType(True, 1)
    with pytest.raises(GraphError, match="FOO"):
        IntType.parse("FOO")


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.tuples(st.just(True), st.integers(2, 32)), st.tuples(st.just(False), st.integers(1, 32))))
def test_int_type_parse_round_trip_and_range(case):
    signed, bits = case
    dtype = IntType(signed, bits)
    assert IntType.parse(dtype.name) == dtype
    assert dtype.max - dtype.min == 2**bits - 1
    assert (dtype.min < 0) == signed
    assert IntType.for_range(dtype.min, dtype.max) == dtype


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(exclude_characters="\n"), max_size=8))  # IntType.parse("INT8\n") is accepted (reported)
def test_int_type_parse_rejects_garbage(text):
    match = re.fullmatch(r"(U?)INT(\d+)", text)
    if match and 1 <= int(match.group(2)) <= 32 and not (match.group(1) == "" and int(match.group(2)) < 2):
        assert IntType.parse(text).name == f"{match.group(1)}INT{int(match.group(2))}"
        return
    with pytest.raises(GraphError):
        IntType.parse(text)


# ---------------------------------------------------------------------------------------------
# gaps found by these tests and fixed in the library


def _weighted_graph(op: Op, weight_shape: tuple[int, ...], x_shape: tuple[int, ...], zero_point: int = 0):
    weight = Weight(
        "w_bad", "int_affine", weight_shape, {"values": np.ones(weight_shape, np.int8)}, {"dtype": "INT8", "scale": 1.0}
    )
    attrs = {"weight": "w_bad", "bias": None}
    if op is Op.CONV2D:
        attrs |= {"stride": [1, 1], "padding": [1, 1, 1, 1], "dilation": [1, 1], "groups": 1}
        out_shape = (-1, weight_shape[0], x_shape[2] + 2, x_shape[3] + 2)
    else:
        out_shape = (-1, weight_shape[0])
    x = irgen.tensor("x", IntType(False, 8), x_shape, zero_point)
    return irgen.single_node_graph(op, [x], irgen.tensor("y", IntType(True, 32), out_shape), attrs, {"w_bad": weight})


@pytest.mark.parametrize(
    ("op", "weight_shape", "x_shape"),
    [(Op.CONV2D, (1, 1), (-1, 1, 1, 1)), (Op.CONV2D, (1, 1, 1), (-1, 1, 1, 1)), (Op.LINEAR, (3,), (-1, 3))],
)
def test_weight_of_wrong_rank_is_a_graph_error(op, weight_shape, x_shape):
    with pytest.raises(GraphError, match="'w_bad'|'conv2d_node'|'linear_node'"):
        check_graph(_weighted_graph(op, weight_shape, x_shape))


@pytest.mark.parametrize("zero_point", [-5, -1, 256, 300])
def test_zero_point_outside_type_is_rejected(zero_point):
    # with UINT8 and zero point -5, conv2d's padding looks up table[-5] and adds 256 per padded tap
    with pytest.raises(GraphError, match="'x'"):
        check_graph(_weighted_graph(Op.CONV2D, (1, 1, 1, 1), (-1, 1, 1, 1), zero_point))
