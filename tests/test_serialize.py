"""Layer spec + weight blob: lossless round trip for every weight format, schema validity,
and corruption (flipped or missing bytes) reported with the weight's name."""

from __future__ import annotations

import copy
import json

import irgen
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qexport.errors import QExportError
from qexport.ir import Graph, IntType, Node, Op, Weight
from qexport.ir.checker import check_graph
from qexport.ir.serialize import graph_to_spec, read_spec, spec_to_graph, validate_spec, write_spec
from qexport.passes.infer_accumulator_bits import infer_accumulator_bits
from qexport.reference import run_graph


@st.composite
def graphs(draw, conv_format: str | None = None):
    graph = draw(irgen.chain_graphs(conv_format=conv_format))
    if draw(st.booleans()):
        infer_accumulator_bits(graph)
    return check_graph(graph)


def json_round_trip(spec: dict) -> dict:
    return json.loads(json.dumps(spec))


def assert_same_graph(a: Graph, b: Graph) -> None:
    assert (a.name, a.inputs, a.outputs, a.metadata) == (b.name, b.inputs, b.outputs, b.metadata)
    assert list(a.tensors) == list(b.tensors)
    for name, info in a.tensors.items():
        other = b.tensors[name]
        assert (info.name, info.dtype, tuple(info.shape)) == (other.name, other.dtype, tuple(other.shape)), name
        assert (info.quant is None) == (other.quant is None), name
        if info.quant is not None:
            assert info.quant == other.quant, name
    assert len(a.nodes) == len(b.nodes)
    for node, other in zip(a.nodes, b.nodes, strict=True):
        assert (node.op, node.name, node.inputs, node.outputs) == (other.op, other.name, other.inputs, other.outputs)
        assert isinstance(other.op, Op)
        assert node.attrs == other.attrs, node.name
    assert list(a.weights) == list(b.weights)
    for name, weight in a.weights.items():
        other = b.weights[name]
        assert (weight.name, weight.format, tuple(weight.shape)) == (other.name, other.format, tuple(other.shape))
        assert weight.attrs == other.attrs, name
        assert sorted(weight.arrays) == sorted(other.arrays), name
        for field, array in weight.arrays.items():
            assert array.shape == other.arrays[field].shape, (name, field)
            assert np.issubdtype(other.arrays[field].dtype, np.integer), (name, field)
            assert np.array_equal(array.astype(np.int64), other.arrays[field]), (name, field)


def format_coverage(graph: Graph) -> set[str]:
    return {w.format for w in graph.weights.values()}


@pytest.mark.parametrize("fmt", irgen.FORMAT_NAMES)
@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_round_trip_is_lossless_and_runs_identically(fmt, data):
    graph = data.draw(graphs(conv_format=fmt))
    assert fmt in format_coverage(graph)
    spec, blob = graph_to_spec(graph)
    loaded_spec = json_round_trip(spec)
    assert loaded_spec == spec  # JSON-native values only
    validate_spec(loaded_spec)
    restored = spec_to_graph(loaded_spec, blob)
    assert_same_graph(graph, restored)
    # serializing the restored graph reproduces the same spec and blob byte for byte
    assert graph_to_spec(restored) == (spec, blob)
    x_info = graph.tensors[graph.inputs[0]]
    feeds = {x_info.name: irgen.random_feed(data.draw, x_info, data.draw(st.integers(1, 3)))}
    before, after = run_graph(graph, feeds, keep_all=True), run_graph(restored, feeds, keep_all=True)
    assert list(before) == list(after)
    for name in before:
        assert np.array_equal(before[name], after[name]), name


@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_write_and_read_spec_files(tmp_path_factory, data):
    graph = data.draw(graphs())
    directory = tmp_path_factory.mktemp("spec")
    spec_path, blob_path = write_spec(graph, directory)
    validate_spec(json.loads(spec_path.read_text()))
    assert blob_path.read_bytes() == graph_to_spec(graph)[1]
    assert_same_graph(graph, read_spec(spec_path))


def array_layout(spec: dict) -> list[tuple[str, str, int, int]]:
    """(weight, field, start, end) in blob order."""
    return [
        (name, field, meta["offset"], meta["offset"] + meta["nbytes"])
        for name, entry in spec["weights"].items()
        for field, meta in entry["arrays"].items()
    ]


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_flipped_byte_names_the_weight(data):
    graph = data.draw(graphs())
    spec, blob = graph_to_spec(graph)
    spec = json_round_trip(spec)
    name, field, start, end = data.draw(st.sampled_from(array_layout(spec)))
    position = data.draw(st.integers(start, end - 1))
    corrupted = bytearray(blob)
    corrupted[position] ^= data.draw(st.integers(1, 255))
    with pytest.raises(QExportError) as error:
        spec_to_graph(spec, bytes(corrupted))
    assert repr(name) in str(error.value) and repr(field) in str(error.value), str(error.value)


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_truncated_blob_names_the_weight(data):
    graph = data.draw(graphs())
    spec, blob = graph_to_spec(graph)
    spec = json_round_trip(spec)
    length = data.draw(st.integers(0, len(blob) - 1))
    # the loader checks arrays in order: the first one reaching past the cut is reported
    name = next(name for name, _, _, end in array_layout(spec) if end > length)
    with pytest.raises(QExportError) as error:
        spec_to_graph(spec, blob[:length])
    assert repr(name) in str(error.value), str(error.value)


