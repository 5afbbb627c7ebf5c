"""relu: max(x, zero_point), i.e. max(real, 0)."""

from __future__ import annotations

import numpy as np

from qexport.ir.graph import Graph, Node
from qexport.reference.ops.common import zero_point


def run(graph: Graph, node: Node, inputs: list[np.ndarray]) -> np.ndarray:
    return np.maximum(inputs[0], zero_point(graph, node.inputs[0]))
