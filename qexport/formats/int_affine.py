"""``int_affine``: integer weights with per-tensor or per-channel scale and zero point."""

from __future__ import annotations

import numpy as np

from qexport.errors import GraphError
from qexport.formats.base import Term, broadcast_channel, identity_table, per_channel, require_arrays
from qexport.ir.dtypes import IntType
from qexport.ir.graph import Weight

name = "int_affine"
linear = True


def check(weight: Weight) -> None:
    require_arrays(weight, ("values",))
    try:
        dtype = IntType.parse(str(weight.attrs.get("dtype", "")))
    except GraphError as error:
        raise GraphError(f"weight {weight.name!r}: attribute 'dtype': {error}") from None
    values = weight.arrays["values"]
    if values.size and (values.min() < dtype.min or values.max() > dtype.max):
        raise GraphError(f"weight {weight.name!r}: values outside {dtype.name} range")
    zero_point = per_channel(weight, "zero_point", 0.0)
    if np.any(zero_point != np.round(zero_point)):
        raise GraphError(f"weight {weight.name!r}: zero_point must be integers")
    if np.any(zero_point < dtype.min) or np.any(zero_point > dtype.max):
        raise GraphError(f"weight {weight.name!r}: zero_point outside {dtype.name} range")
    per_channel(weight, "scale")


def integers(weight: Weight) -> np.ndarray:
    """values - zero_point, as int64."""
    zero_point = per_channel(weight, "zero_point", 0.0).astype(np.int64)
    values = weight.arrays["values"].astype(np.int64)
    return values - broadcast_channel(zero_point, values.ndim)


def grid_scale(weight: Weight) -> np.ndarray:
    return per_channel(weight, "scale")


def terms(weight: Weight, x_min: int, x_max: int) -> list[Term]:
    return [Term(identity_table(x_min, x_max), integers(weight))]


def real_values(weight: Weight) -> np.ndarray:
    return integers(weight) * broadcast_channel(grid_scale(weight), len(weight.shape))
