"""onnxruntime ``quantize_static`` output in QOperator format.

Integer tensors flow between QLinearConv, QLinearMatMul, QGemm, QLinearAdd, QLinearAveragePool,
QLinearGlobalAveragePool (com.microsoft), MaxPool, Flatten and Reshape, with QuantizeLinear at the
input and DequantizeLinear at the output. onnxruntime's kernels accumulate exactly in int32 and
requantize in float32 (MLAS ``MlasRequantizeOutput``): ``float32(acc) * scale`` with
``scale = float32(float32(x_scale * w_scale[c]) / y_scale)``, clamped, converted half to even, plus
the zero point. The importer reproduces that with the IR's float requantize (``float_scale``),
bit for bit. QLinearAdd and QLinearAveragePool compute in fixed or float point in ways that depend
on the CPU's vector unit; they become an exact integer add/window sum and an integer requantize,
within the bound measured in docs/interop.md.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import onnx

from qexport.frontend.onnx_common import (
    Builder,
    Const,
    IntTensor,
    add_constant,
    attributes,
    constant_values,
    conv_attrs,
    fold_shape_op,
    graph_input_shape,
    int_type_of,
    ones_pool_weight,
    pool_attrs,
    requantize_float,
    requantize_integer,
    same_quant,
    scalar,
    unsupported,
)
from qexport.frontend.onnx_qdq_match import MALFORMED, quantize_params
from qexport.ir.dtypes import INT32
from qexport.ir.graph import Graph, QuantInfo
from qexport.ir.ops import Op
from qexport.reference.rounding import fma_float32, round_float32

NAME = "ort_qop"
QOP_OPS = frozenset(
    {"QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearAveragePool", "QLinearGlobalAveragePool"}
)
f32 = np.float32


def detect(model: onnx.ModelProto) -> bool:
    return any(node.op_type in QOP_OPS for node in model.graph.node)


class QopLowerer:
    def __init__(self, model: onnx.ModelProto, name: str):
        self.model = model
        self.b = Builder(name)
        self.consts = constant_values(model)
        self.values: dict[str, IntTensor] = {}
        self.dequantized: dict[str, str] = {}  # ONNX DequantizeLinear output -> IR tensor

    def lower(self, node: onnx.NodeProto) -> str | None:
        """The IR tensor a node produces (None: a folded constant or a graph output's DequantizeLinear)."""
        folded = fold_shape_op(node, [self.consts.get(name) for name in node.input], self.ir_shape)
        if folded is not None:
            self.consts[node.output[0]] = folded
            return None
        handler = getattr(self, f"op_{node.op_type}", None)
        if handler is None:
            raise unsupported(node, "op not supported by the QOperator importer")
        return handler(node)

    def ir_shape(self, name: str) -> tuple[int, ...] | None:
        tensor = self.values[name].tensor if name in self.values else self.dequantized.get(name)
        return None if tensor is None else self.b.graph.tensors[tensor].shape

    def const(self, node: onnx.NodeProto, index: int) -> np.ndarray:
        if index >= len(node.input) or node.input[index] not in self.consts:
            raise unsupported(node, f"input {index} must be a constant")
        return self.consts[node.input[index]]

    def tensor(self, node: onnx.NodeProto, index: int, scale_index: int | None = None) -> str:
        value = self.values.get(node.input[index])
        if value is None:
            raise unsupported(node, f"input {index} is not a quantized tensor")
        if scale_index is not None:
            scale = float(scalar(self.const(node, scale_index), node, "scale"))
            zero = int(scalar(self.const(node, scale_index + 1), node, "zero point"))
            if not same_quant(self.b.quant(value.tensor), scale, zero):
                raise unsupported(node, f"input {index}'s scale or zero point differs from its producer's")
        return value.tensor

    def output_quant(self, node: onnx.NodeProto, scale_index: int):
        scale = float(scalar(self.const(node, scale_index), node, "output scale"))
        zero_array = self.const(node, scale_index + 1) if scale_index + 1 < len(node.input) else np.uint8(0)
        kind = int_type_of(zero_array, node)
        if kind.bits > 16:
            raise unsupported(node, f"outputs {kind.bits}-bit integers (activations of at most 16 bits)")
        return scale, kind, QuantInfo(scale, int(scalar(zero_array, node, "output zero point")))

    def run(self, max_acc_bits: int) -> Graph:
        for node in self.model.graph.node:
            if node.op_type == "Constant":
                continue
            try:
                result = self.lower(node)
            except MALFORMED as error:  # shapes or values that contradict each other
                raise unsupported(node, f"malformed inputs ({type(error).__name__}: {error})") from None
            if result is not None:
                self.values[node.output[0]] = IntTensor(result)
                self.b.onnx_tensors[result] = node.output[0]
        for out in self.model.graph.output:
            if out.name not in self.dequantized:
                raise unsupported(
                    next(n for n in self.model.graph.node if out.name in n.output),
                    "a graph output must be a DequantizeLinear of a quantized tensor",
                )
            self.b.graph.outputs.append(self.dequantized[out.name])
        return self.b.finish(max_acc_bits)

    # --- boundaries ----------------------------------------------------------------------------
    def op_QuantizeLinear(self, node):  # noqa: N802 - ONNX op names
        if node.input[0] not in {i.name for i in self.model.graph.input}:
            raise unsupported(node, "QuantizeLinear inside a QOperator graph (only at the graph input)")
        scale, zero, kind = quantize_params(node, {k: Const(v) for k, v in self.consts.items()}, list(node.input))
        quant = QuantInfo(float(scalar(scale, node, "scale")), int(scalar(zero, node, "zero point")))
        return self.b.add_input(node.input[0], graph_input_shape(self.model, node.input[0]), kind, quant)

    def op_DequantizeLinear(self, node):  # noqa: N802
        self.dequantized[node.output[0]] = self.tensor(node, 0, 1)
        return None

    # --- weighted layers: exact int32 accumulation, float32 requantize ---------------------------
    def weighted(self, node, op: Op, x: str, x_scale: float, w: np.ndarray, w_scale, w_zero, bias, out_index, **attrs):
        channels = w.shape[0]
        w_scale = np.broadcast_to(np.asarray(w_scale, dtype=np.float32).reshape(-1), (channels,))
        w_zero = np.broadcast_to(np.asarray(w_zero, dtype=np.int64).reshape(-1), (channels,))
        y_scale, kind, quant = self.output_quant(node, out_index)
        acc_scale = x_scale * w_scale.astype(np.float64)
        weight = self.b.add_weight(f"{node.name}_weight", w, w_scale, w_zero)
        bias_name = None
        if bias is not None:
            bias_name = self.b.add_weight(f"{node.name}_bias", np.asarray(bias, dtype=np.int64), acc_scale, 0, INT32)
        acc = self.b.add_node(
            op,
            node.name or op.value,
            [x],
            INT32,
            QuantInfo(acc_scale.tolist(), 0, 1),
            weight=weight,
            bias=bias_name,
            **attrs,
        )
        float_scale = (f32(x_scale) * w_scale) / f32(y_scale)  # MLAS: float32(x_scale * w_scale) / y_scale
        return requantize_float(self.b, f"{node.name}_requant", acc, float_scale, kind, quant, (kind.min, kind.max))

    def op_QLinearConv(self, node):  # noqa: N802
        x = self.tensor(node, 0, 1)
        bias = self.const(node, 8) if len(node.input) > 8 and node.input[8] else None
        return self.weighted(
            node,
            Op.CONV2D,
            x,
            float(self.b.quant(x).scale),
            self.const(node, 3),
            self.const(node, 4),
            self.const(node, 5),
            bias,
            6,
            **conv_attrs(node),
        )

    def op_QLinearMatMul(self, node):  # noqa: N802
        x = self.tensor(node, 0, 1)
        if len(self.b.graph.tensors[x].shape) != 2:
            raise unsupported(node, "only 2-D QLinearMatMul (a linear layer) is supported")
        w = self.const(node, 3)
        return self.weighted(
            node, Op.LINEAR, x, float(self.b.quant(x).scale), w.T, self.const(node, 4), self.const(node, 5), None, 6
        )

    def op_QGemm(self, node):  # noqa: N802
        attrs = attributes(node)
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or len(node.input) < 8 or not node.input[7]:
            raise unsupported(node, "only QGemm with transA=0, alpha=1 and a quantized output is supported")
        x = self.tensor(node, 0, 1)
        w = self.const(node, 3)
        w = w if attrs.get("transB", 0) else w.T
        bias = self.const(node, 6) if node.input[6] else None
        return self.weighted(
            node, Op.LINEAR, x, float(self.b.quant(x).scale), w, self.const(node, 4), self.const(node, 5), bias, 7
        )

    # --- pools and adds ----------------------------------------------------------------------------
    def window_sum(self, node, x: str, kernel, stride, padding) -> str:
        info = self.b.graph.tensors[x]
        channels = info.shape[1]
        weight = ones_pool_weight(self.b, f"{node.name}_ones", channels, tuple(kernel))
        scale = [float(info.quant.scale)] * channels
        return self.b.add_node(
            Op.CONV2D,
            node.name or "pool",
            [x],
            INT32,
            QuantInfo(scale, 0, 1),
            weight=weight,
            bias=None,
            stride=list(stride),
            padding=list(padding),
            dilation=[1, 1],
            groups=channels,
        )

    def op_QLinearGlobalAveragePool(self, node):  # noqa: N802
        if attributes(node).get("channels_last", 0):
            raise unsupported(node, "channels_last=1 is not supported")
        x = self.tensor(node, 0, 1)
        info = self.b.graph.tensors[x]
        kernel = info.shape[2:]
        y_scale, kind, quant = self.output_quant(node, 3)
        acc = self.window_sum(node, x, kernel, (1, 1), (0, 0, 0, 0))
        count = f32(kernel[0] * kernel[1])
        scale = f32(info.quant.scale) / (f32(y_scale) * count)  # MLAS: x_scale / (y_scale * size)
        return requantize_float(self.b, f"{node.name}_requant", acc, [scale], kind, quant, (kind.min, kind.max))

    def op_QLinearAveragePool(self, node):  # noqa: N802
        x = self.tensor(node, 0, 1)
        kernel, stride, padding = pool_attrs(node)
        if any(padding) and not attributes(node).get("count_include_pad", 0):
            raise unsupported(node, "padding with count_include_pad=0 (windows of different sizes)")
        y_scale, kind, quant = self.output_quant(node, 3)
        acc = self.window_sum(node, x, kernel, stride, padding)
        ratio = float(self.b.quant(x).scale) / (kernel[0] * kernel[1]) / y_scale
        return requantize_integer(
            self.b, f"{node.name}_requant", acc, np.array([ratio]), kind, quant, (kind.min, kind.max)
        )

    def op_QLinearAdd(self, node):  # noqa: N802
        constant = next((i for i in (3, 0) if node.input[i] in self.consts), None)
        if constant is not None:  # a quantized constant operand (e.g. MatMul + bias)
            x = self.tensor(node, 3 - constant, 4 - constant)
            q, scale, zero = (self.const(node, constant + k) for k in range(3))
            real = (q.astype(np.int64) - zero.astype(np.int64)) * scale.astype(np.float64)
            acc, acc_scale = add_constant(self.b, node.name or "add", x, real, node)
            y_scale, kind, quant = self.output_quant(node, 6)
            return requantize_integer(
                self.b, f"{node.name}_requant", acc, acc_scale / y_scale, kind, quant, (kind.min, kind.max)
            )
        a, b_ = self.tensor(node, 0, 1), self.tensor(node, 3, 4)
        if self.b.graph.tensors[a].shape != self.b.graph.tensors[b_].shape:
            raise unsupported(node, "QLinearAdd operands must have the same shape (no broadcasting)")
        y_scale, kind, quant = self.output_quant(node, 6)
        qa, qb = self.b.quant(a), self.b.quant(b_)
        r_a, r_b = f32(qa.scale) / f32(y_scale), f32(qb.scale) / f32(y_scale)
        # MLAS (AVX2/FMA): k = float(zp_c) - fma(r_a, zp_a, r_b * zp_b); y = rint(fma(a, r_a, fma(b, r_b, k)))
        product = round_float32(Fraction(float(r_b)) * qb.zero_point)
        k = f32(quant.zero_point) - f32(float(fma_float32(Fraction(float(r_a)), Fraction(qa.zero_point), product)))
        pack = 1 << (self.b.graph.tensors[b_].dtype.bits + 1)  # (a - zp_a) * pack + (b - zp_b), lossless
        acc = self.b.add_node(
            Op.ADD, node.name or "add", [a, b_], INT32, QuantInfo(1.0, 0), lhs_multiplier=pack, rhs_multiplier=1
        )
        return self.b.add_node(
            Op.REQUANTIZE,
            f"{node.name}_requant",
            [acc],
            kind,
            quant,
            multiplier=[1],
            shift=[0],
            clip_min=kind.min,
            clip_max=kind.max,
            float_add=[float(r_a), float(r_b), float(k)],
        )

    # --- layout ops on integers ------------------------------------------------------------------
    def op_MaxPool(self, node):  # noqa: N802
        x = self.tensor(node, 0)
        kernel, stride, padding = pool_attrs(node)
        info = self.b.graph.tensors[x]
        return self.b.add_node(
            Op.MAXPOOL,
            node.name or "maxpool",
            [x],
            info.dtype,
            info.quant,
            kernel=kernel,
            stride=stride,
            padding=padding,
        )

    def op_Flatten(self, node):  # noqa: N802
        if attributes(node).get("axis", 1) != 1:
            raise unsupported(node, "only Flatten(axis=1) is supported")
        x = self.tensor(node, 0)
        info = self.b.graph.tensors[x]
        return self.b.add_node(Op.FLATTEN, node.name or "flatten", [x], info.dtype, info.quant)

    def op_Reshape(self, node):  # noqa: N802
        x = self.tensor(node, 0)
        info = self.b.graph.tensors[x]
        shape = [int(v) for v in self.const(node, 1)]
        rest = [info.shape[i + 1] if v == 0 else v for i, v in enumerate(shape[1:])]
        if len(rest) == 1:
            return self.b.add_node(Op.FLATTEN, node.name or "flatten", [x], info.dtype, info.quant)
        if rest.count(-1) == 1:
            known = int(np.prod([v for v in rest if v != -1]))
            rest = [int(np.prod(info.shape[1:])) // known if v == -1 else v for v in rest]
        return self.b.add_node(Op.RESHAPE, node.name or "reshape", [x], info.dtype, info.quant, shape=rest)


def load(model: onnx.ModelProto, name: str, max_acc_bits: int) -> Graph:
    return QopLowerer(model, name).run(max_acc_bits)
