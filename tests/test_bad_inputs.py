"""Bad input to any of the three CLIs: exit code 2, one line ``error: ...``, no traceback, nothing written.

Every case runs in one shared workspace (also the working directory, so default output paths land
there) holding the user's files; the workspace is snapshotted (paths, modes, sizes, checksums)
before and after each case and must be identical. A few cases run the installed console scripts
in a subprocess: usage errors, and a full disk (a file-size limit makes every write past 4 kB fail).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import invoke
from safetensors.torch import load_file, save_file

from hwsim.cli import app as hwsim_app
from qexport.checkpoint import _read_header
from qexport.cli import app as qexport_app
from qexport.pipeline import run_export
from qexport.targets import load_target
from qexport.train_cli import app as train_app

ROOT = Path(__file__).resolve().parents[1]
APPS = {"qexport": qexport_app, "hwsim": hwsim_app, "qexport-train": train_app}
SCRIPTS = {name: shutil.which(name) for name in APPS}
FULL_DISK_BYTES = 4096
MARKER = "pwned"


@dataclass(frozen=True)
class Case:
    cli: str
    args: tuple
    expect: str  # text the one error line must contain


class Payload:
    """A pickle whose loading creates the marker file: proof that nothing unpickled it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def with_metadata(ws: Path, name: str, source: Path, **changes: str) -> Path:
    metadata = _read_header(source)
    metadata.update(changes)
    path = ws / name
    save_file(load_file(str(source)), str(path), metadata=metadata)
    return path


def with_state(ws: Path, name: str, source: Path, change) -> Path:
    state = load_file(str(source))
    change(state)
    path = ws / name
    save_file(state, str(path), metadata=_read_header(source))
    return path


def safetensors_with_header(ws: Path, name: str, header: bytes) -> Path:
    path = ws / name
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    return path


def target_file(ws: Path, name: str, edit=None, text: str | None = None) -> Path:
    """A copy of the shipped fpga target with one line replaced (``edit``: (old, new)) or given text."""
    base = (ROOT / "qexport" / "targets" / "fpga.toml").read_text()
    if edit is not None:
        old, new = edit
        assert old in base, old
        base = base.replace(old, new)
    path = ws / name
    path.write_text(text if text is not None else base)
    return path


def npy_with_header(ws: Path, name: str, shape: tuple[int, ...]) -> Path:
    """A valid .npy header declaring ``shape`` followed by far fewer bytes than it claims."""
    path = ws / name
    with path.open("wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": shape})
        handle.write(b"\0" * 256)
    return path


