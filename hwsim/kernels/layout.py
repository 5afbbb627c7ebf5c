"""Layout conversions for the fast path."""

from __future__ import annotations

import numpy as np
from numba import njit

from hwsim.kernels.config import SERIAL


@njit(**SERIAL)
def channels_last_uint8(x, offset):
    """x [N, C, H, W] integers (any layout) + offset -> uint8 [N, H, W, C]; the caller ensures the range fits."""
    batch, channels, height, width = x.shape
    out = np.empty((batch, height, width, channels), dtype=np.uint8)
    for n in range(batch):
        for c in range(channels):
            for y in range(height):
                for xx in range(width):
                    out[n, y, xx, c] = x[n, c, y, xx] + offset
    return out
