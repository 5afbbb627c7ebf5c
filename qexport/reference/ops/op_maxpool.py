"""maxpool: window maximum; padding never wins (padded with the type's minimum)."""

from __future__ import annotations

import numpy as np

from qexport.ir.graph import Graph, Node
from qexport.reference.ops.common import pad_nchw, windows


def run(graph: Graph, node: Node, inputs: list[np.ndarray]) -> np.ndarray:
    padded = pad_nchw(inputs[0].astype(np.int64), node.attrs["padding"], graph.tensors[node.inputs[0]].dtype.min)
    views = [view for _, _, view in windows(padded, node, node.attrs["kernel"], [1, 1])]
    return np.max(np.stack(views), axis=0)
