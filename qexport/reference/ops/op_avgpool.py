"""avgpool: round_half_even(sum(x - zp) / count) + zp on the input's own grid."""

from __future__ import annotations

import numpy as np

from qexport.ir.graph import Graph, Node
from qexport.reference.ops.common import pad_nchw, windows, zero_point
from qexport.reference.rounding import round_half_even_divide


def run(graph: Graph, node: Node, inputs: list[np.ndarray]) -> np.ndarray:
    zp = zero_point(graph, node.inputs[0])
    centred = pad_nchw(inputs[0].astype(np.int64) - zp, node.attrs["padding"], 0)
    inside = pad_nchw(np.ones_like(inputs[0], dtype=np.int64), node.attrs["padding"], 0)
    kernel = node.attrs["kernel"]
    total = sum(view for _, _, view in windows(centred, node, kernel, [1, 1]))
    if node.attrs["count_include_pad"]:
        count = np.int64(kernel[0] * kernel[1])
    else:
        count = sum(view for _, _, view in windows(inside, node, kernel, [1, 1]))
    return round_half_even_divide(total, count) + zp
