"""conv2d: sum over the window of product(x - x_zp, w) per the weight format, plus bias."""

from __future__ import annotations

import numpy as np

from qexport.formats import get_format
from qexport.ir.graph import Graph, Node
from qexport.reference.ops.common import pad_nchw, windows, zero_point
from qexport.reference.ops.op_linear import bias_integers


def run(graph: Graph, node: Node, inputs: list[np.ndarray]) -> np.ndarray:
    x_info = graph.tensors[node.inputs[0]]
    x_zp = zero_point(graph, node.inputs[0])
    x = inputs[0].astype(np.int64) - x_zp
    x_min, x_max = x_info.dtype.min - x_zp, x_info.dtype.max - x_zp
    weight = graph.weights[node.attrs["weight"]]
    out_c, in_per_group = weight.shape[0], weight.shape[1]
    groups = node.attrs["groups"]
    out_per_group = out_c // groups
    padded = pad_nchw(x, node.attrs["padding"], 0)
    acc = None
    for term in get_format(weight.format).terms(weight, x_min, x_max):
        looked_up = term.table[padded - x_min]
        for i, j, view in windows(looked_up, node, weight.shape[2:], node.attrs["dilation"]):
            if acc is None:
                acc = np.zeros((x.shape[0], out_c, view.shape[2], view.shape[3]), dtype=np.int64)
            for g in range(groups):
                channels = view[:, g * in_per_group : (g + 1) * in_per_group]
                coeff = term.coeff[g * out_per_group : (g + 1) * out_per_group, :, i, j]
                acc[:, g * out_per_group : (g + 1) * out_per_group] += np.einsum("nchw,oc->nohw", channels, coeff)
    if acc is None:  # every weight is zero
        shape = graph.tensors[node.outputs[0]].shape
        acc = np.zeros((x.shape[0], *shape[1:]), dtype=np.int64)
    return acc + bias_integers(graph, node).reshape(1, -1, 1, 1)
