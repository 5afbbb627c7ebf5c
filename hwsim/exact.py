"""Where float arithmetic on integers stays exact: every integer of magnitude below 2**24 (2**53)
is a float32 (float64), and so is every sum or product that stays below it."""

from __future__ import annotations

import numpy as np

FLOAT32_EXACT = 2**24
FLOAT64_EXACT = 2**53


def float_type(bound: int) -> type | None:
    """float32 when integers up to ``bound`` in magnitude are exact there, else float64, else None."""
    if bound < FLOAT32_EXACT:
        return np.float32
    if bound < FLOAT64_EXACT:
        return np.float64
    return None
