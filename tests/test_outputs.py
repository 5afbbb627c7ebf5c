"""Outputs never cost a user a file: export directories, --force, umask modes, and checkpoint sniffing."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest
from cli_runner import invoke
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from qexport.checkpoint import _read_header, _sniff
from qexport.cli import app
from qexport.errors import CheckpointError
from qexport.outputs import OutputError, export_directory, file_manifest

EXPORT_FILES = ["c", "hls", "layer_spec.json", "model.onnx", "report.json", "weights.bin"]  # fpga writes c/ and hls/


def test_export_into_existing_empty_directory_and_current_directory(
    digits_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "empty").mkdir()
    assert invoke(app, digits_checkpoint, "-o", tmp_path / "empty").exit_code == 0
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == EXPORT_FILES
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert invoke(app, digits_checkpoint, "-o", ".").exit_code == 0
    assert sorted(p.name for p in here.iterdir()) == EXPORT_FILES


def test_force_replaces_only_our_own_files(digits_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    assert invoke(app, digits_checkpoint, "-o", out).exit_code == 0
    (out / "notes.txt").write_text("the user's notes\n")
    (out / "plots").mkdir()
    (out / "plots" / "a.png").write_bytes(b"png")
    before = file_manifest(out)
    refused = invoke(app, digits_checkpoint, "-o", out)
    assert refused.exit_code == 2 and "--force" in refused.stderr and file_manifest(out) == before
    assert invoke(app, digits_checkpoint, "-o", out, "--force", "--target", "arm").exit_code == 0
    after = file_manifest(out)
    assert after["notes.txt"] == before["notes.txt"] and after["plots/a.png"] == before["plots/a.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*EXPORT_FILES, "notes.txt", "plots"])
    assert after["report.json"] != before["report.json"]  # the arm export replaced the fpga one


def test_force_refuses_a_file_changed_since_the_export(digits_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    assert invoke(app, digits_checkpoint, "-o", out).exit_code == 0
    (out / "model.onnx").write_bytes(b"edited by the user")
    before = file_manifest(out)
    result = invoke(app, digits_checkpoint, "-o", out, "--force")
    assert result.exit_code == 2 and "model.onnx: not written by qexport (or changed since)" in result.stderr
    assert file_manifest(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_failed_export_leaves_nothing(tmp_path: Path) -> None:
    destination = tmp_path / "a" / "b" / "out"
    with pytest.raises(RuntimeError), export_directory(destination, force=False) as staging:
        (staging / "partial.bin").write_bytes(b"x")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []  # the missing parents it made are gone too
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(OutputError), export_directory(existing, force=True) as staging:
        (staging / "x").write_bytes(b"x")
        raise OSError(28, "No space left on device", str(staging / "x"))
    assert list(existing.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_modes_follow_the_umask(digits_checkpoint: Path, tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        assert invoke(app, digits_checkpoint, "-o", tmp_path / "out").exit_code == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o777 & ~umask
    written = list((tmp_path / "out").rglob("*"))
    assert len(written) > len(EXPORT_FILES)
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == (0o777 if path.is_dir() else 0o666) & ~umask, path


def _with_header_length(source: Path, target: Path, padding: int) -> int:
    metadata = _read_header(source) | {"padding": "p" * padding}
    save_file(load_file(str(source)), str(target), metadata=metadata)
    return int.from_bytes(target.read_bytes()[:8], "little")


@settings(max_examples=40, deadline=None)
@given(padding=st.integers(0, 600))
def test_safetensors_is_recognised_whatever_its_header_length(
    digits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory, padding: int
) -> None:
    path = tmp_path_factory.mktemp("ckpt") / "padded.ckpt"
    length = _with_header_length(digits_checkpoint, path, padding)
    with path.open("rb") as handle:
        assert _sniff(path, handle) == length


def test_header_length_128_mod_256_is_not_a_pickle(digits_checkpoint: Path, tmp_path: Path) -> None:
    """The first byte of such a file is 0x80, the first byte of a pickle."""
    path = tmp_path / "x.ckpt"
    base = _with_header_length(digits_checkpoint, path, 0)
    for padding in range(512):
        if (base + padding) % 256 == 128:
            break
    length = _with_header_length(digits_checkpoint, path, padding)
    assert path.read_bytes()[0] == 0x80 and length % 256 == 128
    assert _read_header(path)["architecture"] == "digits_cnn"


@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_pickles_of_every_protocol_are_refused(protocol: int, tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0] * 100}, protocol=protocol))
    with path.open("rb") as handle, pytest.raises(CheckpointError, match="never unpickles"):
        _sniff(path, handle)
