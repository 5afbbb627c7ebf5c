"""Output shape of every op from its input shapes (batch dimension is -1 or concrete)."""

from __future__ import annotations

from math import prod

from qexport.errors import GraphError
from qexport.ir.graph import Graph, Node
from qexport.ir.ops import Op


def _window(size: int, kernel: int, stride: int, pad_before: int, pad_after: int, dilation: int = 1) -> int:
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def _spatial(node: Node, shape: tuple[int, ...], kernel: list[int], dilation: list[int]) -> tuple[int, int]:
    stride, pad = node.attrs["stride"], node.attrs["padding"]  # padding: top, left, bottom, right
    out_h = _window(shape[2], kernel[0], stride[0], pad[0], pad[2], dilation[0])
    out_w = _window(shape[3], kernel[1], stride[1], pad[1], pad[3], dilation[1])
    if out_h < 1 or out_w < 1:
        raise GraphError(f"node {node.name!r}: window larger than the padded input {shape[2:]}")
    return out_h, out_w


def infer_shape(graph: Graph, node: Node, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """Shape of the node's first output; raises GraphError naming the node on a mismatch."""
    first = shapes[0]
    if node.op is Op.CONV2D:
        weight = graph.weights[node.attrs["weight"]]
        out_c, in_per_group, k_h, k_w = weight.shape
        groups = node.attrs["groups"]
        if len(first) != 4 or first[1] != in_per_group * groups or out_c % groups:
            raise GraphError(
                f"node {node.name!r}: input {first} does not match weight {weight.shape} with groups={groups}"
            )
        out_h, out_w = _spatial(node, first, [k_h, k_w], node.attrs["dilation"])
        return (first[0], out_c, out_h, out_w)
    if node.op is Op.LINEAR:
        weight = graph.weights[node.attrs["weight"]]
        if len(first) != 2 or first[1] != weight.shape[1]:
            raise GraphError(f"node {node.name!r}: input {first} does not match weight {weight.shape}")
        return (first[0], weight.shape[0])
    if node.op is Op.ADD:
        if shapes[0][1:] != shapes[1][1:]:
            raise GraphError(f"node {node.name!r}: operand shapes {shapes[0]} and {shapes[1]} differ")
        return first
    if node.op in (Op.REQUANTIZE, Op.RELU, Op.CLIP):
        return first
    if node.op in (Op.MAXPOOL, Op.AVGPOOL):
        if len(first) != 4:
            raise GraphError(f"node {node.name!r}: pooling needs a 4-D input, got {first}")
        return (first[0], first[1], *_spatial(node, first, node.attrs["kernel"], [1, 1]))
    if node.op is Op.GLOBAL_AVGPOOL:
        if len(first) != 4:
            raise GraphError(f"node {node.name!r}: pooling needs a 4-D input, got {first}")
        return (first[0], first[1], 1, 1)
    if node.op is Op.FLATTEN:
        return (first[0], prod(first[1:]))
    if node.op is Op.RESHAPE:
        target = tuple(node.attrs["shape"])
        if prod(target) != prod(first[1:]):
            raise GraphError(f"node {node.name!r}: cannot reshape {first[1:]} to {target}")
        return (first[0], *target)
    if node.op is Op.CONCAT:
        axis = node.attrs["axis"]
        if axis < 1 or any(len(s) != len(first) for s in shapes):
            raise GraphError(f"node {node.name!r}: concat needs equal ranks and a non-batch axis")
        for other in shapes[1:]:
            if any(a != b for i, (a, b) in enumerate(zip(first, other, strict=True)) if i not in (0, axis)):
                raise GraphError(f"node {node.name!r}: concat operand shapes {first} and {other} differ")
        return (*first[:axis], sum(s[axis] for s in shapes), *first[axis + 1 :])
    raise GraphError(f"node {node.name!r}: no shape rule for op {node.op.value}")
