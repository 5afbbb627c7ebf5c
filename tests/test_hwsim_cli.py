"""hwsim run / estimate from the command line, and the cost model's bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from cli_runner import invoke

from hwsim.cli import app
from hwsim.cost.model import estimate, peak_activation_bytes
from hwsim.cost.systolic import compute_cycles
from hwsim.cost.targets import hardware_of
from qexport.cli import app as qexport_app
from qexport.data import digits_split
from qexport.ir.serialize import read_spec
from qexport.targets import load_target


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, digits_checkpoint: Path) -> Path:
    out = tmp_path_factory.mktemp("export") / "digits"
    result = invoke(qexport_app, *[str(digits_checkpoint), "--target", "fpga", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    return out


@pytest.mark.parametrize("path", ["auto", "float", "blas"])
def test_run_writes_onnx_comparable_outputs_json_and_plot(exported: Path, tmp_path: Path, path: str) -> None:
    x = digits_split()[2][:50]
    np.save(tmp_path / "x.npy", x)
    args = [
        "run",
        str(exported / "layer_spec.json"),
        "--inputs",
        str(tmp_path / "x.npy"),
        "--out",
        str(tmp_path / "y.npy"),
        "--json",
        str(tmp_path / "r.json"),
        "--plot",
        str(tmp_path / "r.png"),
        "--conv",
        path,
    ]
    result = invoke(app, *args)
    assert result.exit_code == 0, result.stderr
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)  # power-of-two model: bit-exact
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["batch"] == 50 and report["totals"]["macs"] == 50 * 451_904
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "latency" in result.stdout and "energy" in result.stdout


@pytest.mark.parametrize("array,dataflow", [("8x8", "os"), ("32x32", "is"), ("16x4", "ws")])
def test_estimate_overrides_match_the_systolic_model(exported: Path, tmp_path: Path, array: str, dataflow: str):
    result = invoke(
        app,
        *[
            "estimate",
            str(exported / "layer_spec.json"),
            "--array",
            array,
            "--dataflow",
            dataflow,
            "--json",
            str(tmp_path / "e.json"),
        ],
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "e.json").read_text())
    rows, cols = (int(v) for v in array.split("x"))
    graph = read_spec(exported / "layer_spec.json")
    from hwsim.cost.model import conv_shape

    expected = [
        compute_cycles(conv_shape(graph, n), rows, cols, dataflow) + 1
        for n in graph.nodes
        if n.op.value in ("conv2d", "linear")
    ]
    got = [row["compute_cycles"] for row in report["layers"] if row["op"] in ("conv2d", "linear")]
    assert got == expected and report["array"] == [rows, cols] and report["dataflow"] == dataflow


@pytest.mark.parametrize(
    "args,message",
    [
        (["estimate", "missing.json"], "cannot read layer spec"),
        (["estimate", "{spec}", "--target", "nope"], "unknown target"),
        (["estimate", "{spec}", "--array", "16by16"], "expected ROWSxCOLS"),
        (["estimate", "{spec}", "--dataflow", "xs"], "expected ws, os or is"),
        (["estimate", "{spec}", "--target", "arm", "--array", "8x8"], "do not apply"),
        (["run", "{spec}", "--inputs", "missing.npy"], "missing.npy: no such inputs file"),
        (["run", "{spec}", "--inputs", "{bad_shape}"], "do not match the model input"),
    ],
)
def test_bad_input_is_one_line(exported: Path, tmp_path: Path, args: list[str], message: str) -> None:
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 5, 5), np.float32))
    subs = {"{spec}": str(exported / "layer_spec.json"), "{bad_shape}": str(tmp_path / "bad.npy")}
    result = invoke(app, *[subs.get(a, a) for a in args])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_energy_and_footprint_follow_the_target_tables(exported: Path) -> None:
    graph = read_spec(exported / "layer_spec.json")
    hw = hardware_of(load_target("fpga"))
    base = estimate(graph, hw)
    doubled = estimate(graph, type(hw)(**{**hw.__dict__, "energy": {k: 2 * v for k, v in hw.energy.items()}}))
    assert doubled.total("energy_total_pj") == pytest.approx(2 * base.total("energy_total_pj"))
    data = base.to_dict()
    assert data["memory"]["weight_bytes"] == sum(row["weight_bytes"] for row in data["layers"])
    # weights are packed at their bit widths: 8-bit first/last layers, 4-bit middle ones
    expected_weights = (16 * 9 * 8 + 32 * 16 * 9 * 4 + 32 * 32 * 9 * 4 + 10 * 32 * 8) // 8
    assert data["memory"]["weight_bytes"] == expected_weights
    assert peak_activation_bytes(graph) >= max(row["output_bytes"] for row in data["layers"])
    assert data["latency_ms"] == pytest.approx(data["totals"]["cycles"] / (hw.clock_mhz * 1e3))
