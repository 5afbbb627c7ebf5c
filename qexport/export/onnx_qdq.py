"""Export the IR as an ONNX QDQ model that onnxruntime runs.

Every IR integer tensor becomes an on-grid float tensor of the same name, produced by
QuantizeLinear -> DequantizeLinear (or by an op that keeps values on the grid:
max pool, flatten, reshape, concat). Weights are integer initializers behind
DequantizeLinear; biases are INT32 initializers with scale input_scale * weight_scale.
Bit widths without a native ONNX type use the next wider native type and a Max/Min clamp to
the true range; activations use unsigned byte containers so that onnxruntime's default
optimizations load the model (``qexport.export.containers``, docs/onnx.md).

Input-adaptive (dynamic) requantization: a tensor with a per-sample scale factor holds its
static-grid value ``scale * (q - zp)`` like any other; the factor tensors (e.g. ASQ's ``B * 2**-F``)
are ordinary QDQ tensors of shape [N], and a dynamic requantize multiplies (``num``) and divides
(``den``) the accumulator by them in float before QuantizeLinear. Float rounding makes this an
approximation of the IR's single exact rounding (within 1 LSB per layer, docs/methods/asq.md).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qexport.errors import QExportError
from qexport.export.containers import activation_container, container_type
from qexport.formats import get_format
from qexport.formats.base import broadcast_channel
from qexport.ir.dtypes import IntType
from qexport.ir.graph import Graph, Node, Weight
from qexport.ir.ops import Op, dynamic_operands, float_scale

DEFAULT_NATIVE_BITS = (4, 8, 16)  # INT2 is opt-in: see docs/onnx.md
NUMPY_TYPES = {
    (True, 2): ml_dtypes.int2,
    (False, 2): ml_dtypes.uint2,
    (True, 4): ml_dtypes.int4,
    (False, 4): ml_dtypes.uint4,
    (True, 8): np.int8,
    (False, 8): np.uint8,
    (True, 16): np.int16,
    (False, 16): np.uint16,
    (True, 32): np.int32,
}
OPSET_FOR_BITS = {2: 25, 4: 21}
BASE_OPSET = 21


def _typed(values, dtype: IntType) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).astype(NUMPY_TYPES[(dtype.signed, dtype.bits)])


def weight_integers(weight: Weight) -> tuple[np.ndarray, np.ndarray]:
    """Integer weights and per-channel grid scale for the QDQ form.

    Linear formats are exact. ``post`` has no integer-linear form: its weights are
    rounded onto the LUT grid (the documented approximation of its odd exponents).
    """
    fmt = get_format(weight.format)
    scale = fmt.grid_scale(weight)
    if weight.format == "int_affine":
        return weight.arrays["values"].astype(np.int64), scale
    if fmt.linear:
        return fmt.integers(weight), scale
    grid = broadcast_channel(scale, len(weight.shape))
    return np.rint(fmt.real_values(weight) / grid).astype(np.int64), scale


class _OnnxBuilder:
    def __init__(self, graph: Graph, native_bits: tuple[int, ...]):
        self.graph, self.native_bits = graph, native_bits
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.used_bits: set[int] = set()
        self.reshaped: set[str] = set()

    def constant(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def scale(self, name: str, scale) -> str:
        value = np.asarray(scale, dtype=np.float32)
        return self.constant(name, value.reshape(-1) if value.ndim else value)

    def add(self, op_type: str, inputs: list[str], output: str, name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))
        return output

    def container(self, dtype: IntType) -> IntType:
        kind = container_type(dtype, self.native_bits)
        self.used_bits.add(kind.bits)
        return kind

    def quantize_dequantize(
        self, source: str, tensor: str, clip: tuple[int, int] | None = None, q_scale: float | None = None
    ) -> str:
        """source (float) -> [Clip] -> QuantizeLinear -> DequantizeLinear -> tensor (float, on grid).

        ``q_scale`` (float requantize): QuantizeLinear divides by it instead of the tensor's scale."""
        info = self.graph.tensors[tensor]
        kind, offset = activation_container(info.dtype, self.native_bits)
        self.used_bits.add(kind.bits)
        zero = info.quant.zero_point
        low, high = clip if clip else (info.dtype.min, info.dtype.max)
        if low + offset > kind.min or high + offset < kind.max:
            # Max/Min rather than Clip: onnxruntime's Clip+QuantizeLinear fusion rejects some zero point types
            step = info.quant.scale if q_scale is None else q_scale
            low_value, high_value = (np.float32(v - zero) * np.float32(step) for v in (low, high))
            if low + offset > kind.min:
                source = self.add(
                    "Max", [source, self.constant(f"{tensor}__lo", low_value)], f"{tensor}__max", f"{tensor}__clip_low"
                )
            if high + offset < kind.max:
                source = self.add(
                    "Min",
                    [source, self.constant(f"{tensor}__hi", high_value)],
                    f"{tensor}__min",
                    f"{tensor}__clip_high",
                )
        scale = self.scale(f"{tensor}__scale", info.quant.scale)
        zp = self.constant(f"{tensor}__zp", _typed(zero + offset, kind))
        output_dtype = helper.np_dtype_to_tensor_dtype(np.dtype(NUMPY_TYPES[(kind.signed, kind.bits)]))
        divisor = scale if q_scale is None else self.scale(f"{tensor}__qscale", q_scale)
        quantized = self.add(
            "QuantizeLinear", [source, divisor, zp], f"{tensor}__q", f"{tensor}__quantize", output_dtype=output_dtype
        )
        return self.add("DequantizeLinear", [quantized, scale, zp], tensor, f"{tensor}__dequantize")

    def per_sample(self, tensor: str, rank: int) -> str:
        """A [N] tensor reshaped to [N, 1, ...] (``rank`` dims) so that it broadcasts over a sample."""
        name = f"{tensor}__r{rank}"
        if name not in self.reshaped:
            shape = self.constant(f"{name}__shape", np.array([-1] + [1] * (rank - 1), dtype=np.int64))
            self.add("Reshape", [tensor, shape], name, name)
            self.reshaped.add(name)
        return name

    def weight(self, weight: Weight) -> str:
        integers, scale = weight_integers(weight)
        zero_point = np.zeros(weight.shape[0], dtype=np.int64)
        if weight.format == "int_affine":
            zero_point = np.broadcast_to(np.asarray(weight.attrs.get("zero_point", 0)), (weight.shape[0],))
        every = np.concatenate([integers.reshape(-1), zero_point.astype(np.int64)])
        kind = self.container(IntType.for_range(min(int(every.min()), -1), max(int(every.max()), 1)))
        values = self.constant(f"{weight.name}__int", _typed(integers, kind))
        inputs = [
            values,
            self.scale(f"{weight.name}__scale", scale),
            self.constant(f"{weight.name}__zp", _typed(zero_point, kind)),
        ]
        return self.add("DequantizeLinear", inputs, weight.name, f"{weight.name}__dequantize", axis=0)

    def bias(self, node: Node, out_channels: int) -> list[str]:
        bias_name = node.attrs.get("bias")
        if bias_name is None:
            return []
        bias = self.graph.weights[bias_name]
        integers, scale = weight_integers(bias)
        inputs = [
            self.constant(f"{bias_name}__int", integers.astype(np.int32)),
            self.scale(f"{bias_name}__scale", scale),
        ]
        return [self.add("DequantizeLinear", inputs, bias_name, f"{bias_name}__dequantize", axis=0)]


