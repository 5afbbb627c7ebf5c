"""Tiny helpers shared by the reference ops."""

from __future__ import annotations

import numpy as np

from qexport.ir.graph import Graph, Node


def zero_point(graph: Graph, tensor: str) -> int:
    quant = graph.tensors[tensor].quant
    return 0 if quant is None else int(quant.zero_point)


def pad_nchw(x: np.ndarray, padding: list[int], value: int) -> np.ndarray:
    top, left, bottom, right = padding
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def windows(x: np.ndarray, node: Node, kernel: list[int], dilation: list[int]):
    """Yield (i, j, strided view) for every kernel offset of a padded NCHW tensor."""
    stride = node.attrs["stride"]
    n, c, h, w = x.shape
    out_h = (h - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    out_w = (w - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            top, left = i * dilation[0], j * dilation[1]
            yield (
                i,
                j,
                x[
                    :,
                    :,
                    top : top + stride[0] * (out_h - 1) + 1 : stride[0],
                    left : left + stride[1] * (out_w - 1) + 1 : stride[1],
                ],
            )
