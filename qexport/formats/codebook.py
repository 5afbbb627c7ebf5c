"""``codebook``: an index tensor and a table of integer levels (shared, or one row per channel).

value = scale[c] * levels[c, indices]; a MAC is a product look-up or a per-level accumulation.
"""

from __future__ import annotations

import numpy as np

from qexport.errors import GraphError
from qexport.formats.base import Term, broadcast_channel, identity_table, per_channel, require_arrays
from qexport.ir.graph import Weight

name = "codebook"
linear = True


def _levels(weight: Weight) -> np.ndarray:
    levels = weight.arrays["levels"].astype(np.int64)
    if levels.ndim == 1:
        levels = np.broadcast_to(levels, (weight.shape[0], levels.size))
    return levels


def check(weight: Weight) -> None:
    require_arrays(weight, ("indices", "levels"))
    levels = weight.arrays["levels"]
    if levels.ndim not in (1, 2) or (levels.ndim == 2 and levels.shape[0] != weight.shape[0]):
        raise GraphError(f"weight {weight.name!r}: levels must be [L] or [out_channels, L]")
    indices = weight.arrays["indices"]
    if indices.size and (indices.min() < 0 or indices.max() >= levels.shape[-1]):
        raise GraphError(f"weight {weight.name!r}: index outside the level table of {levels.shape[-1]}")
    per_channel(weight, "scale")


def integers(weight: Weight) -> np.ndarray:
    levels = _levels(weight)
    indices = weight.arrays["indices"].astype(np.int64)
    flat = indices.reshape(weight.shape[0], -1)
    return np.take_along_axis(levels, flat, axis=1).reshape(weight.shape)


def grid_scale(weight: Weight) -> np.ndarray:
    return per_channel(weight, "scale")


def terms(weight: Weight, x_min: int, x_max: int) -> list[Term]:
    return [Term(identity_table(x_min, x_max), integers(weight))]


def real_values(weight: Weight) -> np.ndarray:
    return integers(weight) * broadcast_channel(grid_scale(weight), len(weight.shape))
