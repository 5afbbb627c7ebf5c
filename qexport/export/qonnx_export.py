"""Export the integer IR as a QONNX model (``Quant`` nodes, domain ``qonnx.custom_op.general``) for FINN,
hls4ml and the ``qonnx`` executor.

Every IR integer tensor becomes a float tensor of the same name holding ``scale * (q - zero_point)``:
the float input goes through ``Quant``; weights are float initializers behind a ``Quant`` at their bit width
(per output channel scales); biases a 32-bit ``Quant`` on the accumulator scale; conv2d -> ``Conv``,
linear -> ``Gemm(transB=1)``, add -> ``Add``; requantize -> [``Relu`` | ``Clip``] -> ``Quant`` (``narrow`` for a
symmetric signed range); pools, flatten, reshape and concat map to their ONNX ops. Average pools over a
power-of-two count are followed by a ``Trunc`` (as Brevitas writes them): it first rounds the float average back
to the exact integer window sum, so its half-to-even rounding sees the IR's exact ties even with free scales;
other counts by a ``Quant`` on the input grid. Rounding is ``ROUND`` (half to even), the IR's rule.

Weight formats: ``int_affine`` as is; ``pot``, ``apot`` and ``codebook`` are linear in integers on a grid and
are expanded exactly into integer weights of the bit width their decoded values need (the hardware's
shift/codebook structure is not visible in QONNX). ``post`` (powers of sqrt(2)) and dynamic (per-sample)
requantization have no QONNX form and are refused naming the layer.

With power-of-two scales every float32 operation of the qonnx executor is exact, so it equals the IR bit for bit;
with free scales the executor's float32 rounding differs from the IR's integer requantization at rare ties
(docs/interop.md has the measured rate).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qexport.errors import QExportError
from qexport.export.onnx_qdq import weight_integers
from qexport.formats import get_format
from qexport.ir.dtypes import IntType
from qexport.ir.graph import Graph, Node, Weight
from qexport.ir.ops import Op

QONNX_DOMAIN = "qonnx.custom_op.general"
QONNX_OPSET = 2  # Trunc v2 (output scale and bit width inputs), as Brevitas writes
ONNX_OPSET = 13  # what FINN and hls4ml read
EXACT_FORMATS = frozenset({"int_affine", "pot", "apot", "codebook"})
QONNX_FILE = "model.qonnx.onnx"
ADD_TOLERANCE = 2.0**-12  # relative misalignment of add operands (16-bit alignment rounds at 2**-17)


class QonnxExportError(QExportError):
    """An IR graph (layer, format) that QONNX cannot express."""


class _Builder:
    def __init__(self, graph: Graph, trunc_pools: bool = True):
        self.graph, self.trunc_pools = graph, trunc_pools
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def constant(self, name: str, value) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def add(self, op_type: str, inputs: list[str], output: str, name: str, domain: str = "", **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, domain=domain, **attrs))
        return output

    def quant(self, source: str, output: str, scale, zero_point, dtype: IntType, narrow: bool = False) -> str:
        inputs = [
            source,
            self.constant(f"{output}__scale", scale),
            self.constant(f"{output}__zp", zero_point),
            self.constant(f"{output}__bits", float(dtype.bits)),
        ]
        return self.add(
            "Quant",
            inputs,
            output,
            f"{output}__quant",
            QONNX_DOMAIN,
            signed=int(dtype.signed),
            narrow=int(narrow),
            rounding_mode="ROUND",
        )

    def activation(self, source: str, tensor: str, clip: tuple[int, int] | None = None) -> str:
        """source (float) -> [Relu | Clip] -> Quant -> tensor, with the IR tensor's type and clip range."""
        info = self.graph.tensors[tensor]
        dtype, quant = info.dtype, info.quant
        low, high = clip if clip is not None else (dtype.min, dtype.max)
        narrow = dtype.signed and low == dtype.min + 1 and high == dtype.max
        if narrow:
            low = dtype.min
        if (low, high) != (dtype.min, dtype.max):
            if low == quant.zero_point and high == dtype.max:
                source = self.add("Relu", [source], f"{tensor}__relu", f"{tensor}__relu")
            else:
                bounds = [np.float32(v - quant.zero_point) * np.float32(quant.scale) for v in (low, high)]
                source = self.add(
                    "Clip",
                    [source, self.constant(f"{tensor}__lo", bounds[0]), self.constant(f"{tensor}__hi", bounds[1])],
                    f"{tensor}__clip",
                    f"{tensor}__clip",
                )
        return self.quant(source, tensor, quant.scale, quant.zero_point, dtype, narrow)

    def average(self, pooled: str, tensor: str, count: int) -> str:
        """pooled (float average) -> Trunc (power-of-two count) or Quant -> tensor, on the input's grid."""
        info = self.graph.tensors[tensor]
        if count & (count - 1) or not self.trunc_pools:
            return self.activation(pooled, tensor)
        quant, dtype = info.quant, info.dtype
        # centred units (zero point 0 inside Trunc); one extra signed bit holds every centred mean
        out_type = dtype if quant.zero_point == 0 else IntType(True, dtype.bits + 1)
        extra = count.bit_length() - 1
        inputs = [
            pooled,
            self.constant(f"{tensor}__sum_scale", np.float32(quant.scale) / np.float32(count)),
            self.constant(f"{tensor}__trunc_zp", 0.0),
            self.constant(f"{tensor}__sum_bits", float(out_type.bits + extra)),
            self.constant(f"{tensor}__out_scale", quant.scale),
            self.constant(f"{tensor}__out_bits", float(out_type.bits)),
        ]
        centred = f"{tensor}__centred" if quant.zero_point else tensor
        self.add(
            "Trunc",
            inputs,
            centred,
            f"{tensor}__trunc",
            QONNX_DOMAIN,
            signed=int(out_type.signed),
            narrow=0,
            rounding_mode="ROUND",
        )
        if quant.zero_point:  # back on the tensor's own (shifted) grid: exact, nothing to round
            return self.activation(centred, tensor)
        return tensor

    def weight(self, node: Node, weight: Weight) -> str:
        if weight.format not in EXACT_FORMATS:
            raise QonnxExportError(
                f"layer {node.name!r}: weight format {weight.format!r} has no QONNX form (Quant holds integers on a "
                f"uniform grid; {weight.format} is not linear in integers)"
            )
        integers, scale = weight_integers(weight)
        zero = np.zeros(weight.shape[0], np.int64)
        if weight.format == "int_affine":
            zero = np.broadcast_to(np.asarray(weight.attrs.get("zero_point", 0), np.int64), (weight.shape[0],))
            dtype = IntType.parse(weight.attrs["dtype"])
        else:
            every = np.concatenate([integers.reshape(-1), [-1, 1]])
            dtype = IntType.for_range(int(every.min()), int(every.max()))
        shape = (-1,) + (1,) * (len(weight.shape) - 1)
        scale32 = np.asarray(scale, np.float32).reshape(shape)
        real = (integers - zero.reshape(shape)).astype(np.float32) * scale32
        per_channel = np.unique(scale32).size > 1 or np.unique(zero).size > 1
        source = self.constant(f"{weight.name}__float", real)
        return self.quant(
            source,
            weight.name,
            scale32 if per_channel else scale32.reshape(-1)[0],
            zero.reshape(shape).astype(np.float32) if per_channel else float(zero[0]),
            dtype,
        )

    def bias(self, node: Node) -> list[str]:
        name = node.attrs.get("bias")
        if name is None:
            return []
        bias = self.graph.weights[name]
        values = bias.arrays["values"].astype(np.int64)
        scale = np.broadcast_to(np.asarray(bias.attrs["scale"], np.float32), values.shape)
        source = self.constant(f"{name}__float", values.astype(np.float32) * scale)
        return [self.quant(source, name, scale, np.zeros_like(scale), IntType(True, 32))]


