"""Shared pieces of the ONNX importers: constants, attributes, and an IR graph builder.

Every importer walks the ONNX nodes in order and keeps, per ONNX tensor name, what that tensor is
in IR terms (an integer IR tensor, its dequantized float, a constant, an accumulator). The IR it
builds is checked by ``check_graph`` after the accumulator widths are inferred.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
import onnx
from onnx import helper, numpy_helper

from qexport.errors import QExportError
from qexport.frontend.requant import multiplier_and_shift
from qexport.ir.checker import check_graph
from qexport.ir.dtypes import IntType
from qexport.ir.graph import Graph, Node, QuantInfo, TensorInfo, Weight
from qexport.ir.ops import Op
from qexport.ir.shapes import infer_shape
from qexport.passes.infer_accumulator_bits import infer_accumulator_bits

NUMPY_INT_TYPES = {
    np.dtype(ml_dtypes.int4): IntType(True, 4),
    np.dtype(ml_dtypes.uint4): IntType(False, 4),
    np.dtype(np.int8): IntType(True, 8),
    np.dtype(np.uint8): IntType(False, 8),
    np.dtype(np.int16): IntType(True, 16),
    np.dtype(np.uint16): IntType(False, 16),
    np.dtype(np.int32): IntType(True, 32),
}


class OnnxImportError(QExportError):
    """An ONNX file that cannot be imported; the message names the node and op (the caller adds the file)."""


def unsupported(node: onnx.NodeProto, why: str) -> OnnxImportError:
    return OnnxImportError(f"node {node.name or node.output[0]!r} ({node.op_type}): {why}")


def attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def safe_name(name: str) -> str:
    """An identifier-like tensor name for the IR (ONNX names carry '/', ':', '.')."""
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", name).strip("_") or "t"
    return cleaned if not cleaned[0].isdigit() else f"t_{cleaned}"


@dataclass
class IntTensor:
    """An integer IR tensor (a QuantizeLinear output)."""

    tensor: str


@dataclass
class OnGrid:
    """A float tensor equal to the dequantized IR tensor ``tensor`` (a DequantizeLinear output)."""

    tensor: str


@dataclass
class Const:
    value: np.ndarray


@dataclass
class QuantConst:
    """A dequantized constant: real = scale * (q - zero_point) along ``axis``."""

    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int


@dataclass
class Accumulator:
    """An exact integer IR tensor whose real value is scale[c] * acc (a float Conv/Gemm/Add output)."""

    tensor: str
    scale: np.ndarray  # per channel, float64
    clip_real: tuple[float, float] = (-np.inf, np.inf)  # Relu / Clip applied before the next QuantizeLinear


@dataclass
class Builder:
    """Accumulates the IR graph and the ONNX names behind its inputs and integer tensors."""

    name: str
    graph: Graph = field(init=False)
    onnx_inputs: dict[str, str] = field(default_factory=dict)  # IR input -> ONNX input name
    onnx_tensors: dict[str, str] = field(default_factory=dict)  # IR tensor -> ONNX tensor holding its integers
    _names: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.graph = Graph(safe_name(self.name), [], [], {}, [], {}, {})

    def fresh(self, base: str) -> str:
        name, index = safe_name(base), 1
        while name in self._names:
            index += 1
            name = f"{safe_name(base)}_{index}"
        self._names.add(name)
        return name

    def add_node(self, op: Op, name: str, inputs: list[str], dtype: IntType, quant: QuantInfo | None, **attrs) -> str:
        node_name, output = self.fresh(name), self.fresh(f"{name}_out")
        node = Node(op, node_name, inputs, [output], attrs)
        shapes = [self.graph.tensors[i].shape for i in inputs[: 1 if op is Op.REQUANTIZE else None]]
        self.graph.tensors[output] = TensorInfo(output, dtype, tuple(infer_shape(self.graph, node, shapes)), quant)
        self.graph.nodes.append(node)
        return output

    def add_weight(self, base: str, values: np.ndarray, scale, zero_point, dtype: IntType | None = None) -> str:
        values = np.asarray(values, dtype=np.int64)
        zero = np.asarray(zero_point, dtype=np.int64).reshape(-1)
        if dtype is None:
            every = np.concatenate([values.reshape(-1), zero])
            dtype = IntType.for_range(min(int(every.min()), -1), max(int(every.max()), 1))
        name = self.fresh(base)
        scale_list = [float(s) for s in np.asarray(scale, dtype=np.float64).reshape(-1)]
        zero_list = [int(z) for z in zero]
        attrs = {
            "dtype": dtype.name,
            "scale": scale_list[0] if len(scale_list) == 1 else scale_list,
            "zero_point": zero_list[0] if len(set(zero_list)) == 1 else zero_list,
            "axis": 0,
        }
        self.graph.weights[name] = Weight(name, "int_affine", tuple(values.shape), {"values": values}, attrs)
        return name

    def add_input(self, onnx_name: str, shape: tuple[int, ...], dtype: IntType, quant: QuantInfo) -> str:
        name = self.fresh(onnx_name)
        self.graph.tensors[name] = TensorInfo(name, dtype, (-1, *shape[1:]), quant)
        self.graph.inputs.append(name)
        self.onnx_inputs[name] = onnx_name
        return name

    def quant(self, tensor: str) -> QuantInfo:
        return self.graph.tensors[tensor].quant

    def finish(self, max_acc_bits: int) -> Graph:
        graph = infer_accumulator_bits(self.graph, max_acc_bits)
        graph.metadata["onnx_inputs"] = dict(self.onnx_inputs)
        graph.metadata["onnx_tensors"] = {k: v for k, v in self.onnx_tensors.items() if k in graph.tensors}
        return check_graph(graph)


def int_type_of(array: np.ndarray, where: onnx.NodeProto) -> IntType:
    kind = NUMPY_INT_TYPES.get(np.asarray(array).dtype)
    if kind is None:
        raise unsupported(
            where, f"quantized type {np.asarray(array).dtype} is not supported (int4/uint4/int8/uint8/int16/uint16)"
        )
    return kind


def scalar(value: np.ndarray, node: onnx.NodeProto, what: str) -> float | int:
    array = np.asarray(value)
    if array.size != 1:
        raise unsupported(node, f"{what} must be one value per tensor here, got shape {array.shape}")
    return array.reshape(-1)[0].item()


def same_quant(quant: QuantInfo, scale: float, zero_point: int) -> bool:
    return float(np.float32(quant.scale)) == float(np.float32(scale)) and quant.zero_point == zero_point


def requantize_integer(
    b: Builder, name: str, acc: str, ratio: np.ndarray, dtype: IntType, quant: QuantInfo, clip: tuple[int, int]
) -> str:
    """Integer requantize (multiplier/shift, one half-to-even rounding of the exact ratio)."""
    pairs = [multiplier_and_shift(float(r)) for r in np.asarray(ratio, dtype=np.float64).reshape(-1)]
    multipliers, shifts = [p[0] for p in pairs], [p[1] for p in pairs]
    if len(set(pairs)) == 1:
        multipliers, shifts = multipliers[:1], shifts[:1]
    return b.add_node(
        Op.REQUANTIZE,
        name,
        [acc],
        dtype,
        quant,
        multiplier=multipliers,
        shift=shifts,
        clip_min=clip[0],
        clip_max=clip[1],
    )


def requantize_float(
    b: Builder, name: str, acc: str, scale: np.ndarray, dtype: IntType, quant: QuantInfo, clip: tuple[int, int]
) -> str:
    """Float32 requantize (``float_scale``); multiplier/shift hold the nearest integer form."""
    scale = np.asarray(scale, dtype=np.float32).reshape(-1)
    if len(set(scale.tolist())) == 1:
        scale = scale[:1]
    out = requantize_integer(b, name, acc, scale.astype(np.float64), dtype, quant, clip)
    b.graph.nodes[-1].attrs["float_scale"] = [float(s) for s in scale]
    return out


def ones_pool_weight(b: Builder, base: str, channels: int, kernel: tuple[int, int]) -> str:
    """A depthwise all-ones kernel: an average pool's exact integer window sum as a conv2d."""
    return b.add_weight(base, np.ones((channels, 1, *kernel), dtype=np.int64), 1.0, 0, IntType(True, 2))


def constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant node outputs by name."""
    values = {}
    for init in model.graph.initializer:
        try:
            values[init.name] = numpy_helper.to_array(init)
        except (ValueError, TypeError) as error:
            raise OnnxImportError(f"initializer {init.name!r}: corrupt data ({error})") from None
    for node in model.graph.node:
        if node.op_type == "Constant":
            attrs = attributes(node)
            if "value" not in attrs:
                raise unsupported(node, "only tensor-valued Constant nodes are supported")
            try:
                values[node.output[0]] = numpy_helper.to_array(attrs["value"])
            except (ValueError, TypeError) as error:
                raise unsupported(node, f"corrupt constant ({error})") from None
    return values


def graph_input_shape(model: onnx.ModelProto, name: str) -> tuple[int, ...]:
    for value in model.graph.input:
        if value.name == name:
            dims = value.type.tensor_type.shape.dim
            return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
    raise OnnxImportError(f"graph input {name!r} not found")


def pool_attrs(node: onnx.NodeProto, rank: int = 2) -> tuple[list[int], list[int], list[int]]:
    """kernel, stride, padding [top, left, bottom, right] of an ONNX pool (no dilation, floor mode)."""
    attrs = attributes(node)
    if attrs.get("ceil_mode", 0) or any(d != 1 for d in attrs.get("dilations", [1] * rank)):
        raise unsupported(node, "ceil_mode and dilation are not supported")
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise unsupported(node, "auto_pad is not supported (use explicit pads)")
    kernel = [int(k) for k in attrs["kernel_shape"]]
    stride = [int(s) for s in attrs.get("strides", [1] * rank)]
    pads = [int(p) for p in attrs.get("pads", [0] * 2 * rank)]
    return kernel, stride, [pads[0], pads[1], pads[2], pads[3]]


def conv_attrs(node: onnx.NodeProto) -> dict:
    attrs = attributes(node)
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise unsupported(node, "auto_pad is not supported (use explicit pads)")
    pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
    return {
        "stride": [int(s) for s in attrs.get("strides", [1, 1])],
        "padding": [pads[0], pads[1], pads[2], pads[3]],
        "dilation": [int(d) for d in attrs.get("dilations", [1, 1])],
        "groups": int(attrs.get("group", 1)),
    }


SHAPE_OPS = frozenset({"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast"})


def fold_shape_op(node: onnx.NodeProto, inputs: list, shape_of) -> np.ndarray | None:
    """Constant-fold the shape arithmetic of ``x.view(x.size(0), -1)``-style exports, or None.

    ``Shape`` of an IR tensor gives its dims with the batch as 0, which Reshape reads as "keep this
    dimension", so the folded target shape is right for any batch size. ``inputs`` holds numpy
    arrays for constant inputs and None otherwise; ``shape_of(name)`` the IR shape of a tensor input.
    """
    if node.op_type not in SHAPE_OPS:
        return None
    attrs = attributes(node)
    if node.op_type == "Shape":
        shape = shape_of(node.input[0])
        if shape is None or "start" in attrs or "end" in attrs:
            return None
        return np.array([0, *shape[1:]], dtype=np.int64)
    if any(value is None for value in inputs):
        return None
    if node.op_type == "Gather":
        return np.take(inputs[0], inputs[1], axis=int(attrs.get("axis", 0)))
    if node.op_type == "Unsqueeze":
        axes = attrs.get("axes", inputs[1].tolist() if len(inputs) > 1 else [0])
        return np.expand_dims(inputs[0], tuple(int(a) for a in axes))
    if node.op_type == "Squeeze":
        axes = attrs.get("axes", inputs[1].tolist() if len(inputs) > 1 else None)
        return np.squeeze(inputs[0], None if axes is None else tuple(int(a) for a in axes))
    if node.op_type == "Cast":
        return inputs[0].astype(onnx.helper.tensor_dtype_to_np_dtype(attrs["to"]))
    return np.concatenate([np.atleast_1d(v) for v in inputs], axis=int(attrs.get("axis", 0)))


CONSTANT_ADD_BITS = 16  # a constant added to a tensor is rounded onto the grid scale / 2**16


def add_constant(b: Builder, name: str, tensor: str, real: np.ndarray, where: onnx.NodeProto) -> tuple[str, np.ndarray]:
    """``tensor + constant`` (one value or one per channel) as an exact integer accumulator.

    ``(x - zp) * 2**16`` through an identity depthwise conv2d (4-D) or diagonal linear (2-D) whose bias
    is the constant rounded onto ``scale / 2**16``; returns (accumulator, its per-channel scale).
    """
    info = b.graph.tensors[tensor]
    channels = info.shape[1]
    if real.size not in (1, channels) or (real.ndim and real.size != max(real.shape)):
        raise unsupported(where, f"constant of shape {real.shape} does not broadcast per channel")
    acc_scale = np.full(channels, float(info.quant.scale) / (1 << CONSTANT_ADD_BITS))
    bias = np.rint(np.broadcast_to(np.asarray(real, dtype=np.float64).reshape(-1), (channels,)) / acc_scale)
    if np.abs(bias).max(initial=0) >= 1 << 31:
        raise unsupported(where, "constant too large for a 32-bit bias on the input's grid")
    one = 1 << CONSTANT_ADD_BITS
    if len(info.shape) == 4:
        weight = b.add_weight(f"{name}_identity", np.full((channels, 1, 1, 1), one), 1.0, 0)
        attrs = {"stride": [1, 1], "padding": [0, 0, 0, 0], "dilation": [1, 1], "groups": channels}
        op = Op.CONV2D
    elif len(info.shape) == 2:
        weight, attrs, op = (
            b.add_weight(f"{name}_identity", np.eye(channels, dtype=np.int64) * one, 1.0, 0),
            {},
            Op.LINEAR,
        )
    else:
        raise unsupported(where, f"adding a constant to a rank-{len(info.shape)} tensor")
    bias_name = b.add_weight(f"{name}_constant", bias.astype(np.int64), acc_scale, 0, IntType(True, 32))
    acc = b.add_node(
        op,
        name,
        [tensor],
        IntType(True, 32),
        QuantInfo(acc_scale.tolist(), 0, 1),
        weight=weight,
        bias=bias_name,
        **attrs,
    )
    return acc, acc_scale