@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_tampered_array_checksum_names_the_weight(data):
    graph = data.draw(graphs())
    spec, blob = graph_to_spec(graph)
    spec = json_round_trip(spec)
    name, field, _, _ = data.draw(st.sampled_from(array_layout(spec)))
    meta = spec["weights"][name]["arrays"][field]
    meta["sha256"] = data.draw(
        st.text(alphabet="0123456789abcdef", min_size=64, max_size=64).filter(lambda h: h != meta["sha256"])
    )
    with pytest.raises(QExportError) as error:
        spec_to_graph(spec, blob)
    assert repr(name) in str(error.value)


SCHEMA_BREAKERS = {
    "bad_format": lambda s, d: s.update(format="onnx"),
    "bad_version": lambda s, d: s.update(version="3.0"),
    "missing_layers": lambda s, d: s.pop("layers"),
    "unknown_op": lambda s, d: s["layers"][d.draw(st.integers(0, len(s["layers"]) - 1))].update(op="softmax"),
    "bad_dtype": lambda s, d: s["tensors"][d.draw(st.sampled_from(sorted(s["tensors"])))].update(dtype="INT33"),
    "extra_field": lambda s, d: s.update(surprise=1),
    "unknown_weight_format": lambda s, d: s["weights"][d.draw(st.sampled_from(sorted(s["weights"])))].update(
        format="float16"
    ),
    "negative_scale": lambda s, d: s["tensors"][s["inputs"][0]]["quant"].update(scale=-1.0),
    "two_outputs": lambda s, d: s["layers"][0].update(outputs=["a", "b"]),
}


@pytest.mark.parametrize("breaker", sorted(SCHEMA_BREAKERS))
@settings(max_examples=2, deadline=None)
@given(data=st.data())
def test_schema_rejects_malformed_specs(breaker, data):
    graph = data.draw(graphs())
    spec, blob = graph_to_spec(graph)
    spec = json_round_trip(spec)
    SCHEMA_BREAKERS[breaker](spec, data)
    with pytest.raises(QExportError, match="field"):
        spec_to_graph(spec, blob)


def _padded_graph() -> Graph:
    """A graph whose first weight array is 3 bytes long, so the blob holds 13 padding bytes."""
    graph = Graph(
        "pad",
        ["x"],
        ["y"],
        {"x": irgen.tensor("x", IntType(True, 8), (-1, 3)), "y": irgen.tensor("y", irgen.INT32, (-1, 1))},
        [],
        {},
        {},
    )
    graph.weights["w"] = Weight(
        "w",
        "int_affine",
        (1, 3),
        {"values": np.array([[1, -2, 3]], np.int8)},
        {"dtype": "INT8", "scale": 1.0, "zero_point": 0},
    )
    graph.weights["b"] = Weight(
        "b", "int_affine", (1,), {"values": np.array([7])}, {"dtype": "INT32", "scale": 1.0, "zero_point": 0}
    )
    graph.nodes.append(Node(Op.LINEAR, "fc", ["x"], ["y"], {"weight": "w", "bias": "b"}))
    return check_graph(graph)


@pytest.mark.parametrize("position", [3, 8, 15])
def test_flipped_padding_byte_is_detected(position):
    spec, blob = graph_to_spec(_padded_graph())
    assert all(not start <= position < end for _, _, start, end in array_layout(spec))
    corrupted = bytearray(blob)
    corrupted[position] ^= 0xFF
    with pytest.raises(QExportError):
        spec_to_graph(copy.deepcopy(spec), bytes(corrupted))


@pytest.mark.parametrize(("key", "value"), [("shape", [2]), ("shape", [1, 2]), ("dtype", "<i2"), ("dtype", "<i8")])
def test_inconsistent_array_metadata_is_a_qexport_error(key, value):
    """dtype/shape that disagree with nbytes (checksum intact) must be reported naming the weight."""
    spec, blob = graph_to_spec(_padded_graph())
    spec["weights"]["w"]["arrays"]["values"][key] = value
    with pytest.raises(QExportError, match="'w'"):
        spec_to_graph(spec, blob)
