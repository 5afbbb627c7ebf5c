"""Rejects malformed graphs with a message naming the node, tensor or weight.

Every producer (lowering, spec loader, hand-built graphs) runs ``check_graph``.
"""

from __future__ import annotations

import math

import numpy as np

from qexport.errors import GraphError
from qexport.formats import get_format
from qexport.ir.graph import Graph, Node
from qexport.ir.ops import (
    DYNAMIC_OPERANDS,
    FLOAT_ADD,
    FLOAT_SCALE,
    OP_SIGNATURES,
    WEIGHTED_OPS,
    Op,
    dynamic_operands,
)
from qexport.ir.shapes import infer_shape

DTYPE_PRESERVING = frozenset({Op.RELU, Op.CLIP, Op.MAXPOOL, Op.AVGPOOL, Op.GLOBAL_AVGPOOL, Op.FLATTEN, Op.RESHAPE})
MAX_REQUANT_SHIFT = 62


def _check_attrs(node: Node) -> None:
    (min_inputs, max_inputs), required = OP_SIGNATURES[node.op]
    if not min_inputs <= len(node.inputs) <= max_inputs:
        raise GraphError(
            f"node {node.name!r} ({node.op.value}): {len(node.inputs)} inputs, expected {min_inputs}..{max_inputs}"
        )
    if len(node.outputs) != 1:
        raise GraphError(f"node {node.name!r} ({node.op.value}): expected exactly one output")
    for key, kind in required.items():
        if key not in node.attrs:
            raise GraphError(f"node {node.name!r} ({node.op.value}): missing attribute {key!r}")
        value = node.attrs[key]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise GraphError(f"node {node.name!r}: attribute {key!r} must be an integer, got {value!r}")
        if not isinstance(value, kind):
            raise GraphError(f"node {node.name!r}: attribute {key!r} must be a {kind.__name__}, got {value!r}")
    for key in ("stride", "dilation", "kernel"):
        if key in node.attrs and (len(node.attrs[key]) != 2 or min(node.attrs[key]) < 1):
            raise GraphError(f"node {node.name!r}: attribute {key!r} must be two positive integers")
    if "padding" in node.attrs and (len(node.attrs["padding"]) != 4 or min(node.attrs["padding"]) < 0):
        raise GraphError(f"node {node.name!r}: attribute 'padding' must be four non-negative integers")
    if node.op in (Op.MAXPOOL, Op.AVGPOOL):
        kernel, padding = node.attrs["kernel"], node.attrs["padding"]
        if any(pad > kernel[axis % 2] // 2 for axis, pad in enumerate(padding)):
            raise GraphError(f"node {node.name!r}: pooling padding must be at most half the kernel")
    if node.op is Op.CONV2D and node.attrs["groups"] < 1:
        raise GraphError(f"node {node.name!r}: groups must be >= 1")


def _check_weights(graph: Graph, node: Node, out_channels: int) -> None:
    weight_name = node.attrs["weight"]
    if weight_name not in graph.weights:
        raise GraphError(f"node {node.name!r}: weight {weight_name!r} is not in the graph")
    weight = graph.weights[weight_name]
    rank = 4 if node.op is Op.CONV2D else 2
    if len(weight.shape) != rank:
        raise GraphError(f"node {node.name!r}: weight {weight_name!r} has rank {len(weight.shape)}, expected {rank}")
    get_format(weight.format).check(weight)
    bias_name = node.attrs.get("bias")
    if bias_name is not None:
        if bias_name not in graph.weights:
            raise GraphError(f"node {node.name!r}: bias {bias_name!r} is not in the graph")
        bias = graph.weights[bias_name]
        if bias.format != "int_affine" or bias.shape != (out_channels,):
            raise GraphError(f"node {node.name!r}: bias {bias_name!r} must be int_affine of shape ({out_channels},)")
        get_format(bias.format).check(bias)


def _check_float_scale(node: Node, channels: int) -> None:
    """float_scale: 1 or per-channel positive finite float32-exact numbers; no per-sample operands."""
    values = node.attrs[FLOAT_SCALE]
    numbers = isinstance(values, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if not numbers or len(values) not in (1, channels):
        raise GraphError(f"node {node.name!r}: float_scale needs 1 or {channels} numbers")
    if not all(math.isfinite(v) and v > 0 and float(np.float32(v)) == v for v in values):
        raise GraphError(f"node {node.name!r}: float_scale values must be positive, finite and float32-exact")
    if len(node.inputs) > 1 or "dynamic" in node.attrs:
        raise GraphError(f"node {node.name!r}: float_scale cannot be combined with dynamic requantization")


def _check_float_add(graph: Graph, node: Node) -> None:
    """float_add [r_a, r_b, k]: float32-exact, fed by an add that packs its operands losslessly."""
    values = node.attrs[FLOAT_ADD]
    numbers = isinstance(values, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if not numbers or len(values) != 3 or not all(math.isfinite(v) and float(np.float32(v)) == v for v in values):
        raise GraphError(f"node {node.name!r}: float_add needs three finite float32-exact numbers [r_a, r_b, k]")
    if FLOAT_SCALE in node.attrs or len(node.inputs) > 1 or "dynamic" in node.attrs:
        raise GraphError(f"node {node.name!r}: float_add excludes float_scale and dynamic requantization")
    producer = next((n for n in graph.nodes if n.outputs[0] == node.inputs[0]), None)
    if producer is None or producer.op is not Op.ADD or producer.attrs["rhs_multiplier"] != 1:
        raise GraphError(f"node {node.name!r}: float_add needs an add with rhs_multiplier 1 as its input")
    rhs = graph.tensors[producer.inputs[1]]
    reach = max(abs(rhs.dtype.min - rhs.quant.zero_point), abs(rhs.dtype.max - rhs.quant.zero_point))
    lhs_multiplier = producer.attrs["lhs_multiplier"]
    if lhs_multiplier <= 2 * reach or lhs_multiplier & (lhs_multiplier - 1):
        raise GraphError(f"node {node.name!r}: float_add needs lhs_multiplier a power of two above 2 x |rhs - zp|")


def _check_requantize(graph: Graph, node: Node, channels: int) -> None:
    out = graph.tensors[node.outputs[0]]
    for key in ("multiplier", "shift"):
        values = node.attrs[key]
        if len(values) not in (1, channels) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise GraphError(f"node {node.name!r}: {key} needs 1 or {channels} integers")
    if any(m < 0 or m >= 1 << 31 for m in node.attrs["multiplier"]):
        raise GraphError(f"node {node.name!r}: multiplier must be in [0, 2**31)")
    if any(abs(s) > MAX_REQUANT_SHIFT for s in node.attrs["shift"]):
        raise GraphError(f"node {node.name!r}: shift must be in [-{MAX_REQUANT_SHIFT}, {MAX_REQUANT_SHIFT}]")
    if FLOAT_SCALE in node.attrs:
        _check_float_scale(node, channels)
    if FLOAT_ADD in node.attrs:
        _check_float_add(graph, node)
    low, high = node.attrs["clip_min"], node.attrs["clip_max"]
    if not (out.dtype.min <= low <= high <= out.dtype.max):
        raise GraphError(f"node {node.name!r}: clip [{low}, {high}] outside {out.dtype.name}")

    def magnitude_bits(info) -> int:  # |value| <= 2**magnitude_bits
        return info.dtype.bits - 1 if info.dtype.signed else info.dtype.bits

    mode = node.attrs.get("dynamic", "mul")
    if len(node.inputs) > 1 or "dynamic" in node.attrs:
        expected = 1 + len(DYNAMIC_OPERANDS[mode]) if isinstance(mode, str) and mode in DYNAMIC_OPERANDS else -1
        if expected != len(node.inputs):
            raise GraphError(
                f"node {node.name!r}: dynamic={mode!r} with {len(node.inputs)} inputs (expected 'mul' or 'div' "
                "with 2, 'muldiv' with 3)"
            )
    operand_bits = {}
    for role, name in dynamic_operands(node).items():
        info = graph.tensors[name]
        if len(info.shape) != 1 or (info.quant is not None and info.quant.zero_point != 0):
            raise GraphError(
                f"node {node.name!r}: dynamic operand {name!r} must be one value per sample with zero point 0"
            )
        operand_bits[role] = magnitude_bits(info)
    acc_info = graph.tensors[node.inputs[0]]
    acc_bits = acc_info.dtype.bits
    shifts = node.attrs["shift"] * (channels if len(node.attrs["shift"]) == 1 else 1)
    multipliers = node.attrs["multiplier"] * (channels if len(node.attrs["multiplier"]) == 1 else 1)
    for multiplier, shift in zip(multipliers, shifts, strict=False):
        # |acc * multiplier * num << left| must stay below 2**62 (rounding then adds less than 2**61)
        if magnitude_bits(acc_info) + multiplier.bit_length() + operand_bits.get("num", 0) + max(-shift, 0) > 62:
            raise GraphError(
                f"node {node.name!r}: {acc_bits}-bit accumulator x multiplier {multiplier} << {max(-shift, 0)} "
                "can exceed 64 bits"
            )
        # the divisor den << shift must stay below 2**62 too
        if "den" in operand_bits and operand_bits["den"] + max(shift, 0) > 62:
            raise GraphError(f"node {node.name!r}: dynamic divisor << {shift} can exceed 64 bits")


def check_graph(graph: Graph) -> Graph:
    """Validate names, order, attributes, weights, shapes and integer types; return the graph."""
    for name, info in graph.tensors.items():
        if info.quant is not None:
            zero = info.quant.zero_point
            if isinstance(zero, bool) or not isinstance(zero, int) or not info.dtype.min <= zero <= info.dtype.max:
                raise GraphError(f"tensor {name!r}: zero point {zero!r} is not an integer of {info.dtype.name}")
    defined: set[str] = set()
    for name in graph.inputs:
        info = graph.tensors.get(name)
        if info is None:
            raise GraphError(f"graph input {name!r} has no tensor info")
        if info.quant is None:
            raise GraphError(f"graph input {name!r} needs quantization info (scale, zero point)")
        defined.add(name)
    node_names: set[str] = set()
    for node in graph.nodes:
        if not isinstance(node.op, Op):
            raise GraphError(f"node {node.name!r}: unknown op {node.op!r}")
        if node.name in node_names:
            raise GraphError(f"node {node.name!r}: duplicate node name")
        node_names.add(node.name)
        _check_attrs(node)
        for name in node.inputs:
            if name not in defined:
                raise GraphError(f"node {node.name!r}: input {name!r} is used before it is produced")
        for name in node.outputs:
            if name in defined:
                raise GraphError(f"node {node.name!r}: output {name!r} is produced twice")
            if name not in graph.tensors:
                raise GraphError(f"node {node.name!r}: output {name!r} has no tensor info")
        in_infos = [graph.tensors[name] for name in node.inputs]
        out = graph.tensors[node.outputs[0]]
        if node.op in WEIGHTED_OPS:
            if node.attrs["weight"] not in graph.weights:
                raise GraphError(f"node {node.name!r}: weight {node.attrs['weight']!r} is not in the graph")
            _check_weights(graph, node, graph.weights[node.attrs["weight"]].shape[0])
        data_shapes = [info.shape for info in in_infos]
        if node.op is Op.REQUANTIZE:
            data_shapes = data_shapes[:1]
        expected = infer_shape(graph, node, data_shapes)
        if tuple(out.shape[1:]) != tuple(expected[1:]):
            raise GraphError(f"node {node.name!r}: output {out.name!r} declared {out.shape}, inferred {expected}")
        if node.op in DTYPE_PRESERVING and out.dtype != in_infos[0].dtype:
            raise GraphError(
                f"node {node.name!r}: output type {out.dtype.name} differs from input {in_infos[0].dtype.name}"
            )
        if node.op is Op.CONCAT and any(info.dtype != out.dtype for info in in_infos):
            raise GraphError(f"node {node.name!r}: concat operands must share the output type {out.dtype.name}")
        if (
            node.op is Op.CLIP
            and not out.dtype.min <= node.attrs["clip_min"] <= node.attrs["clip_max"] <= out.dtype.max
        ):
            raise GraphError(f"node {node.name!r}: clip range outside {out.dtype.name}")
        if node.op is Op.REQUANTIZE:
            _check_requantize(graph, node, in_infos[0].shape[1] if len(in_infos[0].shape) > 1 else 1)
        defined.update(node.outputs)
    for name in graph.outputs:
        if name not in defined:
            raise GraphError(f"graph output {name!r} is never produced")
        if graph.tensors[name].quant is None:
            raise GraphError(f"graph output {name!r} needs quantization info to be dequantized")
    return graph
