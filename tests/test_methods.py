"""Every method end to end (train or calibrate -> lower -> hwsim == reference -> ONNX runs), the shipped
checkpoints under `qexport --verify`, and the `qexport-train` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from cli_runner import invoke

from hwsim.engine import Engine
from qexport.checkpoint import load_checkpoint, save_float_weights
from qexport.cli import app as qexport_app
from qexport.data import DIGITS_SHAPE, digits_split
from qexport.export.onnx_qdq import export_onnx
from qexport.frontend.lower import lower
from qexport.methods import METHODS, run_method
from qexport.quant.config import QuantConfig
from qexport.reference import quantize_input, run_graph
from qexport.train_cli import app as train_app
from qexport.training import seed_everything, train
from qexport.zoo import build

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits():
    return digits_split()


@pytest.fixture(scope="module")
def float_model(digits):
    seed_everything(0)
    x_train, y_train, _, _ = digits
    return train(build("digits_cnn"), x_train, y_train, epochs=4, lr=1e-2, seed=0)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_end_to_end(method: str, float_model, digits) -> None:
    x_train, y_train, x_test, _ = digits
    seed_everything(1)
    config = QuantConfig(weight_bits=4, act_bits=4, pow2_scales=True)
    trained = run_method(method, float_model, config, (x_train[:512], y_train[:512]), epochs=2, seed=1)
    assert trained.config.weight_method == METHODS[method].weight_method
    for post_mac in ("lut", "split"):
        graph = lower(trained.model, DIGITS_SHAPE, name=method, post_mac=post_mac)
        feeds = {graph.inputs[0]: quantize_input(graph.tensors[graph.inputs[0]], x_test[:48])}
        expected = run_graph(graph, feeds)[graph.outputs[0]]
        outputs, _ = Engine(graph).run(feeds)
        np.testing.assert_array_equal(outputs[graph.outputs[0]], expected)
    session = ort.InferenceSession(export_onnx(graph).SerializeToString(), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {f"{graph.inputs[0]}__float": x_test[:48]})
    assert logits.shape == (48, 10) and np.isfinite(logits).all()


SHIPPED = sorted(p.name for p in (ROOT / "models").glob("*.ckpt"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_verifies(name: str, tmp_path: Path) -> None:
    args = [str(ROOT / "models" / name), "--target", "fpga", "--verify", "--samples", "96", "-o", str(tmp_path / "o")]
    result = invoke(qexport_app, *args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["verification"]["ok"] is True
    checkpoint = load_checkpoint(ROOT / "models" / name)
    assert checkpoint.info["qat_accuracy"] > 0.9


def test_train_cli_writes_a_checkpoint_from_float_weights(float_model, tmp_path: Path) -> None:
    weights = tmp_path / "float.safetensors"
    save_float_weights(weights, float_model, "digits_cnn", {}, float_accuracy=0.5)
    out = tmp_path / "m.ckpt"
    result = invoke(train_app, *["pot", "--float", str(weights), "--epochs", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    checkpoint = load_checkpoint(out)
    assert checkpoint.config.weight_method == "pot" and checkpoint.info["float_accuracy"] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["float.safetensors", "m.ckpt"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "unknown method 'nope'"),
        (["lsq", "--option", "novalue"], "expected KEY=VALUE"),
        (["lsq", "--weight-bits", "9"], "weight_bits=9 out of range"),
        (["lsq", "--float", "missing.safetensors"], "missing.safetensors: no such float weights file"),
    ],
)
def test_train_cli_bad_input(args: list[str], message: str, tmp_path: Path) -> None:
    result = invoke(train_app, *[*args, "-o", str(tmp_path / "x.ckpt")])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "x.ckpt").exists()


def test_train_cli_refuses_pickled_float_weights(tmp_path: Path) -> None:
    pickled = tmp_path / "float.pt"
    pickled.write_bytes(b"\x80\x04K\x01.")
    result = invoke(train_app, *["lsq", "--float", str(pickled), "-o", str(tmp_path / "x.ckpt")])
    assert result.exit_code == 2 and "never unpickles" in result.output
