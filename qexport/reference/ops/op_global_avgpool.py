"""global_avgpool: round_half_even(sum over H, W of (x - zp) / (H * W)) + zp."""

from __future__ import annotations

import numpy as np

from qexport.ir.graph import Graph, Node
from qexport.reference.ops.common import zero_point
from qexport.reference.rounding import round_half_even_divide


def run(graph: Graph, node: Node, inputs: list[np.ndarray]) -> np.ndarray:
    zp = zero_point(graph, node.inputs[0])
    x = inputs[0].astype(np.int64) - zp
    total = x.sum(axis=(2, 3), keepdims=True)
    return round_half_even_divide(total, x.shape[2] * x.shape[3]) + zp
