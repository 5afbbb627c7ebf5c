"""Numba flags in one place. fastmath is banned: every kernel here must be bit-exact."""

from __future__ import annotations

import os

# Numba's OpenMP workers must not spin between parallel regions: BLAS threads run in between.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402

SERIAL = {"cache": True, "fastmath": False, "nogil": True}
PARALLEL = {"cache": True, "fastmath": False, "nogil": True, "parallel": True}


def set_threads(count: int | None) -> None:
    """Use ``count`` threads for parallel kernels (None: leave numba's default)."""
    if count is not None:
        numba.set_num_threads(max(1, min(count, numba.config.NUMBA_NUM_THREADS)))
