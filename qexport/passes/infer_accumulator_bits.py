"""Infer each accumulator's width from worst-case operand ranges, and reject overflow.

For conv/linear the bound uses the real weights: per output channel, the largest
and smallest sum any input in the input type's range can produce, plus the bias.
"""

from __future__ import annotations

import numpy as np

from qexport.errors import AccumulatorOverflowError
from qexport.formats import get_format, int_affine
from qexport.ir.dtypes import IntType
from qexport.ir.graph import Graph, Node
from qexport.ir.ops import Op

DEFAULT_MAX_ACC_BITS = 32


def _centred_range(graph: Graph, tensor: str) -> tuple[int, int]:
    info = graph.tensors[tensor]
    zp = 0 if info.quant is None else info.quant.zero_point
    return info.dtype.min - zp, info.dtype.max - zp


def weighted_range(graph: Graph, node: Node) -> tuple[int, int]:
    """Worst-case accumulator range of a conv/linear node over all channels."""
    x_min, x_max = _centred_range(graph, node.inputs[0])
    weight = graph.weights[node.attrs["weight"]]
    low = np.zeros(weight.shape[0], dtype=object)
    high = np.zeros(weight.shape[0], dtype=object)
    for term in get_format(weight.format).terms(weight, x_min, x_max):
        coeff = term.coeff.reshape(weight.shape[0], -1).astype(object)
        ends = (int(term.table[0]), int(term.table[-1]))  # tables are monotone in x
        low = low + np.minimum(coeff * ends[0], coeff * ends[1]).sum(axis=1)
        high = high + np.maximum(coeff * ends[0], coeff * ends[1]).sum(axis=1)
    if node.attrs.get("bias") is not None:
        bias = int_affine.integers(graph.weights[node.attrs["bias"]]).astype(object)
        low, high = low + bias, high + bias
    return int(low.min()), int(high.max())


def value_range(graph: Graph, node: Node) -> tuple[int, int]:
    if node.op in (Op.CONV2D, Op.LINEAR):
        return weighted_range(graph, node)
    lhs, rhs = _centred_range(graph, node.inputs[0]), _centred_range(graph, node.inputs[1])
    lm, rm = node.attrs["lhs_multiplier"], node.attrs["rhs_multiplier"]
    lhs_ends, rhs_ends = (lhs[0] * lm, lhs[1] * lm), (rhs[0] * rm, rhs[1] * rm)
    return min(lhs_ends) + min(rhs_ends), max(lhs_ends) + max(rhs_ends)


def infer_accumulator_bits(graph: Graph, max_acc_bits: int = DEFAULT_MAX_ACC_BITS) -> Graph:
    """Set each accumulator tensor's type to the narrowest signed type; raise past ``max_acc_bits``."""
    for node in graph.nodes:
        if node.op not in (Op.CONV2D, Op.LINEAR, Op.ADD):
            continue
        low, high = value_range(graph, node)
        needed = max((-low - 1).bit_length(), high.bit_length()) + 1  # signed two's complement
        if needed > max_acc_bits:
            raise AccumulatorOverflowError(
                f"node {node.name!r}: accumulator needs {needed} bits, the target allows {max_acc_bits}"
            )
        dtype = IntType(True, max(needed, 2))
        graph.tensors[node.outputs[0]].dtype = dtype
        node.attrs["acc_bits"] = dtype.bits
    return graph
