"""onnxruntime quantize_static models (QDQ and QOperator; s8s8, u8s8; per-tensor and per-channel weights).

Each model is built with the real tools (torch -> torch.onnx.export -> quantize_static calibrated on
digits) and exported with ``qexport model.onnx --target fpga --verify`` (in process); ``hwsim run``
on the ONNX file must reproduce onnxruntime (the original file, optimizations disabled) bit for bit
where the import is exact, otherwise within the bounds measured in docs/interop.md.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import onnxruntime as ort
import pytest
from cli_runner import invoke
from onnx_import_models import digits, ort_model

from hwsim.cli import app as hwsim_app
from qexport.cli import app as qexport_app
from qexport.frontend.onnx_import import import_onnx
from qexport.ir.dtypes import IntType
from qexport.verify_onnx import ORT_PATH, exact_import

pytestmark = pytest.mark.filterwarnings("ignore")
SAMPLES = 128
# docs/interop.md, measured on the digits test set: end-to-end output LSBs vs onnxruntime
END_TO_END_BOUND = {"QDQ": 2, "QOperator": 0}
CONFIGS = [(fmt, acts, pc) for fmt in ("QDQ", "QOperator") for acts in ("s8", "u8") for pc in (False, True)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's pre-processing advice
    return tmp_path_factory.mktemp("ort_models")


def run_verify(model, out):
    result = invoke(qexport_app, model, "--target", "fpga", "--verify", "--samples", SAMPLES, "-o", out)
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())


def paths(report) -> dict:
    return {path["path"]: path for path in report["verification"]["paths"]}


def original_integers(model, graph, inputs: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: inputs})[0]
    quant = graph.tensors[graph.outputs[0]].quant
    return np.rint(logits / np.float32(quant.scale)).astype(np.int64)


@pytest.mark.parametrize(("fmt", "acts", "per_channel"), CONFIGS)
def test_qexport_verify_and_hwsim_run_match_onnxruntime(workspace, fmt, acts, per_channel):
    model = ort_model(workspace, fmt, acts, per_channel)
    out = workspace / f"{model.stem}_export"
    report = run_verify(model, out)
    assert report["onnx_format"] == ("ort_qop" if fmt == "QOperator" else "ort_qdq")
    rows = paths(report)
    assert rows["hwsim"]["max_error_lsb"] == 0 and rows["hwsim"]["bound_lsb"] == 0
    assert rows[ORT_PATH]["max_error_lsb"] <= END_TO_END_BOUND[fmt]
    assert all(worst <= 1 for worst, _ in report["verification"]["layerwise"].values())
    assert {"model.onnx", "layer_spec.json", "weights.bin"} <= set(report["files"])
    if fmt == "QDQ":  # integer requantization only: the fpga target's C and HLS board code is written
        assert {"c", "hls"} <= {name.split("/")[0] for name in report["files"]}
    else:
        assert "float32" in report["board_code_skipped"]

    graph = import_onnx(model)
    inputs = digits(64, train=False)
    np.save(workspace / "inputs.npy", inputs)
    logits = workspace / f"{model.stem}_hwsim.npy"
    result = invoke(hwsim_app, "run", model, "--inputs", workspace / "inputs.npy", "--out", logits, "--force")
    assert result.exit_code == 0, result.output
    quant = graph.tensors[graph.outputs[0]].quant
    simulated = np.rint(np.load(logits) / np.float32(quant.scale)).astype(np.int64)
    error = np.abs(simulated - original_integers(model, graph, inputs)).max()
    assert error <= (0 if exact_import(graph) else END_TO_END_BOUND[fmt])


@pytest.mark.parametrize(("acts", "weights"), [("s8", "s8"), ("u8", "s8"), ("u8", "u8")])
def test_qoperator_convs_gemm_and_global_pool_are_bit_exact(workspace, acts, weights):
    """QLinearConv / QGemm / QLinearGlobalAveragePool requantize in float32: the import is exact by construction
    (u8 weights: per-channel weight zero points)."""
    model = ort_model(workspace, "QOperator", acts, True, net="plain", weights=weights)
    graph = import_onnx(model)
    assert exact_import(graph)
    report = run_verify(model, workspace / f"{model.stem}_export")
    assert report["verification"]["exact_expected"] and report["verification"]["ok"]
    assert paths(report)[ORT_PATH]["max_error_lsb"] == 0
    assert all(worst == 0 for worst, _ in report["verification"]["layerwise"].values())


def test_reexported_onnx_runs_in_onnxruntime(workspace):
    """The float requantize form re-exports as Div/Mul/QuantizeLinear(scale 1) and loads with default options."""
    model = ort_model(workspace, "QOperator", "u8", True, net="plain")
    out = workspace / "reexport"
    run_verify(model, out)
    graph = import_onnx(model)
    inputs = digits(64, train=False)
    expected = original_integers(model, graph, inputs)
    quant = graph.tensors[graph.outputs[0]].quant
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"])
        logits = session.run(None, {session.get_inputs()[0].name: inputs})[0]
        got = np.rint(logits / np.float32(quant.scale)).astype(np.int64)
        assert np.abs(got - expected).max() <= 1  # float convolution in the re-export (docs/interop.md)


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
def test_relu6_depthwise_residual_view_and_matmul(workspace, fmt):
    """MobileNetV2-like block: Clip(0, 6), depthwise conv, residual add, x.view(N, -1) (Shape/Gather/Concat
    folded), MatMul + bias (QLinearMatMul + QLinearAdd of a constant in QOperator form)."""
    model = ort_model(workspace, fmt, "u8", True, net="inverted")
    report = run_verify(model, workspace / f"{model.stem}_export")
    assert paths(report)["hwsim"]["max_error_lsb"] == 0
    assert paths(report)[ORT_PATH]["max_error_lsb"] <= (1 if fmt == "QDQ" else 0)  # docs/interop.md
    assert all(worst <= 1 for worst, _ in report["verification"]["layerwise"].values())


def test_int4_weights_in_contrib_qdq(workspace):
    """weight_type=QInt4: com.microsoft DequantizeLinear of int4 initializers (4-bit int_affine weights)."""
    model = ort_model(workspace, "QDQ", "u8", True, weights="s4")
    graph = import_onnx(model)
    assert max(IntType.parse(w.attrs["dtype"]).bits for w in graph.weights.values() if "bias" not in w.name) <= 4
    report = run_verify(model, workspace / f"{model.stem}_export")
    assert paths(report)["hwsim"]["max_error_lsb"] == 0
    assert paths(report)[ORT_PATH]["max_error_lsb"] <= END_TO_END_BOUND["QDQ"]