def _float_requant_source(b: _OnnxBuilder, node: Node, source: str) -> str:
    """The float accumulator divided by its scale (its integers, exact when the float op is) times float_scale."""
    out, rank = node.outputs[0], len(b.graph.tensors[source].shape)
    shape = (1, -1) + (1,) * (rank - 2)
    acc_scale = np.asarray(b.graph.tensors[source].quant.scale, dtype=np.float32).reshape(-1)
    factors = np.asarray(float_scale(node), dtype=np.float32).reshape(-1)
    integers = b.add(
        "Div", [source, b.constant(f"{out}__acc_scale", acc_scale.reshape(shape))], f"{out}__acc", f"{out}__acc"
    )
    return b.add(
        "Mul", [integers, b.constant(f"{out}__float_scale", factors.reshape(shape))], f"{out}__scaled", f"{out}__fs"
    )


def _lower_node(b: _OnnxBuilder, node: Node) -> None:
    graph, out = b.graph, node.outputs[0]
    info = graph.tensors[out]
    if node.op in (Op.CONV2D, Op.LINEAR):
        weight = graph.weights[node.attrs["weight"]]
        inputs = [node.inputs[0], b.weight(weight), *b.bias(node, weight.shape[0])]
        if node.op is Op.CONV2D:
            b.add(
                "Conv",
                inputs,
                out,
                node.name,
                kernel_shape=list(weight.shape[2:]),
                strides=node.attrs["stride"],
                pads=node.attrs["padding"],
                dilations=node.attrs["dilation"],
                group=node.attrs["groups"],
            )
        else:
            b.add("Gemm", inputs, out, node.name, transB=1)
    elif node.op is Op.ADD:
        b.add("Add", node.inputs, out, node.name)
    elif node.op is Op.REQUANTIZE:
        source, operands = node.inputs[0], dynamic_operands(node)
        rank = len(graph.tensors[source].shape)
        for role, op_type in (("num", "Mul"), ("den", "Div")):
            if role in operands:
                factor = b.per_sample(operands[role], rank)
                source = b.add(op_type, [source, factor], f"{out}__{role}", f"{out}__{role}")
        clip = (node.attrs["clip_min"], node.attrs["clip_max"])
        if float_scale(node) is not None:  # the float32 form: QuantizeLinear(Mul(acc integers, float_scale), 1)
            source = _float_requant_source(b, node, source)
        b.quantize_dequantize(source, out, clip, None if float_scale(node) is None else 1.0)
    elif node.op is Op.RELU:
        b.quantize_dequantize(b.add("Relu", node.inputs, f"{out}__float", node.name), out)
    elif node.op is Op.CLIP:
        b.quantize_dequantize(node.inputs[0], out, (node.attrs["clip_min"], node.attrs["clip_max"]))
    elif node.op is Op.MAXPOOL:
        b.add(
            "MaxPool",
            node.inputs,
            out,
            node.name,
            kernel_shape=node.attrs["kernel"],
            strides=node.attrs["stride"],
            pads=node.attrs["padding"],
        )
    elif node.op is Op.AVGPOOL:
        pooled = b.add(
            "AveragePool",
            node.inputs,
            f"{out}__float",
            node.name,
            kernel_shape=node.attrs["kernel"],
            strides=node.attrs["stride"],
            pads=node.attrs["padding"],
            count_include_pad=int(node.attrs["count_include_pad"]),
        )
        b.quantize_dequantize(pooled, out)
    elif node.op is Op.GLOBAL_AVGPOOL:
        b.quantize_dequantize(b.add("GlobalAveragePool", node.inputs, f"{out}__float", node.name), out)
    elif node.op is Op.FLATTEN:
        b.add("Flatten", node.inputs, out, node.name, axis=1)
    elif node.op is Op.RESHAPE:
        shape = b.constant(f"{out}__shape", np.array([0, *node.attrs["shape"]], dtype=np.int64))
        b.add("Reshape", [node.inputs[0], shape], out, node.name)
    elif node.op is Op.CONCAT:
        b.add("Concat", node.inputs, out, node.name, axis=node.attrs["axis"])
    else:  # pragma: no cover - the checker rejects unknown ops first
        raise QExportError(f"node {node.name!r}: op {node.op.value} has no ONNX form")
    del info


