"""requantize: clip(round_half_even(acc * multiplier[c] * num[n] / (den[n] * 2**shift[c])) + zp).

``num`` and ``den`` are the optional per-sample operands named by the ``dynamic`` attribute
("mul": [acc, num], "div": [acc, den], "muldiv": [acc, num, den]; "mul" when absent). One rounding,
exact in integers: the numerator acc * multiplier * num (<< -shift) and the divisor den (<< shift)
stay below 2**62 (the checker's rule).
"""

from __future__ import annotations

import numpy as np

from qexport.errors import QExportError
from qexport.ir.graph import Graph, Node
from qexport.ir.ops import dynamic_operands
from qexport.reference.ops.common import zero_point
from qexport.reference.rounding import round_half_even_divide, round_half_even_shift


def _per_channel(values: list[int], ndim: int) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape((1, -1) + (1,) * (ndim - 2))


def run(graph: Graph, node: Node, inputs: list[np.ndarray]) -> np.ndarray:
    acc = inputs[0].astype(np.int64)
    operands = dict(zip(dynamic_operands(node), inputs[1:], strict=False))
    per_sample = (-1,) + (1,) * (acc.ndim - 1)
    product = acc * _per_channel(node.attrs["multiplier"], acc.ndim)
    if "num" in operands:
        product = product * operands["num"].astype(np.int64).reshape(per_sample)
    shift = _per_channel(node.attrs["shift"], acc.ndim)
    if "den" in operands:
        den = operands["den"].astype(np.int64)
        if den.size and den.min() <= 0:
            raise QExportError(
                f"node {node.name!r}: dynamic divisor {node.inputs[-1]!r} must be positive, got {den.min()}"
            )
        divisor = den.reshape(per_sample) << np.maximum(shift, 0)
        rounded = round_half_even_divide(product << np.maximum(-shift, 0), divisor)
    else:
        rounded = round_half_even_shift(product, shift)
    shifted = rounded + zero_point(graph, node.outputs[0])
    return np.clip(shifted, node.attrs["clip_min"], node.attrs["clip_max"])
