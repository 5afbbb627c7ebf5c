"""Brevitas QAT models exported with ``export_onnx_qcdq`` (QuantizeLinear -> Clip -> DequantizeLinear).

Float and power-of-two (fixed-point) scales, 4 and 8 bits, per-tensor and per-channel weights; a few
training steps on digits. Power-of-two models are exact by construction (every float32 sum in
onnxruntime's convolution is exact below 2**24, and the requantize is a shift): the CLI enforces
0 LSB. Float-scale models are held to the bounds measured in docs/interop.md.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from cli_runner import invoke
from onnx_import_models import brevitas_model, digits

from hwsim.cli import app as hwsim_app
from qexport.cli import app as qexport_app
from qexport.frontend.onnx_import import import_onnx
from qexport.ir.dtypes import IntType
from qexport.verify_onnx import ORT_PATH, exact_import, onnxruntime_original, verify_import

pytestmark = pytest.mark.filterwarnings("ignore")
SAMPLES = 128
FLOAT_SCALE_BOUND = 1  # end-to-end output LSBs, docs/interop.md
CONFIGS = [(pot, bits, pc) for pot in (True, False) for bits in (4, 8) for pc in (False, True)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("brevitas_models")


@pytest.mark.parametrize(("pot", "bits", "per_channel"), CONFIGS)
def test_qcdq_import_matches_onnxruntime(workspace, pot, bits, per_channel):
    model = brevitas_model(workspace, pot, bits, per_channel)
    graph = import_onnx(model)
    assert graph.metadata["onnx_format"] == "brevitas_qcdq"
    assert exact_import(graph) == pot
    relus = [info for name, info in graph.tensors.items() if info.dtype == IntType(False, bits)]
    assert relus, "the QuantReLU Clip narrows the activations to their true width"
    out = workspace / f"{model.stem}_export"
    result = invoke(qexport_app, model, "--target", "fpga", "--verify", "--samples", SAMPLES, "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    rows = {row["path"]: row for row in report["verification"]["paths"]}
    assert rows["hwsim"]["max_error_lsb"] == 0
    assert rows[ORT_PATH]["max_error_lsb"] <= (0 if pot else FLOAT_SCALE_BOUND)
    assert all(worst <= (0 if pot else 1) for worst, _ in report["verification"]["layerwise"].values())

    inputs = digits(32, train=False)
    np.save(workspace / "inputs.npy", inputs)
    logits = workspace / f"{model.stem}_hwsim.npy"
    result = invoke(hwsim_app, "run", model, "--inputs", workspace / "inputs.npy", "--out", logits, "--force")
    assert result.exit_code == 0, result.output
    quant = graph.tensors[graph.outputs[0]].quant
    simulated = np.rint(np.load(logits) / np.float32(quant.scale)).astype(np.int64)
    expected = onnxruntime_original(graph, onnx.load(model), inputs)[graph.outputs[0]]
    assert np.abs(simulated - expected).max() <= (0 if pot else FLOAT_SCALE_BOUND)


@pytest.mark.parametrize("pot", [True, False])
def test_requantized_pool_output_and_signed_narrow_type(workspace, pot):
    """QuantIdentity after the max pool: QuantizeLinear of an on-grid tensor to another scale (add(t, t, 1, 0)
    + requantize), and a signed 4-bit Clip [-8, 7] narrowing the tensor to INT4."""
    model = brevitas_model(workspace, pot, 4, True, requantize_pool=True)
    graph = import_onnx(model)
    assert any(node.op.value == "add" and node.attrs["rhs_multiplier"] == 0 for node in graph.nodes)
    assert any(info.dtype == IntType(True, 4) for info in graph.tensors.values())
    result = verify_import(graph, onnx.load(model), digits(128, train=False))
    assert result.paths[0].max_error_lsb == 0 and result.exact_expected == pot
    assert result.paths[1].max_error_lsb <= (0 if pot else FLOAT_SCALE_BOUND)
    assert all(worst <= (0 if pot else 1) for worst, _ in result.layerwise.values())