def _value_info(graph: Graph, tensor: str) -> onnx.ValueInfoProto:
    shape = ["N", *graph.tensors[tensor].shape[1:]]
    return helper.make_tensor_value_info(tensor, TensorProto.FLOAT, shape)


def export_onnx(graph: Graph, native_bits: tuple[int, ...] = DEFAULT_NATIVE_BITS) -> onnx.ModelProto:
    """Build (and check) the ONNX QDQ model. Inputs are float32 named ``<input>__float``."""
    b = _OnnxBuilder(graph, tuple(native_bits))
    float_inputs = []
    for name in graph.inputs:
        float_inputs.append(_value_info(graph, name))
        float_inputs[-1].name = f"{name}__float"
        b.quantize_dequantize(f"{name}__float", name)
    for node in graph.nodes:
        _lower_node(b, node)
    onnx_graph = helper.make_graph(
        b.nodes, graph.name, float_inputs, [_value_info(graph, t) for t in graph.outputs], b.initializers
    )
    opset = max([BASE_OPSET] + [OPSET_FOR_BITS.get(bits, BASE_OPSET) for bits in b.used_bits])
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="qexport")
    model.ir_version = 10 if opset <= 21 else 11
    onnx.checker.check_model(model, full_check=True)
    return model


def on_grid_tensors(graph: Graph) -> list[str]:
    """IR tensors that the ONNX model holds as on-grid floats of the same name (not accumulators)."""
    accumulators = {node.outputs[0] for node in graph.nodes if node.op in (Op.CONV2D, Op.LINEAR, Op.ADD)}
    return [name for name in graph.tensors if name not in accumulators]


def with_intermediate_outputs(model: onnx.ModelProto, graph: Graph) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs every on-grid tensor (for layer-by-layer checks)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {out for node in exposed.graph.node for out in node.output}
    outputs = {o.name for o in exposed.graph.output}
    for name in on_grid_tensors(graph):
        if name in present and name not in outputs:
            exposed.graph.output.append(_value_info(graph, name))
    return exposed
