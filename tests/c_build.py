"""Build and run generated C models in tests (shared by test_c_export.py and the benchmark).

The runtime object is compiled once per (qx_config.h, compiler, flags) and cached for the session.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from qexport.ir.graph import Graph

WARN = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
SANITIZE = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
_CACHE = Path(tempfile.mkdtemp(prefix="qx-runtime-"))


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stderr[-4000:]}")
    return result


def build(c_dir: Path, cc: str = "gcc", flags: list[str] | None = None, extra: list[str] | None = None) -> Path:
    """Compile c_dir's model + main against a cached runtime object; return the executable."""
    flags = list(SANITIZE if flags is None else flags)
    config = (c_dir / "qx_config.h").read_bytes() + (c_dir / "qx_runtime.c").read_bytes()
    key = hashlib.sha256(config + " ".join([cc, *flags, *(extra or [])]).encode()).hexdigest()[:16]
    runtime = _CACHE / f"runtime-{key}.o"
    if not runtime.exists():
        obj_dir = _CACHE / key
        obj_dir.mkdir(exist_ok=True)
        for name in ("qx_runtime.h", "qx_config.h", "qx_runtime.c"):
            shutil.copy(c_dir / name, obj_dir / name)
        _run([cc, *WARN, *flags, *(extra or []), "-c", str(obj_dir / "qx_runtime.c"), "-o", str(runtime)])
    exe = c_dir / f"model-{key}"
    _run([cc, *WARN, *flags, *(extra or []), "-o", str(exe), str(c_dir / "model.c"), str(c_dir / "main.c"),
          str(runtime), "-lm"])  # fmt: skip
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
    exe: Path, graph: Graph, feeds: dict[str, np.ndarray], runner: list[str] | None = None
) -> tuple[int, dict[str, np.ndarray] | None, str]:
    """Run ``exe -q`` on integer feeds: (exit code, outputs or None, stderr)."""
    work = exe.parent
    batch = next(iter(feeds.values())).shape[0]
    pack_inputs(graph, feeds).astype("<i4").tofile(work / "in.bin")
    cmd = [*(runner or []), str(exe), "-q", str(work / "in.bin"), str(work / "out.bin")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        return result.returncode, None, result.stderr
    return 0, unpack_outputs(graph, np.fromfile(work / "out.bin", dtype="<i4"), batch), result.stderr
