"""Gather convolution windows into rows: patches[n*OH*OW + i*OW + j, c*KH*KW + u*KW + v]."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from hwsim.kernels.config import PARALLEL


@njit(**PARALLEL)
def im2col(x, kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left, out_h, out_w, fill):
    """x: [N, C, H, W] (zero point already removed); padded positions read ``fill``."""
    n_batch, channels, height, width = x.shape
    window = channels * kernel_h * kernel_w
    patches = np.empty((n_batch * out_h * out_w, window), dtype=x.dtype)
    for row in prange(n_batch * out_h * out_w):
        n = row // (out_h * out_w)
        i = (row // out_w) % out_h
        j = row % out_w
        col = 0
        for c in range(channels):
            for u in range(kernel_h):
                y = i * stride_h + u * dilation_h - pad_top
                for v in range(kernel_w):
                    xx = j * stride_w + v * dilation_w - pad_left
                    if 0 <= y < height and 0 <= xx < width:
                        patches[row, col] = x[n, c, y, xx]
                    else:
                        patches[row, col] = fill
                    col += 1
    return patches
