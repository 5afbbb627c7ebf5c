"""The float32 requantize form against an independent oracle, and bad ONNX inputs (exit 2, one line).

The oracle rounds with Python's ``struct`` (IEEE binary32, ties to even) and ``round`` (ties to
even): float32(acc) is exact in a double then rounded once, the double product of two float32 is
exact and rounded once, as onnxruntime's MLAS requantize does in float32.
"""

from __future__ import annotations

import struct

import numpy as np
import onnx
import pytest
from cli_runner import invoke
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx_import_models import digits, float_onnx

from hwsim.cli import app as hwsim_app
from hwsim.engine import Engine
from qexport.cli import app as qexport_app
from qexport.errors import GraphError
from qexport.ir.checker import check_graph
from qexport.ir.dtypes import IntType
from qexport.ir.graph import Graph, Node, QuantInfo, TensorInfo
from qexport.ir.ops import Op
from qexport.ir.serialize import graph_to_spec, spec_to_graph
from qexport.reference import run_graph

pytestmark = pytest.mark.filterwarnings("ignore")


def f32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


def oracle(acc: int, scale: float, zero: int, low: int, high: int) -> int:
    return min(max(round(f32(f32(float(acc)) * scale)) + zero, low), high)


def requant_graph(channels: int, scales: list[float], out_type: IntType, zero: int) -> Graph:
    acc = TensorInfo("acc", IntType(True, 32), (-1, channels, 2), QuantInfo(1.0, 0))
    out = TensorInfo("y", out_type, (-1, channels, 2), QuantInfo(0.5, zero))
    node = Node(
        Op.REQUANTIZE,
        "rq",
        ["acc"],
        ["y"],
        {"multiplier": [1], "shift": [0], "clip_min": out_type.min, "clip_max": out_type.max, "float_scale": scales},
    )
    return check_graph(Graph("g", ["acc"], ["y"], {"acc": acc, "y": out}, [node], {}))


float32_scales = st.floats(2.0**-30, 2.0**8, allow_nan=False).map(f32)


@given(
    st.lists(float32_scales, min_size=1, max_size=3),
    st.lists(st.integers(-(2**31), 2**31 - 1), min_size=6, max_size=6),
    st.sampled_from([IntType(True, 8), IntType(False, 8), IntType(False, 4)]),
    st.data(),
)
def test_float_requantize_reference_and_hwsim_equal_the_oracle(scales, accs, out_type, data):
    zero = data.draw(st.integers(out_type.min, out_type.max))
    graph = requant_graph(len(scales), scales, out_type, zero)
    acc = np.array((accs * len(scales))[: 2 * len(scales)], dtype=np.int64).reshape(1, len(scales), 2)
    expected = np.array(
        [
            [
                [oracle(int(acc[0, c, i]), scales[c], zero, out_type.min, out_type.max) for i in range(2)]
                for c in range(len(scales))
            ]
        ]
    )
    assert np.array_equal(run_graph(graph, {"acc": acc})["y"], expected)
    assert np.array_equal(Engine(graph).run({"acc": acc})[0]["y"], expected)
    spec, blob = graph_to_spec(graph)
    assert spec["version"] == "2.0"  # a 1.x reader would misread the float form
    assert spec_to_graph(spec, blob).nodes[0].attrs["float_scale"] == scales  # JSON keeps float32 values exactly


@pytest.mark.parametrize(
    ("scales", "message"),
    [([0.1], "float32-exact"), ([-0.5], "positive"), ([0.5, 0.25, 0.125], "1 or 2 numbers"), (["a"], "numbers")],
)
def test_checker_rejects_malformed_float_scale(scales, message):
    with pytest.raises(GraphError, match=message):
        requant_graph(2, scales, IntType(True, 8), 0)


# --- bad inputs ------------------------------------------------------------------------------------
def one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def qdq_model_with(op_type: str, path) -> None:
    """x -> QuantizeLinear -> DequantizeLinear -> op -> QuantizeLinear -> DequantizeLinear."""
    scale, zero = np.array(0.05, dtype=np.float32), np.uint8(128)
    inits = [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zero, "z")]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="in_q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xf"], name="in_dq"),
        helper.make_node(op_type, ["xf"], ["yf"], name="the_op"),
        helper.make_node("QuantizeLinear", ["yf", "s", "z"], ["yq"], name="out_q"),
        helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["y"], name="out_dq"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.fixture(scope="module")
def float_model(tmp_path_factory):
    return float_onnx(tmp_path_factory.mktemp("float") / "float.onnx")