def _real_scale(graph: Graph, node: Node, acc: str) -> np.ndarray:
    """Per channel, what one unit of the float accumulator ``acc`` is worth in the QONNX graph."""
    producer = graph.producer().get(acc)
    if producer is not None and producer.op in (Op.CONV2D, Op.LINEAR):
        weight = graph.weights[producer.attrs["weight"]]
        return float(graph.tensors[producer.inputs[0]].quant.scale) * get_format(weight.format).grid_scale(weight)
    channels = graph.tensors[acc].shape[1]
    if producer is not None and producer.op is Op.ADD:  # the float Add sums real values: units from the operands
        units = [
            float(graph.tensors[name].quant.scale) / producer.attrs[key]
            for name, key in zip(producer.inputs, ("lhs_multiplier", "rhs_multiplier"), strict=True)
            if producer.attrs[key]
        ]
        if max(units) > min(units) * (1 + ADD_TOLERANCE):
            raise QonnxExportError(
                f"layer {producer.name!r}: add multipliers {producer.attrs['lhs_multiplier']}, "
                f"{producer.attrs['rhs_multiplier']} do not align its operand scales (a float Add would not match)"
            )
        return np.full(channels, units[0])
    return np.broadcast_to(np.asarray(graph.tensors[acc].quant.scale, np.float64), (channels,))


