"""``apot``: additive powers of two, value = sign * scale * sum_t 2**-exponent[..., t].

``exponent`` has one trailing axis of terms; an exponent of -1 marks an absent term.
Each MAC is one shift per present term plus adds.
"""

from __future__ import annotations

import numpy as np

from qexport.errors import GraphError
from qexport.formats.base import Term, broadcast_channel, check_sign_exponent, identity_table, per_channel
from qexport.ir.graph import Weight

name = "apot"
linear = True


def check(weight: Weight) -> None:
    if weight.arrays.get("exponent", np.zeros(0)).ndim != len(weight.shape) + 1:
        raise GraphError(f"weight {weight.name!r}: apot exponent needs a trailing terms axis")
    check_sign_exponent(weight, exponent_cap=30, lowest_exponent=-1)


def integers(weight: Weight) -> np.ndarray:
    max_exponent = int(weight.attrs["max_exponent"])
    exponent = weight.arrays["exponent"].astype(np.int64)
    present = exponent >= 0
    powers = np.where(present, np.int64(1) << np.where(present, max_exponent - exponent, 0), 0)
    return weight.arrays["sign"].astype(np.int64) * powers.sum(axis=-1)


def grid_scale(weight: Weight) -> np.ndarray:
    return per_channel(weight, "scale") * 2.0 ** -int(weight.attrs["max_exponent"])


def terms(weight: Weight, x_min: int, x_max: int) -> list[Term]:
    return [Term(identity_table(x_min, x_max), integers(weight))]


def real_values(weight: Weight) -> np.ndarray:
    return integers(weight) * broadcast_channel(grid_scale(weight), len(weight.shape))
