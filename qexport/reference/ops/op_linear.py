"""linear: y[n, m] = sum_k product(x[n, k] - x_zp, w[m, k]) + bias[m]."""

from __future__ import annotations

import numpy as np

from qexport.formats import get_format, int_affine
from qexport.ir.graph import Graph, Node
from qexport.reference.ops.common import zero_point


def bias_integers(graph: Graph, node: Node) -> np.ndarray:
    weight = graph.weights[node.attrs["weight"]]
    bias_name = node.attrs.get("bias")
    if bias_name is None:
        return np.zeros(weight.shape[0], dtype=np.int64)
    return int_affine.integers(graph.weights[bias_name])


def run(graph: Graph, node: Node, inputs: list[np.ndarray]) -> np.ndarray:
    x_info = graph.tensors[node.inputs[0]]
    x_zp = zero_point(graph, node.inputs[0])
    x = inputs[0].astype(np.int64) - x_zp
    weight = graph.weights[node.attrs["weight"]]
    acc = np.zeros((x.shape[0], weight.shape[0]), dtype=np.int64)
    for term in get_format(weight.format).terms(weight, x_info.dtype.min - x_zp, x_info.dtype.max - x_zp):
        acc += term.table[x - (x_info.dtype.min - x_zp)] @ term.coeff.T
    return acc + bias_integers(graph, node)
