"""Turn a real rescale factor into the IR's integer multiplier and shift."""

from __future__ import annotations

import math

MULTIPLIER_BITS = 31


def is_power_of_two(value: float) -> bool:
    mantissa, _ = math.frexp(value)
    return value > 0 and mantissa == 0.5


def multiplier_and_shift(ratio: float) -> tuple[int, int]:
    """(multiplier, shift) with ratio ~= multiplier * 2**-shift.

    Powers of two give multiplier 1 (a pure shift, exact). Otherwise the multiplier
    is a 31-bit integer in [2**30, 2**31) (relative error below 2**-31).
    """
    if ratio <= 0 or not math.isfinite(ratio):
        raise ValueError(f"rescale factor {ratio} must be positive and finite")
    mantissa, exponent = math.frexp(ratio)  # ratio = mantissa * 2**exponent, mantissa in [0.5, 1)
    if mantissa == 0.5:
        return 1, 1 - exponent
    multiplier = round(mantissa * (1 << MULTIPLIER_BITS))
    if multiplier == 1 << MULTIPLIER_BITS:
        multiplier //= 2
        exponent += 1
    return multiplier, MULTIPLIER_BITS - exponent