def test_not_onnx_truncated_and_unsupported_op(tmp_path, float_model):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\x00 this is not a protobuf" * 10)
    one_line_error(invoke(qexport_app, garbage, "-o", tmp_path / "a"), str(garbage), "not an ONNX model")
    one_line_error(invoke(hwsim_app, "run", garbage, "--inputs", tmp_path / "x.npy"), "not an ONNX model")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(float_model.read_bytes()[: float_model.stat().st_size // 2])
    one_line_error(invoke(qexport_app, truncated, "-o", tmp_path / "b"), str(truncated))
    sigmoid = tmp_path / "sigmoid.onnx"
    qdq_model_with("Sigmoid", sigmoid)
    one_line_error(invoke(qexport_app, sigmoid, "-o", tmp_path / "c"), "the_op", "Sigmoid", "not supported")
    one_line_error(invoke(qexport_app, tmp_path / "missing.onnx", "-o", tmp_path / "d"), "no such ONNX file")
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_float_model_needs_calibration_data_and_validates_it(tmp_path, float_model):
    one_line_error(invoke(qexport_app, float_model, "-o", tmp_path / "a"), "--calibrate")
    bad = tmp_path / "nan.npy"
    data = digits(8)
    data[3, 0, 2, 2] = np.nan
    np.save(bad, data)
    one_line_error(invoke(qexport_app, float_model, "--calibrate", bad, "-o", tmp_path / "b"), "NaN")
    np.save(bad, digits(8)[:, :, :4])
    one_line_error(invoke(qexport_app, float_model, "--calibrate", bad, "-o", tmp_path / "c"), "does not match")
    np.save(bad, np.zeros((4, 1, 8, 8), dtype=np.int64))
    one_line_error(invoke(qexport_app, float_model, "--calibrate", bad, "-o", tmp_path / "d"), "expected float")
    bad.write_bytes(b"not npy")
    one_line_error(invoke(qexport_app, float_model, "--calibrate", bad, "-o", tmp_path / "e"), "not a .npy")


def test_calibrated_float_model_exports_and_verifies(tmp_path, float_model):
    data = tmp_path / "calibration.npy"
    np.save(data, digits(64))
    out = tmp_path / "export"
    result = invoke(qexport_app, float_model, "--calibrate", data, "--verify", "--samples", 64, "-o", out)
    assert result.exit_code == 0, result.output
    report = __import__("json").loads((out / "report.json").read_text())
    assert report["calibrated"] and report["onnx_format"] == "ort_qdq"
    rows = {row["path"]: row for row in report["verification"]["paths"]}
    assert rows["hwsim"]["max_error_lsb"] == 0


def test_verify_inputs_option(tmp_path):
    """--inputs X.npy: every sample verified; validated as hwsim run validates (one-line errors)."""
    from onnx_import_models import ort_model

    model = ort_model(tmp_path, "QOperator", "u8", True, net="plain")
    good = tmp_path / "inputs.npy"
    np.save(good, digits(20, train=False))
    out = tmp_path / "export"
    result = invoke(qexport_app, model, "--verify", "--inputs", good, "-o", out)
    assert result.exit_code == 0, result.output
    report = __import__("json").loads((out / "report.json").read_text())
    assert report["verification"]["samples"] == 20 and report["verification"]["ok"]
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 1, 5, 5), dtype=np.float32))
    one_line_error(invoke(qexport_app, model, "--verify", "--inputs", bad, "-o", tmp_path / "a"), "do not match")
    one_line_error(invoke(qexport_app, model, "--inputs", good, "-o", tmp_path / "b"), "--inputs applies")


