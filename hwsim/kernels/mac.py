"""One kernel per MAC style over im2col rows: acc[r, o] = sum_k product(patch[r, k], weight[o, k]).

Each kernel does the arithmetic the hardware unit does: a multiplier, a barrel shift, a shift
or a LUT read (powers of sqrt(2)), a product LUT or per-level accumulation (codebooks).
Accumulation is int64; the engine checks results against the layer's accumulator width.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from hwsim.kernels.config import PARALLEL


@njit(**PARALLEL)
def mac_multiply(patches, weights):
    """Integer multiplier: weights [O, K] int."""
    rows, window = patches.shape
    outs = weights.shape[0]
    acc = np.zeros((rows, outs), dtype=np.int64)
    for r in prange(rows):
        for o in range(outs):
            total = np.int64(0)
            for k in range(window):
                total += np.int64(patches[r, k]) * np.int64(weights[o, k])
            acc[r, o] = total
    return acc


@njit(**PARALLEL)
def mac_shift(patches, sign, shift):
    """Shift MAC for power-of-two weights: sign * (x << shift); sign 0 skips the product."""
    rows, window = patches.shape
    outs = sign.shape[0]
    acc = np.zeros((rows, outs), dtype=np.int64)
    for r in prange(rows):
        for o in range(outs):
            total = np.int64(0)
            for k in range(window):
                s = sign[o, k]
                if s != 0:
                    term = np.int64(patches[r, k]) << np.int64(shift[o, k])
                    total += term if s > 0 else -term
            acc[r, o] = total
    return acc


@njit(**PARALLEL)
def mac_shift_lut(patches, sign, exponent, frac_bits, lut, x_min):
    """Powers of sqrt(2): even exponents shift by frac_bits - e/2; odd ones read lut[x - x_min, e // 2]."""
    rows, window = patches.shape
    outs = sign.shape[0]
    acc = np.zeros((rows, outs), dtype=np.int64)
    for r in prange(rows):
        for o in range(outs):
            total = np.int64(0)
            for k in range(window):
                s = sign[o, k]
                if s != 0:
                    e = exponent[o, k]
                    if e % 2 == 0:
                        term = np.int64(patches[r, k]) << np.int64(frac_bits - e // 2)
                    else:
                        term = lut[patches[r, k] - x_min, e // 2]
                    total += term if s > 0 else -term
            acc[r, o] = total
    return acc


@njit(**PARALLEL)
def mac_product_lut(patches, indices, product_lut, x_min):
    """Codebook, product LUT: product_lut[o, level, x - x_min] holds level * x for each channel."""
    rows, window = patches.shape
    outs = indices.shape[0]
    acc = np.zeros((rows, outs), dtype=np.int64)
    for r in prange(rows):
        for o in range(outs):
            total = np.int64(0)
            for k in range(window):
                total += product_lut[o, indices[o, k], patches[r, k] - x_min]
            acc[r, o] = total
    return acc


@njit(**PARALLEL)
def mac_per_level(patches, indices, levels):
    """Codebook, per-level accumulation: sum activations per level, then one multiply per level."""
    rows, window = patches.shape
    outs, count = levels.shape
    acc = np.zeros((rows, outs), dtype=np.int64)
    for r in prange(rows):
        bins = np.zeros(count, dtype=np.int64)
        for o in range(outs):
            bins[:] = 0
            for k in range(window):
                bins[indices[o, k]] += patches[r, k]
            total = np.int64(0)
            for level in range(count):
                total += bins[level] * levels[o, level]
            acc[r, o] = total
    return acc
