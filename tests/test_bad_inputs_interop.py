"""Bad input to today's surfaces (ONNX import, --calibrate/--inputs, --memory-model, --rtl, qexport-dse):
exit code 2, one ``error:`` line naming the file/node/field, no traceback, the workspace unchanged.

Reuses the harness of tests/test_bad_inputs.py (snapshot, one-line check, pickle payload, target edits).
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_runner import invoke
from onnx import TensorProto, helper, numpy_helper
from onnx_import_models import digits, float_onnx, ort_model
from test_bad_inputs import MARKER, Payload, assert_one_line_error, snapshot, target_file

from hwsim.cli import app as hwsim_app
from qexport.cli import app as qexport_app
from qexport.dse.cli import app as dse_app

pytestmark = pytest.mark.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[1]
APPS = {"qexport": qexport_app, "hwsim": hwsim_app, "qexport-dse": dse_app}


@dataclass(frozen=True)
class Case:
    cli: str
    args: tuple
    expect: str


def mutated(ws: Path, source: Path, name: str, change) -> Path:
    model = onnx.load(str(source))
    change(model)
    path = ws / f"{name}.onnx"
    onnx.save_model(model, str(path))
    return path


def set_first_scale(value: float):
    def change(model: onnx.ModelProto) -> None:
        scale = next(i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT and "scale" in i.name)
        array = numpy_helper.to_array(scale).copy()
        array.flat[0] = value
        scale.CopyFrom(numpy_helper.from_array(array.astype(np.float32), scale.name))

    return change


def longer_per_channel(model: onnx.ModelProto) -> None:
    scale = next(i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT and list(i.dims)[:1] > [1])
    array = numpy_helper.to_array(scale)
    scale.CopyFrom(numpy_helper.from_array(np.concatenate([array, array[:1]]), scale.name))


def int32_zero_points(model: onnx.ModelProto) -> None:
    for zero in model.graph.initializer:
        if "zero_point" in zero.name and zero.data_type in (TensorProto.INT8, TensorProto.UINT8):
            zero.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(zero).astype(np.int32), zero.name))


def opset(version: int):
    def change(model: onnx.ModelProto) -> None:
        for entry in model.opset_import:
            if entry.domain in ("", "ai.onnx"):
                entry.version = version

    return change


def input_dim(index: int, value: int | str):
    def change(model: onnx.ModelProto) -> None:
        dim = model.graph.input[0].type.tensor_type.shape.dim[index]
        if isinstance(value, str):
            dim.ClearField("dim_value")
            dim.dim_param = value
        else:
            dim.dim_value = value

    return change


def huge_input(model: onnx.ModelProto) -> None:
    for index in (2, 3):
        model.graph.input[0].type.tensor_type.shape.dim[index].dim_value = 10**9


def external_initializer(location: str):
    def change(model: onnx.ModelProto) -> None:
        weight = next(i for i in model.graph.initializer if len(i.dims) == 4)
        weight.data_location = TensorProto.EXTERNAL
        weight.ClearField("raw_data")
        entry = weight.external_data.add()
        entry.key, entry.value = "location", location

    return change


def external_constant(model: onnx.ModelProto) -> None:
    tensor = helper.make_tensor("c", TensorProto.FLOAT, [4], [0.0] * 4)
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../../../etc/passwd"
    model.graph.node.insert(0, helper.make_node("Constant", [], ["c_out"], value=tensor, name="cst"))


def op_type(old: str, new: str, domain: str = ""):
    def change(model: onnx.ModelProto) -> None:
        node = next(n for n in model.graph.node if n.op_type == old)
        node.op_type, node.domain = new, domain
        if domain:
            model.opset_import.append(helper.make_opsetid(domain, 1))

    return change


def build_cases(ws: Path, models: dict[str, Path]) -> dict[str, Case]:
    qdq, flt = models["qdq"], models["float"]
    x = ws / "x.npy"
    np.save(x, digits(4, train=False))
    (ws / "user_dir").mkdir()
    (ws / "user_dir" / "notes.txt").write_text("keep me\n")
    (ws / "user_out" / "rtl").mkdir(parents=True)
    (ws / "user_out" / "rtl" / "mine.v").write_text("module mine; endmodule\n")
    cases: dict[str, Case] = {}

    def qx(name: str, expect: str, *args) -> None:
        cases[name] = Case("qexport", (*args, "-o", ws / "out"), expect)

    # --- ONNX files
    for name, data in {"empty": b"", "text": b"hello", "truncated": qdq.read_bytes()[:1000]}.items():
        (ws / f"{name}.onnx").write_bytes(data)
        qx(f"onnx {name}", "not an ONNX model", ws / f"{name}.onnx")
    (ws / "pickled.onnx").write_bytes(pickle.dumps(Payload(ws / MARKER)))
    qx("onnx pickled", "not an ONNX model", ws / "pickled.onnx")
    for name, location in {"relative": "../../etc/passwd", "absolute": "/etc/passwd"}.items():
        path = mutated(ws, qdq, f"external_{name}", external_initializer(location))
        qx(f"onnx external data {name}", "external data are not supported", path)
    path = mutated(ws, qdq, "external_constant", external_constant)
    qx("onnx external data in a Constant", "points outside the directory", path)
    cases["hwsim run external data in a Constant"] = Case(
        "hwsim", ("run", path, "--inputs", x), "points outside the directory"
    )
    qx("onnx unknown op", "/c1/Conv", mutated(ws, qdq, "unknown_op", op_type("Conv", "Erf")))
    qx("onnx custom domain", "custom_domain.onnx", mutated(ws, qdq, "custom_domain", op_type("Conv", "Conv", "com.x")))
    qx("onnx dynamic height", "window larger than the padded input", mutated(ws, qdq, "dyn_h", input_dim(2, "H")))
    qx("onnx zero-sized dim", "dimension 2 is 0", mutated(ws, qdq, "zero_dim", input_dim(2, 0)))
    qx("onnx huge input", "elements per sample", mutated(ws, qdq, "huge_input", huge_input))
    qx("onnx opset too new", "opset 99 outside", mutated(ws, qdq, "opset99", opset(99)))
    qx("onnx opset too old", "onnx.checker rejects", mutated(ws, qdq, "opset5", opset(5)))
    qx("onnx NaN scale", "positive and finite", mutated(ws, qdq, "scale_nan", set_first_scale(float("nan"))))
    qx("onnx Inf scale", "must be positive and finite", mutated(ws, qdq, "scale_inf", set_first_scale(float("inf"))))
    qx("onnx negative scale", "positive and finite", mutated(ws, qdq, "scale_neg", set_first_scale(-0.5)))
    qx("onnx zero scale", "positive and finite", mutated(ws, qdq, "scale_zero", set_first_scale(0.0)))
    qx("onnx int32 activations QDQ", "32-bit", mutated(ws, qdq, "int32_qdq", int32_zero_points))
    qx("onnx int32 activations QOperator", "32-bit", mutated(ws, models["qop"], "int32_qop", int32_zero_points))
    qx("onnx per-channel length", "/c1/Conv", mutated(ws, qdq, "per_channel", longer_per_channel))

    # --- --calibrate and --inputs
    def npy(name: str, array: np.ndarray) -> Path:
        np.save(ws / name, array, allow_pickle=True)
        return ws / name

    qx("float model without --calibrate", "--calibrate", flt)
    calibrate = {
        "wrong shape": (npy("cal_shape.npy", np.zeros((4, 1, 9, 9), np.float32)), "does not match"),
        "infinite": (npy("cal_inf.npy", np.full((4, 1, 8, 8), np.inf, np.float32)), "NaN or infinite"),
        "object dtype": (npy("cal_obj.npy", np.array([[1], [None]], dtype=object)), "allow_pickle=False"),
        "empty": (npy("cal_empty.npy", np.zeros((0, 1, 8, 8), np.float32)), "0 calibration samples"),
        "complex": (npy("cal_complex.npy", np.zeros((4, 1, 8, 8), np.complex64)), "dtype complex64"),
        "missing": (ws / "nope.npy", "no such calibration file"),
    }
    (ws / "cal_pickle.npy").write_bytes(pickle.dumps(Payload(ws / MARKER)))
    calibrate["pickled"] = (ws / "cal_pickle.npy", "not a .npy array")
    for name, (path, expect) in calibrate.items():
        qx(f"calibrate {name}", expect, flt, "--calibrate", path)
    qx("calibrate a quantized model", "already quantized", qdq, "--calibrate", x)
    inputs = {
        "strings": (npy("in_str.npy", np.array(["a"] * 4)), "dtype <U1"),
        "bool": (npy("in_bool.npy", np.zeros((4, 1, 8, 8), bool)), "dtype bool"),
        "integers out of range": (npy("in_big.npy", np.full((4, 1, 8, 8), 10**12, np.int64)), "outside the input"),
        "NaN": (npy("in_nan.npy", np.full((4, 1, 8, 8), np.nan, np.float32)), "NaN or infinite"),
        "pickled": (ws / "cal_pickle.npy", "not a .npy array"),
    }
    for name, (path, expect) in inputs.items():
        qx(f"verify inputs {name}", expect, qdq, "--verify", "--inputs", path)

    # --- --memory-model and hardware.memory_model
    def hw(name: str, expect: str, *args) -> None:
        cases[name] = Case("hwsim", args, expect)

    hw("memory model unknown", "--memory-model 'dram'", "estimate", qdq, "--memory-model", "dram")
    hw("memory model empty", "--memory-model ''", "estimate", qdq, "--memory-model", "")
    hw("memory model on run", "No such option: --memory-model", "run", qdq, "--inputs", x, "--memory-model", "x")
    for name, value in {"unknown": '"dram"', "list": '["scalesim"]', "number": "3"}.items():
        path = target_file(ws, f"mm_{name}.toml", ('model = "systolic"', f'model = "systolic"\nmemory_model = {value}'))
        hw(f"target memory_model {name}", "field hardware.memory_model", "estimate", qdq, "--target", path)

    # --- --rtl
    qx("rtl on a vector target", "--rtl needs a systolic", qdq, "--target", "arm", "--rtl")
    zero = target_file(ws, "array_zero.toml", ("array = [16, 16]", "array = [0, 16]"))
    qx("rtl zero array", "field hardware.array.0", qdq, "--target", zero, "--rtl")
    huge = target_file(ws, "array_huge.toml", ("array = [16, 16]", "array = [100000, 100000]"))
    qx("rtl huge array", "field hardware.array.1", qdq, "--target", huge, "--rtl")
    cases["rtl into a user directory"] = Case("qexport", (qdq, "--rtl", "-o", ws / "user_out"), "not empty")
    cases["rtl --force keeps a user file"] = Case(
        "qexport", (qdq, "--rtl", "--force", "-o", ws / "user_out"), "mine.v: not written by qexport"
    )

    # --- qexport-dse
    base = (ROOT / "docs" / "dse" / "space.toml").read_text().replace("../../models", str(ROOT / "models"))

    def space(name: str, text: str) -> Path:
        (ws / name).write_text(text)
        return ws / name

    def dse(name: str, expect: str, path: Path, *extra) -> None:
        cases[name] = Case("qexport-dse", (path, "-o", ws / "dse_out", "--db", ws / "dse.sqlite", *extra), expect)

    good = space("space.toml", base)
    dse("dse missing space", "no such space file", ws / "nope.toml")
    dse("dse bad TOML", "invalid TOML", space("bad.toml", "[quantization\n"))
    dse("dse unknown key", "'colour' was unexpected", space("unknown.toml", base + "\ncolour = 1\n"))
    dse("dse wrong type", "field quantization.trials", space("type.toml", base.replace("trials = 6", 'trials = "6"')))
    dse("dse empty axis", "field quantization.act_bits", space("axis.toml", base.replace("[4, 8]", "[]")))
    dse("dse unknown method", "unknown method 'nope'", space("method.toml", base.replace('"rapq"', '"nope"')))
    dse("dse unknown target", "field hardware.target.1", space("target.toml", base.replace('"asic"', '"gpu"')))
    missing = base.replace(str(ROOT / "models" / "digits_cnn_float.safetensors"), "nope.safetensors")
    dse("dse missing float weights", "field float_weights", space("float.toml", missing))
    dse("dse scheduler scheme", "expected an address", good, "--scheduler", "http://x")
    dse("dse scheduler without port", "missing port number", good, "--scheduler", "tcp://")
    dse("dse scheduler unreachable", "cannot connect", good, "--scheduler", "tcp://127.0.0.1:1")
    cases["dse output with user files"] = Case("qexport-dse", (good, "-o", ws / "user_dir"), "not empty")
    (ws / "corrupt.sqlite").write_bytes(b"garbage" * 100)
    (ws / "notes.txt").write_text("user text\n")
    for name in ("corrupt.sqlite", "notes.txt"):
        cases[f"dse db {name}"] = Case(
            "qexport-dse",
            (good, "-o", ws / "dse_out", "--db", ws / name, "--scheduler", "tcp://127.0.0.1:1"),
            "cannot use as the results database",
        )
    dse("dse workers 0", "'--workers'", good, "--workers", "0")
    cases["dse no arguments"] = Case("qexport-dse", (), "Missing argument 'SPACE.toml'")
    return cases


def build_models(where: Path) -> dict[str, Path]:
    return {
        "qdq": ort_model(where, "QDQ", "s8", True, net="plain"),
        "qop": ort_model(where, "QOperator", "u8", True, net="plain"),
        "float": float_onnx(where / "f.onnx", net="plain"),
    }


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, models):
    ws = tmp_path_factory.mktemp("user")
    return ws, build_cases(ws, models)


def _case_names() -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        return sorted(build_cases(Path(scratch), build_models(Path(scratch))))


CASE_NAMES = _case_names()


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input(name: str, workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    ws, cases = workspace
    case = cases[name]
    monkeypatch.chdir(ws)
    before = snapshot(ws)
    result = invoke(APPS[case.cli], *case.args)
    assert_one_line_error(result.exit_code, result.stdout, result.stderr, case.expect)
    assert snapshot(ws) == before, "the workspace changed"
    assert not (ws / MARKER).exists(), "a pickled payload was executed"


@pytest.mark.parametrize("script", ["qexport", "qexport-train", "hwsim", "qexport-dse"])
def test_help_works(script: str) -> None:
    path = shutil.which(script)
    if path is None:
        pytest.skip(f"console script {script} is not installed (pip install -e .)")
    done = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "Usage" in done.stdout and not done.stderr.strip(), done.stderr


SCRIPT_CASES = {
    "qexport-dse usage error": (["qexport-dse", "--colour"], "No such option: --colour"),
    "qexport-dse bad scheduler": (["qexport-dse", "{space}", "--scheduler", "tcp://", "-o", "{ws}/d"], "port"),
    "qexport-dse missing space": (["qexport-dse", "{ws}/nope.toml"], "no such space file"),
    "qexport bad ONNX": (["qexport", "{ws}/text.onnx", "-o", "{ws}/o"], "not an ONNX model"),
    "qexport zero scale": (["qexport", "{ws}/scale_zero.onnx", "-o", "{ws}/o"], "positive and finite"),
}


@pytest.mark.parametrize("name", sorted(SCRIPT_CASES))
def test_console_scripts_fail_in_one_line(name: str, workspace) -> None:
    ws, _ = workspace
    argv, expect = SCRIPT_CASES[name]
    path = shutil.which(argv[0])
    if path is None:
        pytest.skip(f"console script {argv[0]} is not installed (pip install -e .)")
    args = [a.replace("{ws}", str(ws)).replace("{space}", str(ws / "space.toml")) for a in argv[1:]]
    before = snapshot(ws)
    done = subprocess.run(
        [path, *args], capture_output=True, text=True, cwd=ws, env={**os.environ, "COLUMNS": "60"}, timeout=120
    )
    assert_one_line_error(done.returncode, done.stdout, done.stderr, expect)
    assert snapshot(ws) == before, "the workspace changed"
