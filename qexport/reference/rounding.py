"""Integer rounding rules of the IR, written out plainly (the oracle's copy).

Rule: round half to even, the rule of ONNX QuantizeLinear and torch.round, so that
power-of-two requantization equals the float QDQ graph bit for bit.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np


def round_half_even_shift(values: np.ndarray, shift: np.ndarray | int) -> np.ndarray:
    """values * 2**-shift rounded half to even; a negative shift is an exact left shift."""
    values = np.asarray(values, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(-shift, 0)
    right = np.maximum(shift, 0)
    shifted = values << left
    quotient = shifted >> right
    remainder = shifted - (quotient << right)
    half = np.where(right > 0, np.int64(1) << np.maximum(right - 1, 0), 0)
    round_up = (right > 0) & ((remainder > half) | ((remainder == half) & (quotient % 2 == 1)))
    return quotient + round_up


def round_half_even_divide(values: np.ndarray, divisor: np.ndarray | int) -> np.ndarray:
    """values / divisor (divisor > 0) rounded half to even."""
    values = np.asarray(values, dtype=np.int64)
    divisor = np.asarray(divisor, dtype=np.int64)
    quotient = np.floor_divide(values, divisor)
    twice_remainder = 2 * (values - quotient * divisor)
    round_up = (twice_remainder > divisor) | ((twice_remainder == divisor) & (quotient % 2 == 1))
    return quotient + round_up


def round_float32(value: Fraction) -> Fraction:
    """The float32 nearest to an exact rational, ties to even (normal range; subnormals on the 2**-149 grid)."""
    if value == 0:
        return Fraction(0)
    sign, magnitude = (1 if value > 0 else -1), abs(value)
    exponent = magnitude.numerator.bit_length() - magnitude.denominator.bit_length()
    while magnitude >= Fraction(2) ** (exponent + 1):
        exponent += 1
    while magnitude < Fraction(2) ** exponent:
        exponent -= 1
    step = Fraction(2) ** max(exponent - 23, -149)  # 24 significant bits
    return sign * round(magnitude / step) * step  # Fraction.__round__ rounds half to even


def fma_float32(x: Fraction, y: Fraction, z: Fraction) -> Fraction:
    """float32 fused multiply-add: x * y + z computed exactly, rounded once."""
    return round_float32(x * y + z)
