"""Numba flags in one place. fastmath is banned: every kernel here must be bit-exact."""

from __future__ import annotations

import numba

SERIAL = {"cache": True, "fastmath": False, "nogil": True}
PARALLEL = {"cache": True, "fastmath": False, "nogil": True, "parallel": True}


def set_threads(count: int | None) -> None:
    """Use ``count`` threads for parallel kernels (None: leave numba's default)."""
    if count is not None:
        numba.set_num_threads(max(1, min(count, numba.config.NUMBA_NUM_THREADS)))
