"""Test builds of generated C models: qexport.board_verify's compiler call with a session cache of the runtime.

The runtime object is compiled once per (qx_config.h, qx_runtime.c, compiler, flags) for the test session.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from qexport.board_verify import SANITIZE, compile_c

_CACHE = Path(tempfile.mkdtemp(prefix="qx-runtime-"))


def build(c_dir: Path, cc: str = "gcc", flags: list[str] | None = None, extra: list[str] | None = None) -> Path:
    """Compile c_dir's model + main (ASan + UBSan unless ``flags``) against the cached runtime object."""
    return compile_c(c_dir, cc, SANITIZE if flags is None else flags, extra, cache=_CACHE)
