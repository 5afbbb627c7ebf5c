"""requantize: clip(round_half_even(acc * multiplier[c] [* dynamic[n]] / 2**shift[c]) + zp)."""

from __future__ import annotations

import numpy as np

from qexport.ir.graph import Graph, Node
from qexport.reference.ops.common import zero_point
from qexport.reference.rounding import round_half_even_shift


def _per_channel(values: list[int], ndim: int) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape((1, -1) + (1,) * (ndim - 2))


def run(graph: Graph, node: Node, inputs: list[np.ndarray]) -> np.ndarray:
    acc = inputs[0].astype(np.int64)
    product = acc * _per_channel(node.attrs["multiplier"], acc.ndim)
    if len(inputs) == 2:
        product = product * inputs[1].astype(np.int64).reshape((-1,) + (1,) * (acc.ndim - 1))
    rounded = round_half_even_shift(product, _per_channel(node.attrs["shift"], acc.ndim))
    shifted = rounded + zero_point(graph, node.outputs[0])
    return np.clip(shifted, node.attrs["clip_min"], node.attrs["clip_max"])
