"""The QDQ pattern matcher shared by the onnxruntime QDQ and Brevitas QCDQ importers.

A QDQ graph computes in float between QuantizeLinear/DequantizeLinear pairs. Walking the nodes in
order, each ONNX tensor is classified (``onnx_common``): QuantizeLinear [-> Clip] gives an integer
IR tensor, DequantizeLinear of it the same tensor on its grid, DequantizeLinear [of Clip] of an
integer constant a quantized weight or bias. Conv/Gemm/MatMul(+Add bias) of a grid tensor and
quantized weights, Add of two grid tensors and average pools become exact integer accumulators;
Relu/Clip on an accumulator narrows the next QuantizeLinear's range (onnxruntime may drop such Relu
nodes: the zero point at the type's minimum carries them); QuantizeLinear of an accumulator is an
integer requantize (one half-to-even rounding of the exact real value). MaxPool, Flatten and
Reshape keep a tensor on its grid.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx

from qexport.frontend.onnx_common import (
    Accumulator,
    Builder,
    Const,
    IntTensor,
    OnGrid,
    QuantConst,
    add_constant,
    attributes,
    constant_values,
    conv_attrs,
    fold_shape_op,
    graph_input_shape,
    int_type_of,
    ones_pool_weight,
    pool_attrs,
    requantize_integer,
    same_quant,
    scalar,
    unsupported,
)
from qexport.frontend.requant import is_power_of_two
from qexport.ir.dtypes import INT32, IntType
from qexport.ir.graph import QuantInfo
from qexport.ir.ops import Op

ADD_ALIGN_BITS = 16  # as the checkpoint lowering: operands whose scale ratio is not a power of two
PASS_THROUGH = ("Identity", "Dropout")
MALFORMED = (ValueError, IndexError, KeyError, TypeError)


def quantize_params(node: onnx.NodeProto, values: dict, inputs: list[str]) -> tuple[np.ndarray, np.ndarray, IntType]:
    """(scale, zero point, integer type) of a QuantizeLinear/DequantizeLinear node."""
    scale = np.asarray(values[inputs[1]].value, dtype=np.float32)
    if not np.all(np.isfinite(scale) & (scale > 0)):
        raise unsupported(node, f"scale must be positive and finite, got {scale.reshape(-1)[:4].tolist()}")
    if len(inputs) > 2 and inputs[2]:
        zero = np.asarray(values[inputs[2]].value)
        kind = int_type_of(zero, node)
    else:
        output_dtype = attributes(node).get("output_dtype", onnx.TensorProto.UINT8)
        kind = int_type_of(np.zeros(0, dtype=onnx.helper.tensor_dtype_to_np_dtype(output_dtype)), node)
        zero = np.zeros(scale.shape, dtype=np.int64)
    if node.op_type == "QuantizeLinear" and kind.bits > 16:
        raise unsupported(node, f"quantizes to {kind.bits}-bit integers (activations of at most 16 bits)")
    return scale, zero.astype(np.int64), kind


def type_for_clip(low: int, high: int, kind: IntType) -> IntType:
    """The narrowest integer type whose range is [low, high] or (narrow range) [low + 1, high]."""
    for bits in range(1, kind.bits + 1):
        for signed in (True, False):
            if signed and bits < 2:
                continue
            candidate = IntType(signed, bits)
            if candidate.max == high and candidate.min in (low, low - 1):
                return candidate
    return kind


class QdqMatcher:
    """Lower a QDQ/QCDQ ONNX model to the IR (see the module docstring)."""

    def __init__(self, model: onnx.ModelProto, name: str):
        self.model = model
        self.b = Builder(name)
        self.uses = Counter(i for node in model.graph.node for i in node.input)
        self.values: dict[str, object] = {k: Const(v) for k, v in constant_values(model).items()}

    def const(self, node: onnx.NodeProto, index: int) -> np.ndarray:
        value = self.values.get(node.input[index]) if index < len(node.input) else None
        if not isinstance(value, Const):
            raise unsupported(node, f"input {index} must be a constant")
        return value.value

    def run(self, max_acc_bits: int):
        for node in self.model.graph.node:
            if node.op_type == "Constant":
                continue
            try:
                result = self.values[node.output[0]] = self.lower(node)
            except MALFORMED as error:  # shapes or values that contradict each other
                raise unsupported(node, f"malformed inputs ({type(error).__name__}: {error})") from None
            if isinstance(result, IntTensor):
                self.b.onnx_tensors[result.tensor] = node.output[0]
        for out in self.model.graph.output:
            value = self.values.get(out.name)
            if not isinstance(value, OnGrid):
                raise unsupported(
                    self.producer(out.name), "a graph output must be a DequantizeLinear of a quantized tensor"
                )
            self.b.graph.outputs.append(value.tensor)
        return self.b.finish(max_acc_bits)

    def ir_shape(self, name: str) -> tuple[int, ...] | None:
        value = self.values.get(name)
        return self.b.graph.tensors[value.tensor].shape if isinstance(value, OnGrid | IntTensor) else None

    def producer(self, tensor: str) -> onnx.NodeProto:
        return next(node for node in self.model.graph.node if tensor in node.output)

    def lower(self, node: onnx.NodeProto) -> object:
        args = [self.values.get(name) if name else None for name in node.input]
        folded = fold_shape_op(node, [a.value if isinstance(a, Const) else None for a in args], self.ir_shape)
        if folded is not None:
            return Const(folded)
        handler = getattr(self, f"op_{node.op_type}", None)
        if node.op_type in PASS_THROUGH:
            return args[0]
        contrib_qdq = node.domain == "com.microsoft" and node.op_type in ("QuantizeLinear", "DequantizeLinear")
        if handler is None or (node.domain not in ("", "ai.onnx") and not contrib_qdq):
            raise unsupported(node, "op not supported by the QDQ importer")
        return handler(node, args)

    # --- quantize / dequantize -------------------------------------------------------------
    def op_QuantizeLinear(self, node, args):  # noqa: N802 - ONNX op names
        scale, zero, kind = quantize_params(node, self.values, list(node.input))
        x = args[0]
        if isinstance(x, Const):
            q = np.rint(np.asarray(x.value, dtype=np.float32) / scale) + zero
            return Const(np.clip(q, kind.min, kind.max).astype(np.int64))
        s, zp = float(scalar(scale, node, "scale")), int(scalar(zero, node, "zero point"))
        quant = QuantInfo(s, zp)
        if x is None and node.input[0] in {i.name for i in self.model.graph.input}:
            shape = graph_input_shape(self.model, node.input[0])
            return IntTensor(self.b.add_input(node.input[0], shape, kind, quant))
        if isinstance(x, OnGrid):
            info = self.b.graph.tensors[x.tensor]
            if same_quant(info.quant, s, zp) and kind.contains(info.dtype.min, info.dtype.max):
                return IntTensor(x.tensor)  # Q(DQ(t)) with t's own parameters is t
            acc = self.b.add_node(
                Op.ADD,
                f"{node.name}_align",
                [x.tensor, x.tensor],
                INT32,
                QuantInfo(info.quant.scale, 0),
                lhs_multiplier=1,
                rhs_multiplier=0,
            )
            x = Accumulator(acc, np.full(info.shape[1], float(info.quant.scale)))
        if not isinstance(x, Accumulator):
            raise unsupported(node, "input is neither a graph input, a constant nor a computed float tensor")
        low, high = kind.min, kind.max
        real_low, real_high = x.clip_real
        if np.isfinite(real_low):
            low = max(low, int(np.rint(np.float32(real_low) / np.float32(s))) + zp)
        if np.isfinite(real_high):
            high = min(high, int(np.rint(np.float32(real_high) / np.float32(s))) + zp)
        return IntTensor(
            requantize_integer(self.b, node.name or "requant", x.tensor, x.scale / s, kind, quant, (low, high))
        )

    def op_Clip(self, node, args):  # noqa: N802
        low = self.const(node, 1) if len(node.input) > 1 and node.input[1] else None
        high = self.const(node, 2) if len(node.input) > 2 and node.input[2] else None
        x = args[0]
        if isinstance(x, Const):
            return Const(np.clip(x.value, low, high))
        if isinstance(x, Accumulator):
            real_low = max(x.clip_real[0], float(low)) if low is not None else x.clip_real[0]
            real_high = min(x.clip_real[1], float(high)) if high is not None else x.clip_real[1]
            return Accumulator(x.tensor, x.scale, (real_low, real_high))
        if isinstance(x, IntTensor):
            return IntTensor(self.narrow(node, x.tensor, low, high))
        raise unsupported(node, "Clip of a tensor that is neither quantized nor an accumulator")

    def narrow(self, node: onnx.NodeProto, tensor: str, low, high) -> str:
        """Clip of a QuantizeLinear output: tighten its requantize (or input) range and type."""
        info = self.b.graph.tensors[tensor]
        low = info.dtype.min if low is None else max(info.dtype.min, int(scalar(low, node, "clip bound")))
        high = info.dtype.max if high is None else min(info.dtype.max, int(scalar(high, node, "clip bound")))
        producer = next((n for n in self.b.graph.nodes if tensor in n.outputs), None)
        sole_use = self.uses[node.input[0]] == 1
        kind = type_for_clip(low, high, info.dtype)
        if not kind.contains(info.quant.zero_point, info.quant.zero_point):
            kind = info.dtype
        if sole_use and producer is not None and producer.op is Op.REQUANTIZE:
            producer.attrs["clip_min"] = max(producer.attrs["clip_min"], low)
            producer.attrs["clip_max"] = min(producer.attrs["clip_max"], high)
            info.dtype = kind
            return tensor
        if sole_use and producer is None and tensor in self.b.graph.inputs and (kind.min, kind.max) == (low, high):
            info.dtype = kind
            return tensor
        return self.b.add_node(
            Op.CLIP, node.name or "clip", [tensor], info.dtype, info.quant, clip_min=low, clip_max=high
        )

    def op_DequantizeLinear(self, node, args):  # noqa: N802
        scale, zero, _ = quantize_params(node, self.values, list(node.input))
        x = args[0]
        if isinstance(x, Const):
            axis = int(attributes(node).get("axis", 1))
            return QuantConst(np.asarray(x.value, dtype=np.int64), scale.astype(np.float64), zero, axis)
        if not isinstance(x, IntTensor):
            raise unsupported(node, "input is not a QuantizeLinear output or an integer constant")
        quant = self.b.quant(x.tensor)
        if not same_quant(quant, float(scalar(scale, node, "scale")), int(scalar(zero, node, "zero point"))):
            raise unsupported(node, "scale or zero point differs from its QuantizeLinear's")
        return OnGrid(x.tensor)

    # --- weighted layers --------------------------------------------------------------------
    def weight(self, node: onnx.NodeProto, value, out_axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(integers, per-output-channel scale, zero point) of a quantized weight constant."""
        if not isinstance(value, QuantConst):
            raise unsupported(node, "weights must be a DequantizeLinear of an integer constant")
        channels = value.q.shape[out_axis]
        if value.scale.size > 1 and value.axis % value.q.ndim != out_axis:
            raise unsupported(node, f"per-channel weight scales along axis {value.axis}, expected {out_axis}")
        scale = np.broadcast_to(value.scale.reshape(-1), (channels,)).astype(np.float64)
        zero = np.broadcast_to(value.zero_point.reshape(-1), (channels,)).astype(np.int64)
        return value.q, scale, zero

    def bias(self, node: onnx.NodeProto, value, acc_scale: np.ndarray) -> np.ndarray:
        """Bias integers in accumulator units (a quantized bias must lie on the accumulator grid)."""
        if isinstance(value, QuantConst):
            real = (value.q - value.zero_point.reshape(-1)) * value.scale.reshape(-1)
            exact = real / acc_scale
            integers = np.rint(exact)
            if np.any(np.abs(exact - integers) > 1e-3 * np.maximum(1.0, np.abs(exact))):
                raise unsupported(node, "bias scale is not input scale x weight scale")
            return integers.astype(np.int64)
        if isinstance(value, Const):  # a float bias: rounded onto the accumulator grid
            return np.rint(np.asarray(value.value, dtype=np.float64).reshape(-1) / acc_scale).astype(np.int64)
        raise unsupported(node, "bias must be a constant")

    def grid_input(self, node: onnx.NodeProto, value) -> tuple[str, QuantInfo]:
        if not isinstance(value, OnGrid):
            raise unsupported(node, "input must be a DequantizeLinear of a quantized tensor")
        return value.tensor, self.b.quant(value.tensor)

    def weighted(self, node, op: Op, x: str, values, scale, zero, bias_value, **attrs) -> Accumulator:
        x_scale = float(self.b.quant(x).scale)
        acc_scale = x_scale * scale
        weight = self.b.add_weight(f"{node.name}_weight", values, scale, zero)
        bias = None
        if bias_value is not None:
            integers = self.bias(node, bias_value, acc_scale)
            bias = self.b.add_weight(f"{node.name}_bias", integers, acc_scale, 0, INT32)
        acc = self.b.add_node(
            op,
            node.name or op.value,
            [x],
            INT32,
            QuantInfo(acc_scale.tolist(), 0, 1),
            weight=weight,
            bias=bias,
            **attrs,
        )
        return Accumulator(acc, acc_scale)

    def op_Conv(self, node, args):  # noqa: N802
        x, _ = self.grid_input(node, args[0])
        values, scale, zero = self.weight(node, args[1], 0)
        bias = args[2] if len(args) > 2 else None
        return self.weighted(node, Op.CONV2D, x, values, scale, zero, bias, **conv_attrs(node))

    def op_Gemm(self, node, args):  # noqa: N802
        attrs = attributes(node)
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            raise unsupported(node, "only Gemm with transA=0, alpha=beta=1 is supported")
        x, _ = self.grid_input(node, args[0])
        transposed = bool(attrs.get("transB", 0))
        values, scale, zero = self.weight(node, args[1], 0 if transposed else 1)
        values = values if transposed else values.T
        return self.weighted(node, Op.LINEAR, x, values, scale, zero, args[2] if len(args) > 2 else None)

    def op_MatMul(self, node, args):  # noqa: N802
        x, _ = self.grid_input(node, args[0])
        if len(self.b.graph.tensors[x].shape) != 2:
            raise unsupported(node, "only 2-D MatMul (a linear layer) is supported")
        values, scale, zero = self.weight(node, args[1], 1)
        return self.weighted(node, Op.LINEAR, x, values.T, scale, zero, None)

    def op_Add(self, node, args):  # noqa: N802
        lhs, rhs = args
        if isinstance(rhs, Accumulator):
            lhs, rhs = rhs, lhs
        if isinstance(lhs, Accumulator) and isinstance(rhs, QuantConst | Const):
            producer = next(n for n in self.b.graph.nodes if n.outputs[0] == lhs.tensor)
            if producer.op is not Op.LINEAR or producer.attrs.get("bias") is not None:
                raise unsupported(node, "a constant may only be added to a MatMul without bias")
            integers = self.bias(node, rhs, lhs.scale)
            producer.attrs["bias"] = self.b.add_weight(f"{producer.name}_bias", integers, lhs.scale, 0, INT32)
            return lhs
        if isinstance(rhs, OnGrid) and isinstance(lhs, QuantConst | Const):
            lhs, rhs = rhs, lhs
        if isinstance(lhs, OnGrid) and isinstance(rhs, QuantConst | Const):
            real = rhs.value if isinstance(rhs, Const) else (rhs.q - rhs.zero_point) * rhs.scale
            acc, scale = add_constant(self.b, node.name or "add", lhs.tensor, np.asarray(real, np.float64), node)
            return Accumulator(acc, scale)
        (a, qa), (b_, qb) = self.grid_input(node, lhs), self.grid_input(node, rhs)
        if self.b.graph.tensors[a].shape != self.b.graph.tensors[b_].shape:
            raise unsupported(node, "Add operands must have the same shape (no broadcasting)")
        sa, sb = float(qa.scale), float(qb.scale)
        small = min(sa, sb)
        acc_scale = small if is_power_of_two(max(sa, sb) / small) else small / (1 << ADD_ALIGN_BITS)
        acc = self.b.add_node(
            Op.ADD,
            node.name or "add",
            [a, b_],
            INT32,
            QuantInfo(acc_scale, 0),
            lhs_multiplier=round(sa / acc_scale),
            rhs_multiplier=round(sb / acc_scale),
        )
        return Accumulator(acc, np.full(self.b.graph.tensors[acc].shape[1], acc_scale))

    # --- element-wise and pools --------------------------------------------------------------
    def op_Relu(self, node, args):  # noqa: N802
        x = args[0]
        if isinstance(x, Accumulator):
            return Accumulator(x.tensor, x.scale, (max(x.clip_real[0], 0.0), x.clip_real[1]))
        tensor, quant = self.grid_input(node, x)
        return OnGrid(
            self.b.add_node(Op.RELU, node.name or "relu", [tensor], self.b.graph.tensors[tensor].dtype, quant)
        )

    def op_MaxPool(self, node, args):  # noqa: N802
        tensor, quant = self.grid_input(node, args[0])
        kernel, stride, padding = pool_attrs(node)
        dtype = self.b.graph.tensors[tensor].dtype
        return OnGrid(
            self.b.add_node(
                Op.MAXPOOL,
                node.name or "maxpool",
                [tensor],
                dtype,
                quant,
                kernel=kernel,
                stride=stride,
                padding=padding,
            )
        )

    def average(self, node, tensor: str, kernel: list[int], stride: list[int], padding: list[int]) -> Accumulator:
        """An average pool with one window size: the exact window sum (a depthwise all-ones conv) / count."""
        info = self.b.graph.tensors[tensor]
        channels = info.shape[1]
        weight = ones_pool_weight(self.b, f"{node.name}_ones", channels, tuple(kernel))
        acc_scale = np.full(channels, float(info.quant.scale) / (kernel[0] * kernel[1]))
        acc = self.b.add_node(
            Op.CONV2D,
            node.name or "avgpool",
            [tensor],
            INT32,
            QuantInfo(acc_scale.tolist(), 0, 1),
            weight=weight,
            bias=None,
            stride=stride,
            padding=padding,
            dilation=[1, 1],
            groups=channels,
        )
        return Accumulator(acc, acc_scale)

    def op_AveragePool(self, node, args):  # noqa: N802
        tensor, _ = self.grid_input(node, args[0])
        kernel, stride, padding = pool_attrs(node)
        if any(padding) and not attributes(node).get("count_include_pad", 0):
            raise unsupported(node, "padding with count_include_pad=0 (windows of different sizes)")
        return self.average(node, tensor, kernel, stride, padding)

    def op_GlobalAveragePool(self, node, args):  # noqa: N802
        tensor, _ = self.grid_input(node, args[0])
        kernel = list(self.b.graph.tensors[tensor].shape[2:])
        return self.average(node, tensor, kernel, [1, 1], [0, 0, 0, 0])

    def op_Flatten(self, node, args):  # noqa: N802
        tensor, quant = self.grid_input(node, args[0])
        if attributes(node).get("axis", 1) != 1:
            raise unsupported(node, "only Flatten(axis=1) is supported")
        return OnGrid(
            self.b.add_node(Op.FLATTEN, node.name or "flatten", [tensor], self.b.graph.tensors[tensor].dtype, quant)
        )

    def op_Reshape(self, node, args):  # noqa: N802
        tensor, quant = self.grid_input(node, args[0])
        info = self.b.graph.tensors[tensor]
        shape = [int(v) for v in self.const(node, 1)]
        rest = [info.shape[i + 1] if v == 0 else v for i, v in enumerate(shape[1:])]
        if len(rest) == 1:
            return OnGrid(self.b.add_node(Op.FLATTEN, node.name or "flatten", [tensor], info.dtype, quant))
        total = int(np.prod(info.shape[1:]))
        if rest.count(-1) == 1:
            known = int(np.prod([v for v in rest if v != -1]))
            rest = [total // known if v == -1 else v for v in rest]
        return OnGrid(self.b.add_node(Op.RESHAPE, node.name or "reshape", [tensor], info.dtype, quant, shape=rest))