def _rescaled(b: _Builder, node: Node) -> str:
    """The float accumulator a requantize's Quant divides by the output scale.

    ``Quant`` computes ``acc_real / s_out``; the IR computes ``acc * multiplier * 2**-shift`` (or ``float_scale``).
    Where the two ratios differ (imports that fold a pool's 1/count or another factor into the multiplier), a
    ``Mul`` by the per-channel factor comes first: exact when it is a power of two, else one float32 rounding.
    """
    graph = b.graph
    acc = node.inputs[0]
    real = _real_scale(graph, node, acc)
    step = float(graph.tensors[node.outputs[0]].quant.scale)
    if node.attrs.get("float_scale") is not None:
        ratio = np.asarray(node.attrs["float_scale"], np.float64)
    else:
        ratio = np.asarray(node.attrs["multiplier"], np.float64) * np.exp2(-np.asarray(node.attrs["shift"], np.float64))
    factor = np.broadcast_to(ratio * step / real, real.shape).astype(np.float32)
    if np.all(factor == 1):
        return acc
    shifts, multipliers = set(node.attrs["shift"]), set(node.attrs["multiplier"])
    pure_shift = node.attrs.get("float_scale") is None and multipliers == {1} and len(shifts) == 1
    if pure_shift and min(shifts) > 0 and np.unique(real).size == 1:
        return _truncated(b, node, acc, float(real[0]), shifts.pop())
    rank = len(graph.tensors[acc].shape)
    value = factor[:1].reshape(()) if np.all(factor == factor[0]) else factor.reshape((1, -1) + (1,) * (rank - 2))
    return b.add("Mul", [acc, b.constant(f"{node.outputs[0]}__factor", value)], f"{acc}__rescaled", f"{node.name}__mul")


def _truncated(b: _Builder, node: Node, acc: str, real: float, shift: int) -> str:
    """A pure-shift requantize whose shift is not the scale ratio (an imported pool's window sum / count):
    ``Trunc`` rounds the float sum back to the exact integer first, then divides by 2**shift rounding half to
    even, so float32 error in the sum cannot move a tie; a power-of-two ``Mul`` then moves the result (centred,
    on the ``real * 2**shift`` grid) onto the output grid, where the following ``Quant`` is exact."""
    info = b.graph.tensors[node.outputs[0]]
    centred = IntType(True, info.dtype.bits + 1)
    grid = real * 2.0**shift
    inputs = [
        acc,
        b.constant(f"{acc}__trunc_scale", real),
        b.constant(f"{acc}__trunc_zp", 0.0),
        b.constant(f"{acc}__trunc_in_bits", float(b.graph.tensors[acc].dtype.bits)),
        b.constant(f"{acc}__trunc_out_scale", grid),
        b.constant(f"{acc}__trunc_out_bits", float(centred.bits)),
    ]
    out = b.add(
        "Trunc", inputs, f"{acc}__trunc", f"{node.name}__trunc", QONNX_DOMAIN, signed=1, narrow=0, rounding_mode="ROUND"
    )
    factor = np.float32(float(info.quant.scale) / float(np.float32(grid)))
    if factor == 1:
        return out
    return b.add("Mul", [out, b.constant(f"{acc}__trunc_factor", factor)], f"{acc}__rescaled", f"{node.name}__mul")


