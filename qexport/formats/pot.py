"""``pot``: sign and power-of-two exponent, value = sign * scale * 2**-exponent (a shift MAC)."""

from __future__ import annotations

import numpy as np

from qexport.formats.base import Term, broadcast_channel, check_sign_exponent, identity_table, per_channel
from qexport.ir.graph import Weight

name = "pot"
linear = True


def check(weight: Weight) -> None:
    check_sign_exponent(weight, exponent_cap=30)


def integers(weight: Weight) -> np.ndarray:
    """Weights on the grid scale * 2**-max_exponent: sign << (max_exponent - exponent)."""
    max_exponent = int(weight.attrs["max_exponent"])
    shift = max_exponent - weight.arrays["exponent"].astype(np.int64)
    return weight.arrays["sign"].astype(np.int64) << shift


def grid_scale(weight: Weight) -> np.ndarray:
    return per_channel(weight, "scale") * 2.0 ** -int(weight.attrs["max_exponent"])


def terms(weight: Weight, x_min: int, x_max: int) -> list[Term]:
    return [Term(identity_table(x_min, x_max), integers(weight))]


def real_values(weight: Weight) -> np.ndarray:
    return integers(weight) * broadcast_channel(grid_scale(weight), len(weight.shape))
