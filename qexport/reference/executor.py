"""The oracle: executes an integer IR graph exactly, op by op, with numpy int64."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from qexport.errors import AccumulatorOverflowError, QExportError
from qexport.ir.graph import Graph, Node, TensorInfo
from qexport.ir.ops import Op
from qexport.reference.ops import (
    op_add,
    op_avgpool,
    op_clip,
    op_conv2d,
    op_global_avgpool,
    op_linear,
    op_maxpool,
    op_relu,
    op_requantize,
    op_shape,
)

OpRunner = Callable[[Graph, Node, list[np.ndarray]], np.ndarray]

RUNNERS: dict[Op, OpRunner] = {
    Op.CONV2D: op_conv2d.run,
    Op.LINEAR: op_linear.run,
    Op.ADD: op_add.run,
    Op.REQUANTIZE: op_requantize.run,
    Op.RELU: op_relu.run,
    Op.CLIP: op_clip.run,
    Op.MAXPOOL: op_maxpool.run,
    Op.AVGPOOL: op_avgpool.run,
    Op.GLOBAL_AVGPOOL: op_global_avgpool.run,
    Op.FLATTEN: op_shape.flatten,
    Op.RESHAPE: op_shape.reshape,
    Op.CONCAT: op_shape.concat,
}


def quantize_input(info: TensorInfo, values: np.ndarray) -> np.ndarray:
    """ONNX QuantizeLinear's rule: clip(rint(float32(x) / float32(scale)) + zp), ties to even."""
    quant = info.quant
    scale = np.float32(quant.scale)
    quantized = np.rint(np.asarray(values, dtype=np.float32) / scale).astype(np.int64) + quant.zero_point
    return np.clip(quantized, info.dtype.min, info.dtype.max)


def dequantize_output(info: TensorInfo, values: np.ndarray) -> np.ndarray:
    """ONNX DequantizeLinear's rule: float32(q - zp) * float32(scale)."""
    quant = info.quant
    return (np.asarray(values, dtype=np.int64) - quant.zero_point).astype(np.float32) * np.float32(quant.scale)


def run_node(graph: Graph, node: Node, inputs: list[np.ndarray]) -> np.ndarray:
    """Run one node and check its result fits the output's declared integer type."""
    result = RUNNERS[node.op](graph, node, inputs)
    info = graph.tensors[node.outputs[0]]
    if result.size and (result.min() < info.dtype.min or result.max() > info.dtype.max):
        raise AccumulatorOverflowError(
            f"node {node.name!r}: result range [{result.min()}, {result.max()}] overflows {info.dtype.name}"
        )
    return result


def run_graph(graph: Graph, feeds: dict[str, np.ndarray], keep_all: bool = False) -> dict[str, np.ndarray]:
    """Execute on integer feeds (see ``quantize_input``); return the outputs (or every tensor)."""
    values: dict[str, np.ndarray] = {}
    for name in graph.inputs:
        if name not in feeds:
            raise QExportError(f"missing input {name!r}")
        info = graph.tensors[name]
        feed = np.asarray(feeds[name], dtype=np.int64)
        if feed.shape[1:] != tuple(info.shape[1:]):
            raise QExportError(f"input {name!r}: shape {feed.shape} does not match {info.shape}")
        if feed.size and (feed.min() < info.dtype.min or feed.max() > info.dtype.max):
            raise QExportError(
                f"input {name!r}: values [{feed.min()}, {feed.max()}] outside its type {info.dtype.name}"
            )
        values[name] = feed
    for node in graph.nodes:
        values[node.outputs[0]] = run_node(graph, node, [values[name] for name in node.inputs])
    if keep_all:
        return values
    return {name: values[name] for name in graph.outputs}


def run_float(graph: Graph, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Quantize float inputs, execute, dequantize outputs: what the exported ONNX returns."""
    feeds = {name: quantize_input(graph.tensors[name], inputs[name]) for name in graph.inputs}
    outputs = run_graph(graph, feeds)
    return {name: dequantize_output(graph.tensors[name], value) for name, value in outputs.items()}