def _lower(b: _Builder, node: Node) -> None:
    out = node.outputs[0]
    if node.op in (Op.CONV2D, Op.LINEAR):
        weight = b.graph.weights[node.attrs["weight"]]
        inputs = [node.inputs[0], b.weight(node, weight), *b.bias(node)]
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
        if len(node.inputs) > 1:
            raise QonnxExportError(f"layer {node.name!r}: dynamic (per-sample) requantization has no QONNX form")
        b.activation(_rescaled(b, node), out, (node.attrs["clip_min"], node.attrs["clip_max"]))
    elif node.op is Op.RELU:
        b.add("Relu", node.inputs, out, node.name)
    elif node.op is Op.CLIP:
        b.activation(node.inputs[0], out, (node.attrs["clip_min"], node.attrs["clip_max"]))
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
        padded = any(node.attrs["padding"]) and not node.attrs["count_include_pad"]
        count = 3 if padded else node.attrs["kernel"][0] * node.attrs["kernel"][1]  # 3: not one count, use Quant
        b.average(pooled, out, count)
    elif node.op is Op.GLOBAL_AVGPOOL:
        shape = b.graph.tensors[node.inputs[0]].shape
        b.average(b.add("GlobalAveragePool", node.inputs, f"{out}__float", node.name), out, shape[2] * shape[3])
    elif node.op is Op.FLATTEN:
        b.add("Flatten", node.inputs, out, node.name, axis=1)
    elif node.op is Op.RESHAPE:
        shape = f"{out}__shape"
        b.initializers.append(numpy_helper.from_array(np.array([-1, *node.attrs["shape"]], np.int64), shape))
        b.add("Reshape", [node.inputs[0], shape], out, node.name)
    elif node.op is Op.CONCAT:
        b.add("Concat", node.inputs, out, node.name, axis=node.attrs["axis"])
    else:  # pragma: no cover - the checker rejects unknown ops first
        raise QonnxExportError(f"layer {node.name!r}: op {node.op.value} has no QONNX form")


def _value_info(graph: Graph, tensor: str, name: str, batch: int | str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, *graph.tensors[tensor].shape[1:]])


def export_qonnx(graph: Graph, batch: int | str = 1, trunc_pools: bool = True) -> onnx.ModelProto:
    """Build the QONNX model. The input is float32 ``<input>__float`` of batch ``batch`` (FINN expects 1).

    ``trunc_pools=False`` writes a ``Quant`` after every average pool instead of a ``Trunc`` (hls4ml 1.3 has no
    Trunc); with free scales the float average's ties then follow float32 rounding, not the IR's exact ones.
    """
    where = graph.metadata.get("source", graph.name)
    if len(graph.inputs) != 1:
        raise QonnxExportError(f"{where}: QONNX export needs exactly one graph input")
    b = _Builder(graph, trunc_pools)
    name = graph.inputs[0]
    try:
        b.activation(f"{name}__float", name)
        for node in graph.nodes:
            _lower(b, node)
    except QExportError as error:
        raise type(error)(f"{where}: QONNX export: {error}") from None
    onnx_graph = helper.make_graph(
        b.nodes,
        graph.name,
        [_value_info(graph, name, f"{name}__float", batch)],
        [_value_info(graph, t, t, batch) for t in graph.outputs],
        b.initializers,
    )
    model = helper.make_model(
        onnx_graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(QONNX_DOMAIN, QONNX_OPSET)],
        producer_name="qexport",
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
