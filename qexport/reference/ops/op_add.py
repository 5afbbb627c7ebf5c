"""add: operands aligned to a common accumulator scale by integer multipliers."""

from __future__ import annotations

import numpy as np

from qexport.ir.graph import Graph, Node
from qexport.reference.ops.common import zero_point


def run(graph: Graph, node: Node, inputs: list[np.ndarray]) -> np.ndarray:
    lhs = inputs[0].astype(np.int64) - zero_point(graph, node.inputs[0])
    rhs = inputs[1].astype(np.int64) - zero_point(graph, node.inputs[1])
    return lhs * node.attrs["lhs_multiplier"] + rhs * node.attrs["rhs_multiplier"]
