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


@njit(**PARALLEL)
def pack_nhwc(x, zero_point, pad_top, pad_left, pad_bottom, pad_right, out):
    """out[n, pad_top + y, pad_left + x, c] = x[n, c, y, x] - zero_point (out pre-zeroed, float)."""
    batch, channels, height, width = x.shape
    for n in prange(batch):
        for y in range(height):
            for xx in range(width):
                for c in range(channels):
                    out[n, pad_top + y, pad_left + xx, c] = x[n, c, y, xx] - zero_point
    return out


@njit(**PARALLEL)
def pack_nhwc_table(x, table, x_offset, pad_top, pad_left, out):
    """As pack_nhwc, through a product table: out[...] = table[x - x_offset] (x_offset = zp + x_min)."""
    batch, channels, height, width = x.shape
    for n in prange(batch):
        for y in range(height):
            for xx in range(width):
                for c in range(channels):
                    out[n, pad_top + y, pad_left + xx, c] = table[x[n, c, y, xx] - x_offset]
    return out


@njit(**PARALLEL)
def im2col_nhwc(padded, kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, out_h, out_w):
    """Rows of windows from a padded NHWC tensor, columns ordered (u, v, c)."""
    batch, _, _, channels = padded.shape
    patches = np.empty((batch * out_h * out_w, kernel_h * kernel_w * channels), dtype=padded.dtype)
    for row in prange(batch * out_h * out_w):
        n = row // (out_h * out_w)
        i = (row // out_w) % out_h
        j = row % out_w
        for u in range(kernel_h):
            for v in range(kernel_w):
                start = (u * kernel_w + v) * channels
                patches[row, start : start + channels] = padded[
                    n, i * stride_h + u * dilation_h, j * stride_w + v * dilation_w, :
                ]
    return patches
