"""Build the generated board code on the host and run it: the C and HLS csim paths of ``qexport --verify``.

``run_board(code, graph, feeds)`` writes ``c/`` or ``hls/`` into a fresh temporary directory (never the
export directory), compiles it with gcc / g++, runs it on the integer feeds in main.c's ``-q`` layout and
returns the outputs, or the reason the path could not run (no compiler, no ap_types). The same build and
run helpers serve the tests (tests/c_build.py adds a session cache of the runtime object).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qexport.errors import QExportError
from qexport.export.c_code import write_c
from qexport.export.hls_code import ap_types_dir, write_hls
from qexport.ir.graph import Graph

C_WARN = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
SANITIZE = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
CXX_WARN = ["-std=c++17", "-Wall", "-Wextra", "-Werror"]
VERIFY_C_FLAGS = ["-O2"]  # what `make model` uses
# The Makefile's csim target builds at -O0 with every warning an error (what the tests run). For speed,
# --verify builds at -O1, where gcc's uninitialized-use analysis reports false positives inside the
# ap_types headers (ap_private's constructors) once they are inlined: those two warnings are not errors here.
VERIFY_CXX_FLAGS = ["-O1", "-Wno-maybe-uninitialized", "-Wno-uninitialized"]
RUN_TIMEOUT_SECONDS = 1800


class BoardBuildError(QExportError):
    """Generated board code that does not compile or does not run (the message names the command)."""


@dataclass
class BoardRun:
    outputs: dict[str, np.ndarray] | None = None
    skipped: str | None = None  # why the path did not run (a missing tool)
    error: str | None = None  # a build or run failure: the path failed


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=RUN_TIMEOUT_SECONDS)
    if result.returncode != 0:
        raise BoardBuildError(f"{' '.join(cmd)} failed:\n{result.stderr[-4000:]}")
    return result


def compile_c(
    c_dir: Path,
    cc: str = "gcc",
    flags: list[str] | None = None,
    extra: list[str] | None = None,
    cache: Path | None = None,
) -> Path:
    """Compile c_dir's runtime, model and main.c into an executable in c_dir.

    With ``cache``, the runtime object is compiled once per (qx_config.h, qx_runtime.c, compiler, flags)
    into that directory and reused.
    """
    flags = list(VERIFY_C_FLAGS if flags is None else flags) + list(extra or [])
    key = hashlib.sha256(
        (c_dir / "qx_config.h").read_bytes() + (c_dir / "qx_runtime.c").read_bytes() + " ".join([cc, *flags]).encode()
    ).hexdigest()[:16]
    runtime: Path | str = c_dir / "qx_runtime.c"
    if cache is not None:
        runtime = cache / f"runtime-{key}.o"
        if not runtime.exists():
            obj_dir = cache / key
            obj_dir.mkdir(parents=True, exist_ok=True)
            for name in ("qx_runtime.h", "qx_config.h", "qx_runtime.c"):
                shutil.copy(c_dir / name, obj_dir / name)
            _run([cc, *C_WARN, *flags, "-c", str(obj_dir / "qx_runtime.c"), "-o", str(runtime)])
    exe = c_dir / f"model-{key}"
    _run([cc, *C_WARN, *flags, "-o", str(exe), str(c_dir / "model.c"), str(c_dir / "main.c"), str(runtime), "-lm"])
    return exe


def compile_csim(hls_dir: Path, ap_types: Path, cxx: str = "g++", flags: list[str] | None = None) -> Path:
    """Compile hls_dir's model.cpp and tb.cpp against the ap_types headers into ``hls_dir/csim``."""
    exe = hls_dir / "csim"
    flags = list(VERIFY_CXX_FLAGS if flags is None else flags)
    _run([cxx, *CXX_WARN, *flags, "-isystem", str(ap_types), "-o", str(exe), "model.cpp", "tb.cpp"], cwd=hls_dir)
    return exe


def pack_inputs(graph: Graph, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Per sample, every graph input in order (main.c's layout)."""
    batch = next(iter(feeds.values())).shape[0]
    return np.concatenate([np.asarray(feeds[n]).reshape(batch, -1) for n in graph.inputs], axis=1)


def unpack_outputs(graph: Graph, flat: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    flat = flat.reshape(batch, -1)
    result, start = {}, 0
    for name in graph.outputs:
        shape = graph.tensors[name].shape[1:]
        size = int(np.prod(shape))
        result[name] = flat[:, start : start + size].reshape(batch, *shape).astype(np.int64)
        start += size
    return result


def run_model(
    exe: Path, graph: Graph, feeds: dict[str, np.ndarray], runner: list[str] | None = None, quantized: bool = True
) -> tuple[int, dict[str, np.ndarray] | None, str]:
    """Run ``exe [-q] in.bin out.bin`` (files beside exe) on integer feeds: (exit code, outputs or None, stderr).

    ``quantized=False`` is for the HLS testbench, which always reads integers and takes no ``-q``.
    """
    work = exe.parent
    batch = next(iter(feeds.values())).shape[0]
    pack_inputs(graph, feeds).astype("<i4").tofile(work / "in.bin")
    flag = ["-q"] if quantized else []
    cmd = [*(runner or []), str(exe), *flag, str(work / "in.bin"), str(work / "out.bin")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS)
    if result.returncode != 0:
        return result.returncode, None, result.stderr
    return 0, unpack_outputs(graph, np.fromfile(work / "out.bin", dtype="<i4"), batch), result.stderr


def _first_line(text: str) -> str:
    lines = [line for line in str(text).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line]
    return (errors or lines or ["no output"])[0].strip()[:200]


def run_board(code: str, graph: Graph, feeds: dict[str, np.ndarray]) -> BoardRun:
    """Build board code ``code`` ("c" or "hls") in a temporary directory and run it on ``feeds``."""
    if code == "c":
        compiler = shutil.which("gcc")
        if compiler is None:
            return BoardRun(skipped="gcc not found on PATH")
    elif code == "hls":
        compiler = shutil.which("g++")
        if compiler is None:
            return BoardRun(skipped="g++ not found on PATH")
        ap_types = ap_types_dir()
        if ap_types is None:
            return BoardRun(skipped="no ap_types headers (pip install hls4ml)")
    else:
        raise QExportError(f"board code {code!r}: no verification path (known: c, hls)")
    with tempfile.TemporaryDirectory(prefix=f"qexport-verify-{code}-") as tmp:
        try:
            if code == "c":
                write_c(graph, Path(tmp))
                exe = compile_c(Path(tmp) / "c", compiler)
            else:
                write_hls(graph, Path(tmp))
                exe = compile_csim(Path(tmp) / "hls", ap_types, compiler)
            status, outputs, stderr = run_model(exe, graph, feeds, quantized=code == "c")
        except BoardBuildError as error:
            return BoardRun(error=f"build failed: {_first_line(str(error).split(chr(10), 1)[-1])}")
        except subprocess.TimeoutExpired:
            return BoardRun(error=f"no result within {RUN_TIMEOUT_SECONDS} s")
    if status != 0:
        return BoardRun(error=f"exit code {status}: {_first_line(stderr)}")
    return BoardRun(outputs=outputs)
