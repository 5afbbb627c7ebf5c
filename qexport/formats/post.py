"""``post``: powers of sqrt(2), value = sign * scale * sqrt(2)**-exponent.

Integer semantics (the shift + LUT MAC of seed 002): products are in units of
``scale * 2**-lut_frac_bits``. For activation ``x`` and exponent ``k``

* even ``k``: ``x << (lut_frac_bits - k/2)``, an exact shift;
* odd ``k``: ``LUT[x, k] = round(x * sqrt(2) * 2**(lut_frac_bits - (k+1)/2))``, the
  nearest integer computed exactly (no float), held in a table indexed by the
  activation value and the odd exponent (ties cannot occur, sqrt(2) is irrational).

``lut_frac_bits`` must be at least ``ceil(max_exponent / 2)`` so even exponents never
shift right.
"""

from __future__ import annotations

from math import isqrt

import numpy as np

from qexport.errors import GraphError
from qexport.formats.base import Term, broadcast_channel, check_sign_exponent, per_channel
from qexport.ir.graph import Weight

name = "post"
linear = False


def check(weight: Weight) -> None:
    max_exponent = check_sign_exponent(weight, exponent_cap=40)
    frac_bits = int(weight.attrs.get("lut_frac_bits", -1))
    if frac_bits < (max_exponent + 1) // 2 or frac_bits > 24:
        raise GraphError(f"weight {weight.name!r}: lut_frac_bits must be in {(max_exponent + 1) // 2}..24")


def round_sqrt2_scaled(x: int, power: int) -> int:
    """Nearest integer to x * sqrt(2) * 2**power, exactly (integer arithmetic only)."""
    if x == 0:
        return 0
    magnitude = abs(x)
    # t = magnitude * sqrt(2) * 2**power; compare 4 t^2 = 8 x^2 4**power with odd squares
    numerator, denominator = (8 * magnitude * magnitude) << max(2 * power, 0), 1 << max(-2 * power, 0)
    n = isqrt(numerator // denominator) // 2
    while (2 * n + 1) ** 2 * denominator <= numerator:
        n += 1
    while n > 0 and (2 * n - 1) ** 2 * denominator > numerator:
        n -= 1
    return n if x > 0 else -n


def product_table(exponent: int, frac_bits: int, x_min: int, x_max: int) -> np.ndarray:
    """The activation-side result of a MAC with weight exponent ``exponent`` (shift or LUT)."""
    xs = range(x_min, x_max + 1)
    if exponent % 2 == 0:
        return np.array([x << (frac_bits - exponent // 2) for x in xs], dtype=np.int64)
    power = frac_bits - (exponent + 1) // 2
    return np.array([round_sqrt2_scaled(x, power) for x in xs], dtype=np.int64)


def grid_scale(weight: Weight) -> np.ndarray:
    return per_channel(weight, "scale") * 2.0 ** -int(weight.attrs["lut_frac_bits"])


def terms(weight: Weight, x_min: int, x_max: int) -> list[Term]:
    frac_bits = int(weight.attrs["lut_frac_bits"])
    sign = weight.arrays["sign"].astype(np.int64)
    exponent = weight.arrays["exponent"].astype(np.int64)
    return [
        Term(product_table(int(k), frac_bits, x_min, x_max), np.where(exponent == k, sign, 0))
        for k in np.unique(exponent[sign != 0])
    ]


def real_values(weight: Weight) -> np.ndarray:
    exponent = weight.arrays["exponent"].astype(np.int64)  # exact for even exponents, correctly rounded for odd
    magnitude = np.ldexp(np.where(exponent % 2 == 1, np.sqrt(0.5), 1.0), -(exponent // 2))
    values = weight.arrays["sign"] * magnitude
    return values * broadcast_channel(per_channel(weight, "scale"), len(weight.shape))
