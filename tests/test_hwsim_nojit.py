"""The hwsim kernels also pass their tests as plain Python (NUMBA_DISABLE_JIT=1), for coverage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_kernel_tests_pass_without_jit() -> None:
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    here = Path(__file__).parent
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(here / "test_hwsim_engine.py"),
        str(here / "test_hwsim_int8.py"),
        "-p",
        "no:cacheprovider",
        "-k",
        "chains or requant",
        "--hypothesis-seed=0",
        "-x",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
