"""The CLIs on QONNX files: qexport imports (and --verify runs the qonnx executor on the original), hwsim run
simulates it, and unsupported patterns exit 2 with one line naming the node and op."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("qonnx", reason="the qonnx executor is the oracle")

from cli_runner import invoke  # noqa: E402
from qonnx_support import GraphBuilder, qonnx_execute  # noqa: E402

from hwsim.cli import app as hwsim_app  # noqa: E402
from qexport.cli import app  # noqa: E402

SHAPE = (1, 2, 6, 6)


def _conv_model(tail: str = "quant", mode: str = "ROUND") -> onnx.ModelProto:
    """Quant(x) -> Conv(Quant(W), Quant(b)) -> [tail] -> Quant: power-of-two scales."""
    rng = np.random.default_rng(0)
    b = GraphBuilder(SHAPE)
    x = b.quant("x", 2.0**-4, 0, 8, "quant_in")
    w = b.quant(b.constant(rng.normal(0, 1, (3, 2, 3, 3))), 2.0**-3, 0, 4, "quant_w", 1, 1)
    bias = b.quant(b.constant(rng.normal(0, 1, 3)), 2.0**-7, 0, 32, "quant_b")
    acc = b.node("Conv", [x, w, bias], "conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    acc = b.node("Sigmoid", [acc], "squash") if tail == "sigmoid" else b.node("Relu", [acc], "relu")
    out = b.quant(acc, 2.0**-2, 0, 4, "act_quant", 0, 0, mode)
    return b.model(out, [1, 3, 6, 6])


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def test_qexport_verify_runs_the_qonnx_executor(tmp_path: Path):
    source = _save(_conv_model(), tmp_path / "conv.onnx")
    result = invoke(app, source, "-o", tmp_path / "out", "--verify", "--samples", "16")
    assert result.exit_code == 0, result.output
    verification = json.loads((tmp_path / "out" / "report.json").read_text())["verification"]
    paths = {path["path"]: path for path in verification["paths"]}
    assert verification["exact_expected"] and verification["ok"]
    assert paths["qonnx executor (original file)"]["max_error_lsb"] == 0 and paths["hwsim"]["max_error_lsb"] == 0


def test_hwsim_run_on_a_qonnx_file_equals_the_executor(tmp_path: Path):
    model = _conv_model()
    source = _save(model, tmp_path / "conv.onnx")
    inputs = np.random.default_rng(1).standard_normal((3, *SHAPE[1:])).astype(np.float32)
    np.save(tmp_path / "x.npy", inputs)
    result = invoke(hwsim_app, "run", source, "--inputs", tmp_path / "x.npy", "--out", tmp_path / "y.npy")
    assert result.exit_code == 0, result.output
    expected = np.concatenate([qonnx_execute(model, inputs[i : i + 1]) for i in range(len(inputs))])
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)


@pytest.mark.parametrize(
    ("tail", "mode", "message"),
    [
        ("sigmoid", "ROUND", "node 'squash' (Sigmoid): op Sigmoid is not supported"),
        ("relu", "HALF_UP", "node 'act_quant' (Quant): rounding_mode HALF_UP cannot be expressed"),
        ("relu", "NEAREST", "node 'act_quant' (Quant): unknown rounding_mode 'NEAREST'"),
    ],
)
def test_unsupported_patterns_exit_2_with_one_line(tmp_path: Path, tail: str, mode: str, message: str):
    source = _save(_conv_model(tail, mode), tmp_path / "bad.onnx")
    result = invoke(app, source, "-o", tmp_path / "out")
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "bad.onnx" in lines[0], result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("cleanup", [False, True])
def test_qexport_verify_on_a_brevitas_export(tmp_path: Path, cleanup: bool):
    """A real export_qonnx file (raw and cleaned): --verify is exact against the qonnx executor on it."""
    pytest.importorskip("brevitas", reason="Brevitas writes the QONNX file")
    import torch
    from qonnx_support import cleaned, export_brevitas
    from test_qonnx_import import ConvNet

    torch.manual_seed(7)
    module = ConvNet(True, 4, 4, True, "avg")
    model = export_brevitas(module, torch.randn(1, *module.in_shape))
    source = _save(cleaned(model) if cleanup else model, tmp_path / "brevitas.onnx")
    result = invoke(app, source, "-o", tmp_path / "out", "--verify", "--samples", "24")
    assert result.exit_code == 0, result.output
    verification = json.loads((tmp_path / "out" / "report.json").read_text())["verification"]
    assert verification["exact_expected"] and verification["ok"]
    assert {path["path"]: path["max_error_lsb"] for path in verification["paths"]} == {
        "hwsim": 0,
        "qonnx executor (original file)": 0,
    }
