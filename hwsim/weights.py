"""Weights as the MAC units hold them, decoded from the IR's raw arrays (independently of the oracle).

A ``MacWeights`` keeps one [O, K] operand matrix per field, rows = output channels, columns =
window positions in im2col order (c, kh, kw).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import isqrt

import numpy as np

from qexport.ir.graph import Weight

MAC_KINDS = {"int_affine": "multiply", "pot": "shift", "apot": "shift", "post": "shift_lut", "codebook": "codebook"}


@dataclass
class MacWeights:
    kind: str  # multiply | shift | shift_lut | codebook
    rows: int
    window: int
    integer: np.ndarray | None = None  # [O, K] int64: the weight as one integer (linear formats)
    sign: np.ndarray | None = None
    shift: np.ndarray | None = None
    exponent: np.ndarray | None = None
    frac_bits: int = 0
    indices: np.ndarray | None = None
    levels: np.ndarray | None = None  # [O, L]
    terms_per_weight: int = 1  # shifts per MAC (apot: number of present terms, at most)
    extra: dict = field(default_factory=dict)


def _channel_vector(value, rows: int) -> np.ndarray:
    vector = np.asarray(value, dtype=np.int64)
    return np.full(rows, int(vector)) if vector.ndim == 0 else vector


def decode(weight: Weight) -> MacWeights:
    rows = weight.shape[0]
    window = int(np.prod(weight.shape[1:]))
    flat = {
        name: array.reshape(rows, window, *array.shape[len(weight.shape) :])
        for name, array in weight.arrays.items()
        if name != "levels"
    }
    kind = MAC_KINDS[weight.format]
    mac = MacWeights(kind, rows, window)
    if weight.format == "int_affine":
        zero_point = _channel_vector(weight.attrs.get("zero_point", 0), rows)
        mac.integer = flat["values"].astype(np.int64) - zero_point[:, None]
    elif weight.format == "pot":
        mac.sign = flat["sign"].astype(np.int64)
        mac.shift = int(weight.attrs["max_exponent"]) - flat["exponent"].astype(np.int64)
        mac.integer = mac.sign * (np.int64(1) << mac.shift)
    elif weight.format == "apot":
        exponents = flat["exponent"].astype(np.int64)
        present = exponents >= 0
        shifts = np.where(present, int(weight.attrs["max_exponent"]) - exponents, 0)
        mac.sign = flat["sign"].astype(np.int64)
        mac.integer = mac.sign * np.where(present, np.int64(1) << shifts, 0).sum(axis=-1)
        mac.terms_per_weight = exponents.shape[-1]
    elif weight.format == "post":
        mac.sign = flat["sign"].astype(np.int64)
        mac.exponent = flat["exponent"].astype(np.int64)
        mac.frac_bits = int(weight.attrs["lut_frac_bits"])
    elif weight.format == "codebook":
        levels = weight.arrays["levels"].astype(np.int64)
        mac.levels = np.broadcast_to(levels, (rows, levels.shape[-1])).copy() if levels.ndim == 1 else levels
        mac.indices = flat["indices"].astype(np.int64)
        mac.integer = np.take_along_axis(mac.levels, mac.indices, axis=1)
    return mac


def sqrt2_lut(frac_bits: int, max_exponent: int, x_min: int, x_max: int) -> np.ndarray:
    """lut[x - x_min, e // 2] = nearest integer to x * 2**(frac_bits - e/2) for odd e (exact integer math).

    |x| * 2**(frac_bits - e/2) = sqrt(x**2 * 2**(2 frac_bits - e)); the nearest integer n of sqrt(v)
    satisfies (2n - 1)**2 <= 4v < (2n + 1)**2 (no ties: v is twice a square, never a square).
    """
    odd = list(range(1, max_exponent + 1, 2))
    table = np.zeros((x_max - x_min + 1, max(len(odd), 1)), dtype=np.int64)
    for column, e in enumerate(odd):
        power = 2 * frac_bits - e  # >= 1: the IR requires frac_bits >= ceil(max_exponent / 2)
        for x in range(x_min, x_max + 1):
            four_v = 4 * x * x << power
            n = isqrt(four_v) // 2
            while (2 * n + 1) ** 2 <= four_v:
                n += 1
            while n > 0 and (2 * n - 1) ** 2 > four_v:
                n -= 1
            table[x - x_min, column] = n if x >= 0 else -n
    return table


def product_lut(levels: np.ndarray, x_min: int, x_max: int) -> np.ndarray:
    """Codebook product table [O, L, X]: every level times every activation value."""
    xs = np.arange(x_min, x_max + 1, dtype=np.int64)
    return levels[:, :, None] * xs[None, None, :]