def test_mutated_models_fail_with_one_line_errors_only(tmp_path):
    """Deleted inputs and attributes, replaced op types, truncated initializers, wrong-length scales, removed
    nodes, a wrong input rank: the importers raise QExportError (one line) or import, never anything else."""
    import random

    from onnx_import_models import ort_model

    from qexport.errors import QExportError
    from qexport.frontend.onnx_import import import_model, read_model

    sources = [ort_model(tmp_path, fmt, "u8", True, net="inverted") for fmt in ("QDQ", "QOperator")]
    rng = random.Random(0)
    for index in range(80):
        model = onnx.load(str(rng.choice(sources)))
        graph, node = model.graph, rng.choice(list(model.graph.node))
        kind = index % 6
        if kind == 0 and len(node.input) > 1:
            node.input[rng.randrange(len(node.input))] = ""
        elif kind == 1 and node.attribute:
            del node.attribute[rng.randrange(len(node.attribute))]
        elif kind == 2:
            node.op_type = rng.choice(["Relu", "Sigmoid", "Conv", "MaxPool", "Add", "Gemm", "Flatten", "Clip"])
        elif kind == 3:
            initializer = rng.choice([i for i in graph.initializer if i.dims])
            initializer.dims[0] = max(1, initializer.dims[0] // 2)
        elif kind == 4:
            scales = [i for i in graph.initializer if i.data_type == TensorProto.FLOAT]
            target = rng.choice(scales)
            array = numpy_helper.to_array(target)
            target.CopyFrom(numpy_helper.from_array(np.resize(array, (3,)).astype(array.dtype), target.name))
        else:
            graph.node.remove(node)
        path = tmp_path / f"mutated_{index}.onnx"
        onnx.save_model(model, str(path))
        try:
            import_model(read_model(path), str(path))
        except QExportError as error:
            assert "\n" not in str(error)


def qlinear_add_model(path, rng: np.random.Generator, dtype) -> None:
    """x -> QuantizeLinear -> a; a -> QLinearConv (1x1) -> b; QLinearAdd(a, b) -> DequantizeLinear."""
    info = np.iinfo(dtype)

    def zero():
        return dtype(rng.integers(info.min, info.max + 1))

    scales = np.exp(rng.uniform(-6, 1, 3)).astype(np.float32)
    consts = {
        "sa": scales[0],
        "za": zero(),
        "sb": scales[1],
        "zb": zero(),
        "sc": scales[2],
        "zc": zero(),
        "w": rng.integers(-127, 128, (3, 3, 1, 1)).astype(np.int8),
        "ws": np.float32(rng.uniform(0.005, 0.05)),
        "wz": np.int8(0),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sa", "za"], ["a"]),
        helper.make_node("QLinearConv", ["a", "sa", "za", "w", "ws", "wz", "sb", "zb"], ["b"]),
        helper.make_node("QLinearAdd", ["a", "sa", "za", "b", "sb", "zb", "sc", "zc"], ["c"], domain="com.microsoft"),
        helper.make_node("DequantizeLinear", ["c", "sc", "zc"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qladd",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    onnx.save_model(helper.make_model(graph, opset_imports=opsets), str(path))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_qlinear_add_float_form_is_bit_exact_with_onnxruntime(tmp_path, dtype):
    """QLinearAdd imports as a packed add + float32 FMA requantize (float_add): reference, hwsim and
    onnxruntime agree on every output for random scales (ratios e^-7..e^7) and zero points."""
    from qexport.frontend.onnx_import import import_onnx
    from qexport.verify_onnx import exact_import, verify_import

    rng = np.random.default_rng(0 if dtype == np.uint8 else 1)
    for case in range(12):
        path = tmp_path / f"qladd_{case}.onnx"
        qlinear_add_model(path, rng, dtype)
        graph = import_onnx(path)
        assert exact_import(graph) and any("float_add" in node.attrs for node in graph.nodes)
        inputs = (rng.standard_normal((16, 3, 8, 8)) * rng.uniform(0.1, 20)).astype(np.float32)
        result = verify_import(graph, onnx.load(str(path)), inputs)
        assert [path_.max_error_lsb for path_ in result.paths] == [0, 0]
        assert all(worst == 0 for worst, _ in result.layerwise.values())


@given(
    st.floats(2.0**-40, 2.0**6).map(f32),
    st.floats(2.0**-40, 2.0**6).map(f32),
    st.floats(-300.0, 300.0).map(f32),
    st.integers(0, 255),
    st.integers(-128, 127),
    st.lists(st.tuples(st.integers(0, 255), st.integers(-128, 127)), min_size=1, max_size=40),
)
def test_float_add_reference_equals_hwsim(r_a, r_b, k, zp_a, zp_b, operands):
    """The reference (exact rationals) and hwsim (float64 with a TwoSum exactness check and a rational
    fallback) compute the same float32 FMA chain, including coefficients 2**-40 apart where float64 sums
    are inexact."""
    a_info = TensorInfo("a", IntType(False, 8), (-1, 1), QuantInfo(0.5, zp_a))
    b_info = TensorInfo("b", IntType(True, 8), (-1, 1), QuantInfo(0.25, zp_b))
    acc = TensorInfo("acc", IntType(True, 32), (-1, 1), QuantInfo(1.0, 0))
    out = TensorInfo("y", IntType(False, 8), (-1, 1), QuantInfo(0.1, 0))
    add = Node(Op.ADD, "add", ["a", "b"], ["acc"], {"lhs_multiplier": 512, "rhs_multiplier": 1})
    requant = Node(
        Op.REQUANTIZE,
        "rq",
        ["acc"],
        ["y"],
        {"multiplier": [1], "shift": [0], "clip_min": 0, "clip_max": 255, "float_add": [r_a, r_b, k]},
    )
    tensors = {"a": a_info, "b": b_info, "acc": acc, "y": out}
    graph = check_graph(Graph("g", ["a", "b"], ["y"], tensors, [add, requant], {}))
    feeds = {"a": np.array([[x] for x, _ in operands]), "b": np.array([[y] for _, y in operands])}
    assert np.array_equal(run_graph(graph, feeds)["y"], Engine(graph).run(feeds)[0]["y"])
