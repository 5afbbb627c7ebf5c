"""The contract every weight number format fulfils.

A format turns a ``Weight`` into *terms*: pairs ``(table, coeff)`` such that the
exact integer product of an activation ``x`` (zero point already removed) and
weight element ``w`` is ``sum_terms table[x - x_min] * coeff[w]``. Linear formats
have one term whose table is the identity; power-of-sqrt(2) weights have one term
per exponent, whose table is the shift-or-LUT product the hardware holds.
Accumulators are in units of ``input_scale * grid_scale[c]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from qexport.errors import GraphError
from qexport.ir.graph import Weight


@dataclass
class Term:
    table: np.ndarray  # int64 [x_max - x_min + 1]: what the MAC does to the activation
    coeff: np.ndarray  # int64, weight shape: what multiplies (or selects) that result


class WeightFormat(Protocol):
    name: str
    linear: bool

    def check(self, weight: Weight) -> None: ...

    def grid_scale(self, weight: Weight) -> np.ndarray: ...

    def terms(self, weight: Weight, x_min: int, x_max: int) -> list[Term]: ...

    def real_values(self, weight: Weight) -> np.ndarray: ...


def require_arrays(weight: Weight, names: tuple[str, ...]) -> None:
    for name in names:
        if name not in weight.arrays:
            raise GraphError(f"weight {weight.name!r} ({weight.format}): missing array {name!r}")
        if not np.issubdtype(np.asarray(weight.arrays[name]).dtype, np.integer):
            raise GraphError(f"weight {weight.name!r}: array {name!r} must hold integers")
        if name != "levels" and tuple(weight.arrays[name].shape[: len(weight.shape)]) != tuple(weight.shape):
            raise GraphError(
                f"weight {weight.name!r}: array {name!r} has shape {weight.arrays[name].shape}, "
                f"expected {tuple(weight.shape)}"
            )


def check_sign_exponent(weight: Weight, exponent_cap: int, lowest_exponent: int = 0) -> int:
    """Shared checks of the sign/exponent formats; returns ``max_exponent``."""
    require_arrays(weight, ("sign", "exponent"))
    sign, exponent = weight.arrays["sign"], weight.arrays["exponent"]
    if not np.isin(sign, (-1, 0, 1)).all():
        raise GraphError(f"weight {weight.name!r}: sign must be -1, 0 or 1")
    max_exponent = int(weight.attrs.get("max_exponent", -1))
    if max_exponent < 0 or max_exponent > exponent_cap:
        raise GraphError(f"weight {weight.name!r}: max_exponent must be in 0..{exponent_cap}")
    if exponent.size and (exponent.min() < lowest_exponent or exponent.max() > max_exponent):
        raise GraphError(f"weight {weight.name!r}: exponent outside {lowest_exponent}..{max_exponent}")
    per_channel(weight, "scale")
    return max_exponent


def per_channel(weight: Weight, key: str, default: float | None = None) -> np.ndarray:
    """A scalar or per-output-channel attribute as a float64 vector of length out_channels."""
    if key not in weight.attrs:
        if default is None:
            raise GraphError(f"weight {weight.name!r} ({weight.format}): missing attribute {key!r}")
        value = default
    else:
        value = weight.attrs[key]
    vector = np.asarray(value, dtype=np.float64)
    channels = weight.shape[0]
    if vector.ndim == 0:
        return np.full(channels, float(vector))
    if vector.shape != (channels,):
        raise GraphError(
            f"weight {weight.name!r}: attribute {key!r} has {vector.size} entries, expected 1 or {channels}"
        )
    return vector


def identity_table(x_min: int, x_max: int) -> np.ndarray:
    return np.arange(x_min, x_max + 1, dtype=np.int64)


def broadcast_channel(vector: np.ndarray, ndim: int) -> np.ndarray:
    """Reshape a per-output-channel vector to broadcast against a weight of rank ``ndim``."""
    return vector.reshape((-1,) + (1,) * (ndim - 1))
