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


@njit(**SERIAL)
def stack_terms(x, tables, offset, pad_top, pad_left, out):
    """out[n, pad_top + y, pad_left + x, t * C + c] = tables[t, x[n, y, x, c] - offset] (borders untouched).

    x: channels-last [N, H, W, C] stored integers, C-contiguous; out: [N, H', W', T * C], the terms
    stacked as channels.
    """
    batch, height, width, channels = x.shape
    terms = tables.shape[0]
    for n in range(batch):
        for y in range(height):
            for xx in range(width):
                source = x[n, y, xx]
                target = out[n, pad_top + y, pad_left + xx]
                for t in range(terms):
                    table = tables[t]
                    for c in range(channels):
                        target[t * channels + c] = table[source[c] - offset]
    return out