def build_cases(ws: Path) -> dict[str, Case]:
    good = ws / "model.ckpt"
    lsq = ws / "lsq.ckpt"
    post = ws / "post.ckpt"
    shutil.copy(ROOT / "models" / "digits_cnn_w4a4.ckpt", good)
    shutil.copy(ROOT / "models" / "digits_cnn_w4a4_lsq.ckpt", lsq)
    shutil.copy(ROOT / "models" / "digits_cnn_w4a4_post.ckpt", post)
    spec = ws / "export" / "layer_spec.json"
    run_export(good, load_target("fpga"), ws / "export")
    images = ws / "x.npy"
    np.save(images, np.zeros((4, 1, 8, 8), np.float32))
    (ws / "a_file").write_text("user data\n")
    (ws / "user_dir").mkdir()
    (ws / "user_dir" / "notes.txt").write_text("keep me\n")
    (ws / "foreign_export").mkdir()
    (ws / "foreign_export" / "model.onnx").write_text("the user's own model\n")
    data = good.read_bytes()
    config = json.loads(_read_header(good)["quant_config"])
    cases: dict[str, Case] = {}

    def qx(name: str, expect: str, *args, output: bool = True) -> None:
        full = (*args, "-o", ws / "out") if output else args
        cases[name] = Case("qexport", full, expect)

    # --- checkpoint files
    qx("checkpoint missing", "no such checkpoint", ws / "nope.ckpt")
    qx("checkpoint is a directory", "no such checkpoint", ws / "user_dir")
    (ws / "empty.ckpt").write_bytes(b"")
    qx("checkpoint empty", "truncated", ws / "empty.ckpt")
    (ws / "half.ckpt").write_bytes(data[: len(data) // 2])
    qx("checkpoint truncated tensors", "truncated", ws / "half.ckpt")
    (ws / "header.ckpt").write_bytes(data[:200])
    qx("checkpoint truncated header", "truncated safetensors header", ws / "header.ckpt")
    safetensors_with_header(ws, "badjson.ckpt", b"{not json at all}")
    qx("checkpoint header not JSON", "not valid JSON", ws / "badjson.ckpt")
    for protocol in (2, 4, 5):
        (ws / f"pickle{protocol}.ckpt").write_bytes(pickle.dumps(Payload(ws / MARKER), protocol=protocol))
        qx(f"checkpoint pickle protocol {protocol}", "never unpickles", ws / f"pickle{protocol}.ckpt")
    torch.save({"w": torch.zeros(2)}, ws / "torchsave.ckpt")
    qx("checkpoint torch.save zip", "never unpickles", ws / "torchsave.ckpt")
    save_file({"w": torch.zeros(2)}, str(ws / "foreign.ckpt"))
    qx("checkpoint foreign safetensors", "not a qexport checkpoint", ws / "foreign.ckpt")
    (ws / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    qx("checkpoint random bytes", "not a safetensors checkpoint", ws / "random.ckpt")
    safetensors_with_header(ws, "deep.ckpt", ('{"__metadata__": ' + nested(100_000) + "}").encode())
    qx("checkpoint header nested deeply", "nested too deeply", ws / "deep.ckpt")

    # --- checkpoint metadata
    def meta(name: str, expect: str, **changes: str) -> None:
        qx(name, expect, with_metadata(ws, name.replace(" ", "_") + ".ckpt", good, **changes))

    meta("metadata nested deeply", "nested too deeply", quant_config=nested(50_000))
    meta("metadata not JSON", "not valid JSON", quant_config="{oops")
    meta("metadata arch_kwargs list", "field arch_kwargs", arch_kwargs="[16, 32]")
    meta("metadata quant_config list", "field quant_config", quant_config="[4, 4]")
    meta("metadata info list", "field info", info="[1, 8, 8]")
    meta("metadata negative size", "field arch_kwargs.channels.0", arch_kwargs='{"channels": [-16, 32, 32]}')
    meta("metadata zero size", "field arch_kwargs.channels.1", arch_kwargs='{"channels": [16, 0, 32]}')
    meta("metadata absurd size", "field arch_kwargs.channels.2", arch_kwargs='{"channels": [16, 32, 1e12]}')
    meta(
        "metadata too many parameters",
        "parameters",
        architecture="resnet18",
        arch_kwargs='{"width": 1024, "num_classes": 10, "in_channels": 1, "image_size": 8}',
    )
    meta("metadata wrong input shape", "info.input_shape [1, 9, 9] does not match", info='{"input_shape": [1, 9, 9]}')
    meta("metadata input shape string", "field info.input_shape", info='{"input_shape": "1x8x8"}')
    meta("metadata unknown architecture", "unknown architecture 'vgg99'", architecture="vgg99")
    meta("metadata unknown architecture argument", "bad arguments", arch_kwargs='{"depth": 3}')
    meta(
        "metadata bits out of range", "weight_bits=9 out of range", quant_config=json.dumps(config | {"weight_bits": 9})
    )
    meta(
        "metadata bits as text",
        "field quant_config.weight_bits",
        quant_config=json.dumps(config | {"weight_bits": "4"}),
    )
    meta(
        "metadata flag as text",
        "field quant_config.pow2_scales",
        quant_config=json.dumps(config | {"pow2_scales": "no"}),
    )
    meta("metadata unknown config field", "unknown field(s) colour", quant_config=json.dumps(config | {"colour": 1}))
    meta(
        "metadata unknown option",
        "options: Additional properties are not allowed ('warp_factor' was unexpected)",
        quant_config=json.dumps(config | {"options": {"warp_factor": 9}}),
    )
    meta("metadata wrong format version", "not a qexport checkpoint", qexport_checkpoint="2")

    # --- checkpoint tensors
    def state(name: str, expect: str, change, source: Path = good) -> None:
        qx(name, expect, with_state(ws, name.replace(" ", "_") + ".ckpt", source, change))

    state("state NaN weight", "'conv1.weight' holds NaN", lambda s: s["conv1.weight"].view(-1)[0].fill_(float("nan")))
    state("state Inf weight", "'conv2.weight' holds NaN", lambda s: s["conv2.weight"].view(-1)[3].fill_(float("inf")))
    state(
        "state NaN step",
        "'conv1.weight_quant.step_param' holds NaN",
        lambda s: s["conv1.weight_quant.step_param"].fill_(float("nan")),
    )
    state(
        "state zero step",
        "state_zero_step.ckpt: quantizer 'conv2.weight_quant': step 1e-10 is outside",
        lambda s: s["conv2.weight_quant.step_param"].fill_(0.0),
        source=lsq,
    )
    state(
        "state overflowing step",
        "state_overflowing_step.ckpt: quantizer 'relu1_quant': step 3e+38 is outside",
        lambda s: s["relu1_quant.step_param"].fill_(3.0e38),
        source=lsq,
    )
    state(
        "state overflowing pow2 step",
        "state_overflowing_pow2_step.ckpt: quantizer 'relu1_quant': step inf is outside",
        lambda s: s["relu1_quant.step_param"].fill_(200.0),
    )
    state("state missing tensor", "does not match architecture", lambda s: s.pop("conv1.weight"))
    state(
        "state wrong tensor shape",
        "does not match architecture",
        lambda s: s.__setitem__("conv1.weight", torch.zeros(3, 1, 3, 3)),
    )

    # --- targets
    def tgt(name: str, expect: str, edit=None, text: str | None = None) -> None:
        path = target_file(ws, name.replace(" ", "_") + ".toml", edit, text)
        qx(name, expect, good, "--target", path)

    qx("target unknown name", "unknown target 'gpu9000'", good, "--target", "gpu9000")
    qx("target file missing", "no such target file", good, "--target", ws / "missing.toml")
    (ws / "latin1.toml").write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    qx("target not UTF-8", "latin1.toml: target file is not UTF-8", good, "--target", ws / "latin1.toml")
    tgt("target bad TOML", "invalid TOML", text="name = \n")
    tgt("target nested deeply", "nested too deeply", text="x = " + nested(5000) + "\n")
    tgt("target missing field", "onnx_native_bits", edit=("onnx_native_bits = [4, 8, 16]", ""))
    tgt("target zero array", "field hardware.array.0", edit=("array = [16, 16]", "array = [0, 16]"))
    tgt("target negative array", "field hardware.array.1", edit=("array = [16, 16]", "array = [16, -4]"))
    tgt("target zero clock", "field hardware.clock_mhz", edit=("clock_mhz = 200.0", "clock_mhz = 0.0"))
    tgt("target NaN clock", "field hardware.clock_mhz: must be a finite", edit=("clock_mhz = 200.0", "clock_mhz = nan"))
    tgt(
        "target zero DRAM bandwidth",
        "field hardware.memory.dram_bytes_per_cycle",
        edit=("dram_bytes_per_cycle = 8.0", "dram_bytes_per_cycle = 0.0"),
    )
    tgt("target unknown dataflow", "field hardware.dataflow", edit=('dataflow = "ws"', 'dataflow = "rs"'))
    tgt("target infinite accumulator", "field export.max_acc_bits", edit=("max_acc_bits = 32", "max_acc_bits = inf"))
    tgt(
        "target unsupported native width",
        "field export.onnx_native_bits.0",
        edit=("onnx_native_bits = [4, 8, 16]", "onnx_native_bits = [3, 8]"),
    )
    tgt(
        "target negative SRAM",
        "field hardware.memory.ifmap_sram_bytes",
        edit=("ifmap_sram_bytes = 65536", "ifmap_sram_bytes = -1"),
    )
    tgt("target negative energy", "field energy.sram_byte_pj", edit=("sram_byte_pj = 1.25", "sram_byte_pj = -1.0"))
    tgt(
        "target narrow accumulator",
        "model.ckpt: node 'conv1': accumulator needs",
        edit=("max_acc_bits = 32", "max_acc_bits = 12"),
    )
    path = target_file(ws, "no_post.toml", ('"int_affine", "pot", "post", "apot", "codebook"', '"int_affine", "pot"'))
    qx(
        "target lacks weight format",
        f"post.ckpt: layer 'conv2': weight format 'post' is not offered by {path}",
        post,
        "--target",
        path,
    )

    # --- qexport options
    qx("samples zero", "'--samples'", good, "--samples", "0", "--verify")
    qx("samples negative", "'--samples'", good, "--samples", "-5", "--verify")
    qx("native bits unsupported", "--onnx-native-bits '3'", good, "--onnx-native-bits", "3")
    qx("native bits not numbers", "expected comma-separated", good, "--onnx-native-bits", "four")
    qx("post mac unknown", "--post-mac 'fast'", good, "--post-mac", "fast")
    qx("unknown option", "No such option: --colour (see qexport --help)", good, "--colour", "red")
    qx("missing source", "Missing argument", output=False)

    # --- qexport outputs
    qx("output is a file", "not a directory", good, "-o", ws / "a_file", output=False)
    qx("output under a file", "a_file is a file", good, "-o", ws / "a_file" / "sub", output=False)
    qx("output non-empty user directory", "--force", good, "-o", ws / "user_dir", output=False)
    qx("output current directory", "--force", good, "-o", ".", output=False)
    qx(
        "output force over a foreign file",
        "model.onnx: not written by qexport",
        good,
        "-o",
        ws / "foreign_export",
        "--force",
        output=False,
    )
    qx("output name too long", "too long", good, "-o", ws / ("x" * 300), output=False)
    qx("output unwritable", "/sys/qexport_out", good, "-o", "/sys/qexport_out", output=False)

    # --- hwsim run
    def hw(name: str, expect: str, *args) -> None:
        cases[name] = Case("hwsim", args, expect)

    hw("spec missing", "cannot read layer spec", "run", ws / "nope.json", "--inputs", images)
    (ws / "spec_text.json").write_text("this is not json")
    hw("spec not JSON", "cannot read layer spec", "run", ws / "spec_text.json", "--inputs", images)
    (ws / "spec_deep.json").write_text(nested(100_000))
    hw("spec nested deeply", "nested too deeply", "run", ws / "spec_deep.json", "--inputs", images)
    spec_data = json.loads(spec.read_text())
    bad_layers = ws / "export_bad_layers"
    shutil.copytree(ws / "export", bad_layers)
    (bad_layers / "layer_spec.json").write_text(json.dumps(spec_data | {"layers": "conv"}))
    hw("spec schema violation", "field layers", "run", bad_layers / "layer_spec.json", "--inputs", images)
    bad_blob = ws / "export_bad_blob"
    shutil.copytree(ws / "export", bad_blob)
    blob = bytearray((bad_blob / "weights.bin").read_bytes())
    blob[40] ^= 0xFF
    (bad_blob / "weights.bin").write_bytes(bytes(blob))
    hw("spec weights corrupted", "checksum mismatch", "run", bad_blob / "layer_spec.json", "--inputs", images)

    def inputs(name: str, expect: str, array=None, path: Path | None = None, *extra) -> None:
        if path is None:
            path = ws / (name.replace(" ", "_") + ".npy")
            np.save(path, array, allow_pickle=True)
        hw(name, expect, "run", spec, "--inputs", path, *extra)

    np.savez(ws / "x.npz", x=np.zeros((4, 1, 8, 8), np.float32))
    inputs("inputs npz archive", "an .npz archive", path=ws / "x.npz")
    inputs("inputs strings", "dtype <U1", np.full((2, 1, 8, 8), "a"))
    inputs("inputs complex", "dtype complex64", np.zeros((2, 1, 8, 8), np.complex64))
    inputs("inputs objects", "dtype object", np.array([None] * 64, dtype=object).reshape(1, 1, 8, 8))
    inputs("inputs booleans", "dtype bool", np.zeros((2, 1, 8, 8), bool))
    inputs("inputs empty batch", "empty batch", np.zeros((0, 1, 8, 8), np.float32))
    inputs("inputs absurd batch", "header declares shape", path=npy_with_header(ws, "absurd.npy", (10**12, 1, 8, 8)))
    inputs("inputs wrong shape", "do not match the model input", np.zeros((2, 3, 5, 5), np.float32))
    inputs("inputs NaN", "NaN or infinite", np.full((2, 1, 8, 8), np.nan, np.float32))
    inputs("inputs Inf", "NaN or infinite", np.full((2, 1, 8, 8), np.inf, np.float64))
    inputs("inputs integers out of range", "outside the input type", np.full((2, 1, 8, 8), 1000, np.int64))
    (ws / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    inputs("inputs corrupt", "not a .npy array", path=ws / "garbage.npy")
    inputs("inputs missing", "no such inputs file", path=ws / "nope.npy")
    hw(
        "threads negative",
        "'--threads': Input should be greater than or equal to 1 (see hwsim run --help)",
        "run",
        spec,
        "--inputs",
        images,
        "--threads",
        "-3",
    )
    hw("threads zero", "'--threads'", "run", spec, "--inputs", images, "--threads", "0")
    hw("mode unknown", "unknown mode 'turbo'", "run", spec, "--inputs", images, "--mode", "turbo")
    hw("conv unknown", "unknown convolution path 'gpu'", "run", spec, "--inputs", images, "--conv", "gpu")
    hw("codebook style unknown", "unknown codebook style", "run", spec, "--inputs", images, "--codebook-style", "x")
    hw("out in missing directory", "does not exist", "run", spec, "--inputs", images, "--out", ws / "no" / "y.npy")
    hw("json is a directory", "names a directory", "run", spec, "--inputs", images, "--json", ws / "user_dir")
    hw("out exists", "a_file: --out: file exists", "run", spec, "--inputs", images, "--out", ws / "a_file")
    hw("plot under a file", "is not a directory", "run", spec, "--inputs", images, "--plot", ws / "a_file" / "p.png")
    hw("json unwritable", "cannot write in /sys", "run", spec, "--inputs", images, "--json", "/sys/run.json")
    hw("run unknown target", "unknown target", "run", spec, "--inputs", images, "--target", "gpu9000")

    # --- hwsim estimate
    hw("estimate batch zero", "'--batch'", "estimate", spec, "--batch", "0")
    hw("estimate array zero", "expected ROWSxCOLS", "estimate", spec, "--array", "0x16")
    hw("estimate array huge", "expected ROWSxCOLS", "estimate", spec, "--array", "99999x1")
    hw("estimate array text", "expected ROWSxCOLS", "estimate", spec, "--array", "big")
    hw("estimate dataflow unknown", "expected ws, os or is", "estimate", spec, "--dataflow", "rs")
    hw("estimate vector overrides", "do not apply", "estimate", spec, "--target", "arm", "--array", "8x8")
    zero_clock = target_file(ws, "hw_zero_clock.toml", ("clock_mhz = 200.0", "clock_mhz = 0.0"))
    hw("estimate zero clock", "hw_zero_clock.toml: field hardware.clock_mhz", "estimate", spec, "--target", zero_clock)
    no_hw = target_file(
        ws,
        "no_hardware.toml",
        text='name = "x"\n[export]\nonnx_native_bits = [8]\nmax_acc_bits = 32\nweight_formats = ["int_affine"]\n',
    )
    hw("estimate target without hardware", "no [hardware] section", "estimate", spec, "--target", no_hw)
    hw("estimate unknown command", "No such command", "simulate", spec)

    # --- qexport-train
    def tr(name: str, expect: str, *args) -> None:
        cases[name] = Case("qexport-train", (*args, "-o", ws / "trained.ckpt"), expect)

    tr("train unknown method", "unknown method 'nope'", "nope")
    tr("train NaN learning rate", "--lr nan", "lsq", "--lr", "nan")
    tr("train negative learning rate", "--lr -1.0", "lsq", "--lr", "-1")
    tr("train negative epochs", "'--epochs'", "lsq", "--epochs", "-1")
    tr("train negative seed", "'--seed'", "lsq", "--seed", "-1")
    tr("train bits out of range", "weight_bits=9 out of range", "lsq", "--weight-bits", "9")
    tr("train option without value", "expected KEY=VALUE", "lsq", "--option", "novalue")
    tr("train unknown option", "'warp_factor' was unexpected", "lsq", "--option", "warp_factor=9")
    tr("train option wrong type", "field asq_hidden", "asq", "--option", 'asq_hidden="four"')
    tr("train option NaN", "field rapq_lr", "rapq", "--option", "rapq_lr=NaN")
    tr("train float weights missing", "no such float weights file", "lsq", "--float", ws / "nope.safetensors")
    tr("train float weights pickled", "never unpickles", "lsq", "--float", ws / "pickle4.ckpt")
    cases["train output is a directory"] = Case(
        "qexport-train", ("lsq", "--float", ws / "float.safetensors", "-o", ws / "user_dir"), "names a directory"
    )
    cases["train output exists"] = Case(
        "qexport-train", ("lsq", "--float", ws / "float.safetensors", "-o", ws / "a_file"), "file exists"
    )
    shutil.copy(ROOT / "models" / "digits_cnn_float.safetensors", ws / "float.safetensors")
    return cases


def snapshot(ws: Path) -> dict[str, tuple]:
    entries = {}
    for path in sorted(ws.rglob("*")):
        info = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        entries[path.relative_to(ws).as_posix()] = (info.st_mode, info.st_size, digest)
    return entries


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory):
    ws = tmp_path_factory.mktemp("user")
    return ws, build_cases(ws)


def _case_clis() -> dict[str, str]:
    """Case name -> CLI, from a throw-away build of the cases (pytest needs the names at collection)."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        return {name: case.cli for name, case in build_cases(Path(scratch)).items()}


CASE_CLIS = _case_clis()
CASE_NAMES = sorted(CASE_CLIS)


def assert_one_line_error(code: int, stdout: str, stderr: str, expect: str) -> None:
    assert code == 2, (code, stdout, stderr)
    assert "Traceback" not in stdout + stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert expect in lines[0], (expect, lines[0])


def test_enough_cases_in_every_cli() -> None:
    per_cli = {cli: sum(1 for value in CASE_CLIS.values() if value == cli) for cli in APPS}
    assert len(CASE_NAMES) >= 60 and min(per_cli.values()) >= 10, per_cli


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


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FULL_DISK_BYTES, FULL_DISK_BYTES))


SUBPROCESS_CASES = {
    "qexport usage error": (["qexport", "--colour"], "No such option: --colour", False),
    "hwsim usage error": (["hwsim", "run", "--threads", "x"], "'--threads'", False),
    "train usage error": (["qexport-train", "--epochs", "many"], "'--epochs'", False),
    "qexport full disk": (["qexport", "{good}", "-o", "{ws}/full"], "File too large", True),
    "hwsim full disk": (
        ["hwsim", "run", "{spec}", "--inputs", "{x}", "--out", "{ws}/y.npy", "--json", "{ws}/run.json"],
        "File too large",
        True,
    ),
}


@pytest.mark.parametrize("name", sorted(SUBPROCESS_CASES))
def test_console_scripts_fail_in_one_line(name: str, workspace) -> None:
    ws, _ = workspace
    argv, expect, full_disk = SUBPROCESS_CASES[name]
    if SCRIPTS[argv[0]] is None:
        pytest.skip(f"console script {argv[0]} is not installed (pip install -e .)")
    subs = {"{good}": ws / "model.ckpt", "{ws}": ws, "{spec}": ws / "export" / "layer_spec.json", "{x}": ws / "x.npy"}
    args = [str(a) for a in argv]
    for key, value in subs.items():
        args = [a.replace(key, str(value)) for a in args]
    before = snapshot(ws)
    env = {**os.environ, "COLUMNS": "60"}
    done = subprocess.run(
        [SCRIPTS[argv[0]], *args[1:]],
        capture_output=True,
        text=True,
        cwd=ws,
        env=env,
        preexec_fn=_limit_file_size if full_disk else None,
        timeout=300,
        check=False,
    )
    assert_one_line_error(done.returncode, done.stdout, done.stderr, expect)
    assert snapshot(ws) == before, "the workspace changed"
