"""Integer pooling: max, and average with round-half-even division."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from hwsim.kernels.config import PARALLEL, SERIAL


@njit(**SERIAL)
def divide_round_half_even(total, count):
    floor = total // count
    twice_remainder = 2 * (total - floor * count)
    if twice_remainder > count or (twice_remainder == count and (floor & 1) == 1):
        return floor + 1
    return floor


@njit(**PARALLEL)
def pool2d(x, kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left, out_h, out_w, is_max, count_pad, zero_point):
    """Max pool (padding ignored) or average pool of (x - zero_point) + zero_point."""
    batch, channels, height, width = x.shape
    out = np.empty((batch, channels, out_h, out_w), dtype=np.int64)
    for nc in prange(batch * channels):
        n, c = nc // channels, nc % channels
        for i in range(out_h):
            for j in range(out_w):
                best = np.int64(0)
                total = np.int64(0)
                inside = 0
                for u in range(kernel_h):
                    y = i * stride_h + u - pad_top
                    for v in range(kernel_w):
                        xx = j * stride_w + v - pad_left
                        if 0 <= y < height and 0 <= xx < width:
                            value = np.int64(x[n, c, y, xx])
                            if inside == 0 or value > best:
                                best = value
                            total += value - zero_point
                            inside += 1
                if is_max:
                    out[n, c, i, j] = best
                else:
                    count = kernel_h * kernel_w if count_pad else inside
                    out[n, c, i, j] = divide_round_half_even(total, count) + zero_point
    return out


@njit(**SERIAL)
def global_avgpool_channels_last(x, zero_point):
    """Global average pool of channels-last x [N, P, C] (P = H * W): [N, C] int64, as pool2d rounds."""
    batch, pixels, channels = x.shape
    out = np.empty((batch, channels), dtype=np.int64)
    totals = np.empty(channels, dtype=np.int64)
    for n in range(batch):
        totals[:] = -pixels * zero_point
        for p in range(pixels):
            for c in range(channels):
                totals[c] += x[n, p, c]
        for c in range(channels):
            out[n, c] = divide_round_half_even(totals[c], pixels) + zero_point
    return out
