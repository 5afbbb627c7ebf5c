"""The qexport CLI: the happy path, and bad inputs that must fail in one line with exit code 2."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import jsonschema
import pytest
from cli_runner import invoke as run
from safetensors.torch import save_file
from torch import nn

from qexport import zoo
from qexport.checkpoint import _read_header, load_checkpoint, save_checkpoint
from qexport.cli import app
from qexport.ir.serialize import load_schema, read_spec


def invoke(*args: object):
    return run(app, *args)


def test_export_with_verify_writes_every_file(digits_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    result = invoke(digits_checkpoint, "--target", "fpga", "-o", out, "--verify", "--samples", "64")
    assert result.exit_code == 0, result.stderr
    files = ["c", "hls", "layer_spec.json", "model.onnx", "report.json", "weights.bin"]
    assert sorted(p.name for p in out.iterdir()) == files
    report = json.loads((out / "report.json").read_text())
    assert report["verification"]["ok"] and report["verification"]["samples"] == 64
    jsonschema.validate(json.loads((out / "layer_spec.json").read_text()), load_schema())
    assert read_spec(out / "layer_spec.json").outputs
    assert "bit-exact" in result.stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging directory left behind"


def test_rtl_flag_writes_a_simulatable_folder_per_layer(digits_checkpoint: Path, tmp_path: Path) -> None:
    """--rtl: rtl/<layer>/ with the PE, array, sequencer, testbench, vectors, expected.txt and a Makefile (in the
    report's file list); the fc testbench runs under Icarus and logs every result (numbers: tests/test_rtl_array.py)."""
    import shutil
    import subprocess

    out = tmp_path / "export"
    result = invoke(digits_checkpoint, "--target", "fpga", "-o", out, "--rtl")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (out / "rtl").iterdir()) == ["conv1", "conv2", "conv3", "fc"]
    fc = out / "rtl" / "fc"
    names = {p.name for p in fc.iterdir()}
    assert {"Makefile", "expected.txt", "wmem.hex", "xmem.hex", "tb_fc.v", "ws_seq_fc.v"} <= names
    files = json.loads((out / "report.json").read_text())["files"]
    assert "rtl/fc/tb_fc.v" in files
    if shutil.which("iverilog") and shutil.which("make"):
        subprocess.run(["make", "-s", "iverilog"], cwd=fc, check=True, capture_output=True)
        results = [line for line in (fc / "out.txt").read_text().splitlines() if line.startswith("O ")]
        assert len(results) == 16 * 2  # 16 columns x 2 row folds (32 inputs), one vector each
    refused = invoke(digits_checkpoint, "--target", "arm", "-o", tmp_path / "arm", "--rtl")
    assert refused.exit_code == 2 and "systolic" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_default_output_directory(digits_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert invoke(digits_checkpoint, "--target", "arm").exit_code == 0
    assert (tmp_path / "digits_cnn_w4a4_arm" / "model.onnx").is_file()
    again = invoke(digits_checkpoint, "--target", "arm")
    assert again.exit_code == 2 and "--force" in again.stderr  # a second export never replaces silently
    assert invoke(digits_checkpoint, "--target", "arm", "--force").exit_code == 0  # replacing is atomic too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits_cnn_w4a4_arm"]
    assert not [p for p in (tmp_path / "digits_cnn_w4a4_arm").iterdir() if p.name.startswith(".")]


class Unsupported(nn.Module):
    input_shape = (1, 8, 8)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.act = nn.GELU()
        self.fc = nn.Linear(4 * 36, 3)

    def forward(self, x):
        return self.fc(nn.functional.gelu(self.conv(x)).flatten(1))


def _write_checkpoint(path: Path, source: Path, **metadata_changes: str) -> Path:
    """Copy a checkpoint with some metadata fields replaced."""
    from safetensors.torch import load_file

    metadata = _read_header(source)
    metadata.update(metadata_changes)
    save_file(load_file(str(source)), str(path), metadata=metadata)
    return path


class Marker:
    def __reduce__(self):
        return (Path.touch, (Path(MARKER_PATH[0]),))


MARKER_PATH: list[str] = [""]


def bad_cases(tmp: Path, good: Path) -> dict[str, tuple[list, str]]:
    """name -> (CLI arguments, text the one-line error must contain)."""
    cases: dict[str, tuple[list, str]] = {}
    cases["missing file"] = ([tmp / "nope.ckpt"], "no such checkpoint")
    (tmp / "empty.ckpt").write_bytes(b"")
    cases["empty file"] = ([tmp / "empty.ckpt"], "truncated")
    data = good.read_bytes()
    (tmp / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    cases["truncated tensors"] = ([tmp / "truncated.ckpt"], "truncated")
    (tmp / "header.ckpt").write_bytes(data[:200])
    cases["truncated header"] = ([tmp / "header.ckpt"], "truncated.ckpt" if False else "header")
    (tmp / "garbage.ckpt").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    cases["corrupt header"] = ([tmp / "garbage.ckpt"], "corrupt")
    MARKER_PATH[0] = str(tmp / "pwned")
    (tmp / "pickled.ckpt").write_bytes(pickle.dumps(Marker()))
    cases["pickled code"] = ([tmp / "pickled.ckpt"], "never unpickles")
    save_file({"w": __import__("torch").zeros(2)}, str(tmp / "foreign.ckpt"))
    cases["foreign safetensors"] = ([tmp / "foreign.ckpt"], "not a qexport checkpoint")
    cases["unknown target"] = ([good, "--target", "gpu9000"], "unknown target 'gpu9000'")
    (tmp / "broken.toml").write_text('name = "x"\n[export]\nmax_acc_bits = 32\n')
    cases["target missing field"] = ([good, "--target", tmp / "broken.toml"], "onnx_native_bits")
    (tmp / "syntax.toml").write_text("name = \n")
    cases["target bad toml"] = ([good, "--target", tmp / "syntax.toml"], "invalid TOML")
    (tmp / "narrow.toml").write_text(
        'name = "narrow"\n[export]\nonnx_native_bits = [8]\nmax_acc_bits = 12\nweight_formats = ["int_affine"]\n'
    )
    cases["accumulator overflow"] = ([good, "--target", tmp / "narrow.toml"], "accumulator needs")
    cases["unknown architecture"] = (
        [_write_checkpoint(tmp / "arch.ckpt", good, architecture="vgg99")],
        "unknown architecture 'vgg99'",
    )
    bits = json.loads(_read_header(good)["quant_config"]) | {"weight_bits": 9}
    cases["bit width out of range"] = (
        [_write_checkpoint(tmp / "bits.ckpt", good, quant_config=json.dumps(bits))],
        "weight_bits=9 out of range",
    )
    cases["shape mismatch"] = (
        [_write_checkpoint(tmp / "shape.ckpt", good, arch_kwargs=json.dumps({"channels": [8, 32, 32]}))],
        "does not match architecture",
    )
    cases["bad architecture arguments"] = (
        [_write_checkpoint(tmp / "kw.ckpt", good, arch_kwargs=json.dumps({"depth": 3}))],
        "bad arguments",
    )
    cases["malformed metadata"] = (
        [_write_checkpoint(tmp / "meta.ckpt", good, quant_config="{oops")],
        "malformed checkpoint metadata",
    )
    zoo.ARCHITECTURES["unsupported_test_net"] = Unsupported
    cases["unsupported layer"] = (
        [_write_checkpoint(tmp / "gelu.ckpt", good, architecture="unsupported_test_net", arch_kwargs="{}")],
        "unsupported operation",
    )
    (tmp / "a_file").write_text("")
    cases["output is a file"] = ([good, "-o", tmp / "a_file"], "not a directory")
    return cases


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory, digits_checkpoint: Path):
    tmp = tmp_path_factory.mktemp("bad")
    built = bad_cases(tmp, digits_checkpoint)
    yield tmp, built
    zoo.ARCHITECTURES.pop("unsupported_test_net", None)


CASE_NAMES = [
    "missing file",
    "empty file",
    "truncated tensors",
    "truncated header",
    "corrupt header",
    "pickled code",
    "foreign safetensors",
    "unknown target",
    "target missing field",
    "target bad toml",
    "accumulator overflow",
    "unknown architecture",
    "bit width out of range",
    "shape mismatch",
    "bad architecture arguments",
    "malformed metadata",
    "unsupported layer",
    "output is a file",
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_fails_in_one_line(name: str, cases, tmp_path: Path) -> None:
    tmp, built = cases
    args, expected = built[name]
    if "-o" not in args:
        args = [*args, "-o", tmp_path / "out"]
    result = invoke(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in " ".join(result.stderr.split()), result.stderr
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not (tmp / "pwned").exists(), "a pickled payload was executed"


def test_every_case_is_listed(cases) -> None:
    assert sorted(cases[1]) == sorted(CASE_NAMES) and len(CASE_NAMES) >= 15


def test_checkpoint_round_trip(digits_checkpoint: Path, tmp_path: Path) -> None:
    import torch

    original = load_checkpoint(digits_checkpoint)
    save_checkpoint(tmp_path / "copy.ckpt", original)
    copy = load_checkpoint(tmp_path / "copy.ckpt")
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(original.model(x), copy.model(x))
    assert copy.info == original.info and copy.config == original.config
