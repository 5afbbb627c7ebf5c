"""The board-code paths of --verify (qexport.board_verify): host C build and HLS csim against the IR reference."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from cli_runner import invoke

from qexport import board_verify
from qexport.cli import app
from qexport.data import verification_data
from qexport.export.c_code import PLAIN_FILES as C_FILES
from qexport.export.c_code import TEMPLATES as C_TEMPLATES
from qexport.export.c_code import write_c
from qexport.export.c_pack import CExportError
from qexport.export.hls_code import PLAIN_FILES as HLS_FILES
from qexport.export.hls_code import TEMPLATES as HLS_TEMPLATES
from qexport.export.hls_code import ap_types_dir, write_hls
from qexport.ir.ops import Op
from qexport.pipeline import lower_checkpoint
from qexport.targets import load_target
from qexport.verify import verify

HAVE_GCC = shutil.which("gcc") is not None
HAVE_HLS = shutil.which("g++") is not None and ap_types_dir() is not None
needs_gcc = pytest.mark.skipif(not HAVE_GCC, reason="gcc not installed")


@pytest.fixture(scope="module")
def digits(digits_checkpoint: Path):
    export = lower_checkpoint(digits_checkpoint, load_target("fpga"))
    dataset = export.checkpoint.info.get("dataset", "synthetic")
    inputs, labels = verification_data(dataset, export.checkpoint.input_shape, 24)
    return export, inputs, labels


def board_rows(result) -> dict:
    return {p.path: p for p in result.paths if p.path in ("C (host gcc)", "HLS csim (g++)")}


@needs_gcc
def test_c_and_hls_rows_are_bit_exact(digits):
    export, inputs, labels = digits
    result = verify(export.graph, None, export.model, inputs, labels, boards=("c", "hls"))
    rows = board_rows(result)
    assert list(rows) == ["C (host gcc)", "HLS csim (g++)"]
    c = rows["C (host gcc)"]
    assert c.status == "ok" and c.bit_exact == c.total == inputs.shape[0] * 10 and c.max_error_lsb == 0
    hls = rows["HLS csim (g++)"]
    if HAVE_HLS:
        assert hls.status == "ok" and hls.bit_exact == hls.total
    else:
        assert hls.skipped and hls.status.startswith("skipped:")
    assert result.ok


def test_missing_compilers_are_stated_skips(digits, tmp_path, monkeypatch):
    export, inputs, labels = digits
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no gcc, no g++
    result = verify(export.graph, None, export.model, inputs, labels, boards=("c", "hls"))
    rows = board_rows(result)
    assert rows["C (host gcc)"].status == "skipped: gcc not found on PATH"
    assert rows["HLS csim (g++)"].status == "skipped: g++ not found on PATH"
    assert result.ok  # a path that cannot run is not a failure


def test_missing_ap_types_is_a_stated_skip(digits, monkeypatch):
    export, inputs, _ = digits
    monkeypatch.setattr(board_verify, "ap_types_dir", lambda: None)
    if shutil.which("g++") is None:
        pytest.skip("g++ not installed (the g++ check comes first)")
    run = board_verify.run_board("hls", export.graph, {export.graph.inputs[0]: inputs})
    assert run.outputs is None and run.skipped == "no ap_types headers (pip install hls4ml)"


@needs_gcc
def test_build_failure_fails_the_row(digits, monkeypatch):
    export, inputs, labels = digits
    monkeypatch.setattr(board_verify, "VERIFY_C_FLAGS", ["-O2", "-DQXM_ARENA_BYTES=1"])  # redefined: -Werror
    result = verify(export.graph, None, export.model, inputs, labels, boards=("c",))
    row = board_rows(result)["C (host gcc)"]
    assert row.error and row.status.startswith("FAIL (build failed:") and "QXM_ARENA_BYTES" in row.status
    assert not result.ok


def test_different_outputs_fail_the_row(digits, monkeypatch):
    export, inputs, labels = digits
    graph = export.graph

    def off_by_one(code, graph_, feeds):
        from qexport.reference import run_graph

        return board_verify.BoardRun(
            outputs={k: v + (k == graph.outputs[0]) for k, v in run_graph(graph_, feeds).items()}
        )

    monkeypatch.setattr("qexport.verify.run_board", off_by_one)
    result = verify(graph, None, export.model, inputs, labels, boards=("c",))
    row = board_rows(result)["C (host gcc)"]
    assert row.max_error_lsb == 1 and row.status == "FAIL (bound 0)" and not result.ok


@needs_gcc
def test_cli_verify_builds_outside_the_export(digits_lsq_checkpoint: Path, tmp_path: Path, monkeypatch):
    """--verify compiles in a temporary directory, removed afterwards; the export holds only generated sources."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "export"
    result = invoke(app, digits_lsq_checkpoint, "--target", "fpga", "-o", out, "--verify", "--samples", "16")
    assert result.exit_code == 0, result.output
    paths = {p["path"]: p for p in json.loads((out / "report.json").read_text())["verification"]["paths"]}
    for name in ("C (host gcc)", "HLS csim (g++)"):  # bit-exact although the steps are not powers of two
        assert paths[name]["bit_exact"] == paths[name]["total"] == 160 or paths[name]["skipped"], paths[name]
    assert sorted(p.name for p in (out / "c").iterdir()) == sorted([*C_FILES, *C_TEMPLATES])
    assert sorted(p.name for p in (out / "hls").iterdir()) == sorted([*HLS_FILES, *HLS_TEMPLATES])
    assert list(scratch.iterdir()) == []


def test_unsupported_requantize_form_is_refused(digits, tmp_path):
    """An attribute the kernels do not implement (here the float32 requantize form) names the layer."""
    export, _, _ = digits
    graph = export.graph
    node = next(n for n in graph.nodes if n.op is Op.REQUANTIZE)
    node.attrs["float_scale"] = [0.5]
    try:
        for writer in (write_c, write_hls):
            with pytest.raises(CExportError, match=rf"layer '{node.name}': requantize attribute float_scale"):
                writer(graph, tmp_path)
    finally:
        del node.attrs["float_scale"]
