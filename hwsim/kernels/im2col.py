"""Gather convolution windows: ``im2col`` (rows x window, parallel) for the faithful MAC kernels, and
serial per-image kernels for the fast path, which the engine runs on slices of the batch in threads."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from hwsim.kernels.config import PARALLEL, SERIAL


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


@njit(**SERIAL)
def pad_centred(x, zero_point, pad_top, pad_left, out):
    """out[n, c, pad_top + y, pad_left + x] = x[n, c, y, x] - zero_point (out pre-zeroed, float)."""
    batch, channels, height, width = x.shape
    for nc in prange(batch * channels):
        n, c = nc // channels, nc % channels
        for y in range(height):
            for xx in range(width):
                out[n, c, pad_top + y, pad_left + xx] = x[n, c, y, xx] - zero_point
    return out


@njit(**SERIAL)
def pad_table(x, table, x_offset, pad_top, pad_left, out):
    """As pad_centred, through a product table: out[...] = table[x - x_offset] (x_offset = zp + x_min)."""
    batch, channels, height, width = x.shape
    for nc in prange(batch * channels):
        n, c = nc // channels, nc % channels
        for y in range(height):
            for xx in range(width):
                out[n, c, pad_top + y, pad_left + xx] = table[x[n, c, y, xx] - x_offset]
    return out


@njit(**SERIAL)
def im2col_batched(padded, kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, out_h, out_w, cols):
    """cols[n, (c, u, v), i * out_w + j] = padded[n, c, i * stride_h + u * dilation_h, j * stride_w + v * dilation_w].

    The layout makes each image's convolution one GEMM, weights [O, K] @ cols[n] -> [O, OH * OW] (NCHW).
    """
    batch, channels = padded.shape[0], padded.shape[1]
    window = channels * kernel_h * kernel_w
    for nk in prange(batch * window):
        n, k = nk // window, nk % window
        c = k // (kernel_h * kernel_w)
        u = (k // kernel_w) % kernel_h
        v = k % kernel_w
        for i in range(out_h):
            y = i * stride_h + u * dilation_h
            if stride_w == 1:
                cols[n, k, i * out_w : (i + 1) * out_w] = padded[n, c, y, v * dilation_w : v * dilation_w + out_w]
            else:
                for j in range(out_w):
                    cols[n, k, i * out_w + j] = padded[n, c, y, j * stride_w + v * dilation_w]
    return cols
