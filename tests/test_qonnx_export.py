"""QONNX export of the IR: the qonnx executor on our model.qonnx.onnx (and on its qonnx-cleaned form) equals the IR
reference bit for bit on every shipped checkpoint it can express and on random lowered networks; formats QONNX
cannot express are refused naming the layer; re-importing the export gives the same integers; the CLI writes it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

pytest.importorskip("qonnx", reason="the qonnx executor is the oracle")

from cli_runner import invoke  # noqa: E402
from modelgen import calibrated, zoo_graph  # noqa: E402
from qonnx_support import cleaned, output_integers, qonnx_execute, reference_integers  # noqa: E402
from test_random_networks import RandomNet, networks  # noqa: E402

from qexport.checkpoint import load_checkpoint  # noqa: E402
from qexport.cli import app  # noqa: E402
from qexport.data import verification_data  # noqa: E402
from qexport.errors import QExportError  # noqa: E402
from qexport.export.qonnx_export import export_qonnx  # noqa: E402
from qexport.frontend.lower import lower  # noqa: E402
from qexport.frontend.onnx_qonnx import import_qonnx  # noqa: E402
from qexport.quant.config import QuantConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = sorted((ROOT / "models").glob("*.ckpt"))
REFUSED = {  # checkpoint -> what the refusal names
    "digits_cnn_w4a4_post.ckpt": r"layer 'conv2': weight format 'post' has no QONNX form",
    "digits_cnn_w4a4_asq.ckpt": r"layer 'relu1_quant': dynamic \(per-sample\) requantization has no QONNX form",
}
SAMPLES = 96


def _assert_executor_equals_reference(graph, inputs: np.ndarray) -> None:
    model = export_qonnx(graph, batch=len(inputs))
    reference = reference_integers(graph, inputs)
    for tag, candidate in (("export", model), ("cleaned export", cleaned(model))):
        observed = output_integers(graph, qonnx_execute(candidate, inputs))
        np.testing.assert_array_equal(observed, reference, err_msg=f"qonnx executor on the {tag}")
    back = import_qonnx(model, "export.onnx")
    np.testing.assert_array_equal(reference_integers(back, inputs), reference, err_msg="re-imported export")


def test_every_checkpoint_is_listed():
    assert len(CHECKPOINTS) >= 10 and set(REFUSED) <= {path.name for path in CHECKPOINTS}


@pytest.mark.parametrize("path", CHECKPOINTS, ids=lambda p: p.stem)
def test_checkpoint_export_equals_qonnx_executor(path: Path):
    checkpoint = load_checkpoint(path)
    graph = lower(checkpoint.model, checkpoint.input_shape, name=checkpoint.architecture)
    if path.name in REFUSED:
        with pytest.raises(QExportError, match=REFUSED[path.name]):
            export_qonnx(graph)
        return
    inputs, _ = verification_data(checkpoint.info.get("dataset", "synthetic"), checkpoint.input_shape, SAMPLES)
    _assert_executor_equals_reference(graph, np.asarray(inputs, np.float32))


def test_resnet20_residual_adds_equal_qonnx_executor():
    _, graph, _ = zoo_graph("resnet20", QuantConfig(pow2_scales=True), seed=1)
    _assert_executor_equals_reference(
        graph, np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    )


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=networks(), weight_method=st.sampled_from(["lsq", "pot", "apot", "codebook"]))
def test_random_power_of_two_networks_equal_qonnx_executor(case, weight_method):
    """Lowered QAT nets (residual adds, relu/relu6, BN, depthwise and dilated convs, max/avg pools), all scales
    powers of two: every float32 step of the executor is exact, so it equals the IR."""
    in_channels, blocks, config, classes, seed, size = case
    config = dataclasses.replace(config, weight_method=weight_method, pow2_scales=True, weight_bits=4)
    shape = (in_channels, size, size)
    qat, _ = calibrated(RandomNet(in_channels, blocks, classes), config, shape, seed)
    try:
        graph = lower(qat, shape, "random")
    except QExportError:  # front-end limits, tested with the front end
        assume(False)
    inputs = np.random.default_rng(seed).standard_normal((8, *shape)).astype(np.float32)
    _assert_executor_equals_reference(graph, inputs)


def test_cli_writes_qonnx_next_to_the_other_outputs(tmp_path: Path):
    out = tmp_path / "export"
    result = invoke(app, ROOT / "models" / "digits_cnn_w4a4.ckpt", "--target", "fpga", "-o", out, "--qonnx")
    assert result.exit_code == 0, result.output
    model = onnx.load(str(out / "model.qonnx.onnx"))
    assert {n.op_type for n in model.graph.node} >= {"Quant", "Conv", "Gemm"}
    assert "model.qonnx.onnx" in (out / "report.json").read_text()


def test_cli_refuses_a_format_qonnx_cannot_express(tmp_path: Path):
    out = tmp_path / "export"
    result = invoke(app, ROOT / "models" / "digits_cnn_w4a4_post.ckpt", "-o", out, "--qonnx")
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "layer 'conv2': weight format 'post'" in lines[0] and "Traceback" not in result.output
    assert not out.exists()


def _pool_as_conv_graph(lhs_multiplier: int = 1):
    """An average pool as the ONNX importers write it: an all-ones depthwise conv (window sum on the input grid)
    and a requantize by 1/4 to the input scale, so the multiplier is not the scale ratio; then an add."""
    from qexport.ir.checker import check_graph
    from qexport.ir.dtypes import INT32, IntType
    from qexport.ir.graph import Graph, Node, QuantInfo, TensorInfo, Weight
    from qexport.ir.ops import Op

    u8 = IntType(False, 8)
    graph = Graph("pool_as_conv", ["x"], ["y"], {}, [], {}, {})
    graph.tensors["x"] = TensorInfo("x", u8, (-1, 3, 4, 4), QuantInfo(0.0370371, 0))
    graph.weights["ones"] = Weight(
        "ones",
        "int_affine",
        (3, 1, 2, 2),
        {"values": np.ones((3, 1, 2, 2), np.int64)},
        {"dtype": "UINT1", "scale": 1.0},
    )
    graph.tensors["sum"] = TensorInfo("sum", INT32, (-1, 3, 2, 2), QuantInfo(0.0370371, 0))
    graph.nodes.append(
        Node(
            Op.CONV2D,
            "pool",
            ["x"],
            ["sum"],
            dict(weight="ones", bias=None, stride=[2, 2], padding=[0] * 4, dilation=[1, 1], groups=3),
        )
    )
    graph.tensors["avg"] = TensorInfo("avg", u8, (-1, 3, 2, 2), QuantInfo(0.0370371, 0))
    graph.nodes.append(
        Node(Op.REQUANTIZE, "pool_requant", ["sum"], ["avg"], dict(multiplier=[1], shift=[2], clip_min=0, clip_max=255))
    )
    graph.tensors["both"] = TensorInfo("both", INT32, (-1, 3, 2, 2), QuantInfo(0.0370371, 0))
    graph.nodes.append(
        Node(Op.ADD, "add", ["avg", "avg"], ["both"], dict(lhs_multiplier=lhs_multiplier, rhs_multiplier=1))
    )
    graph.tensors["y"] = TensorInfo("y", u8, (-1, 3, 2, 2), QuantInfo(0.0740742, 0))
    graph.nodes.append(
        Node(Op.REQUANTIZE, "y_requant", ["both"], ["y"], dict(multiplier=[1], shift=[1], clip_min=0, clip_max=255))
    )
    return check_graph(graph)


def test_shift_that_is_not_the_scale_ratio_is_exact_through_trunc():
    """Free scale: the float window sum is off the integer by float32 error; Trunc rounds it back first."""
    graph = _pool_as_conv_graph()
    model = export_qonnx(graph, batch=64)
    assert {"Trunc", "Mul"} <= {node.op_type for node in model.graph.node}
    x = np.random.default_rng(3).integers(0, 256, (64, 3, 4, 4)) * np.float32(0.0370371)
    np.testing.assert_array_equal(output_integers(graph, qonnx_execute(model, x)), reference_integers(graph, x))


def test_add_whose_multipliers_do_not_align_its_operands_is_refused():
    with pytest.raises(QExportError, match=r"layer 'add': add multipliers 3, 1 do not align its operand scales"):
        export_qonnx(_pool_as_conv_graph(lhs_multiplier=3))
