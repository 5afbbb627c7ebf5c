"""Import QONNX graphs (``Quant``, ``BipolarQuant``, ``Trunc``, as Brevitas ``export_qonnx`` writes them,
before or after ``qonnx.util.cleanup.cleanup_model``) into the integer IR.

The qonnx executor runs every QONNX op in float32 numpy (``qonnx/custom_op/general/intquant.py``,
``trunc.py``, ``bipolar_quant.py``) and standard ops in onnxruntime. This importer reproduces it:

* ``Quant`` of a constant (weights, biases) is evaluated with the executor's own float32 formula
  ``round_mode(clamp(w / s + zp))``, so every rounding mode is exact;
* ``Quant`` of the graph input is the IR's input rule (float32 division, half to even, clamp);
* ``Quant`` of an accumulator (Conv/Gemm/MatMul [+ bias], Add, a pool's window sum) is a ``requantize``:
  ``ROUND``/``HALF_EVEN`` as is; ``FLOOR``/``CEIL`` with a power-of-two ratio by doubling the accumulator
  grid and adding ``1 -/+ 2**shift`` to the bias, so that half-to-even rounding of the odd result equals the
  floor/ceiling; other modes are refused unless the ratio is an integer (nothing to round);
* ``BipolarQuant`` of an accumulator doubles the grid and adds 1 (the sum is then odd, never 0) and clips to
  [-1, 1]: ``x >= 0 -> +1``, as the executor does;
* AveragePool / GlobalAveragePool / ReduceMean(H, W) followed by ``Quant`` or ``Trunc`` become the IR's average
  pool when the result stays on the input grid, otherwise a depthwise convolution of ones (the window sum)
  and a requantize.

Anything else gives a one-line ``QExportError`` naming the node and op (docs/interop.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from qexport.errors import QExportError
from qexport.frontend.requant import is_power_of_two, multiplier_and_shift
from qexport.ir.checker import check_graph
from qexport.ir.dtypes import INT32, IntType
from qexport.ir.graph import Graph, Node, QuantInfo, TensorInfo, Weight
from qexport.ir.ops import Op
from qexport.ir.shapes import infer_shape
from qexport.passes.infer_accumulator_bits import DEFAULT_MAX_ACC_BITS, infer_accumulator_bits

QONNX_OPS = frozenset({"Quant", "BipolarQuant", "Trunc"})
HALF_EVEN_MODES = frozenset({"ROUND", "HALF_EVEN"})
SHIFT_MODES = frozenset({"FLOOR", "CEIL"})  # expressible after a power-of-two ratio (see module docstring)
PASS_THROUGH = frozenset({"Identity", "Dropout"})
GRID_TOLERANCE = 2.0**-20  # relative: float32 rounding of a derived scale, far below half a step of a window sum
ADD_ALIGN_BITS = 16  # operands of an Add whose scales are not a power-of-two ratio apart (qexport.frontend.lower)


class QonnxImportError(QExportError):
    """A QONNX graph (or node) that the integer IR cannot reproduce exactly."""


@dataclass
class Const:
    value: np.ndarray


@dataclass
class QConst:
    """A quantized constant: real = scale * (integers - zero_point)."""

    integers: np.ndarray
    scale: np.ndarray  # float32, broadcastable against integers
    zero_point: np.ndarray
    dtype: IntType


@dataclass
class Quantized:
    tensor: str


@dataclass
class Acc:
    """An integer accumulator: real = scale[c] * value. ``producer`` is the IR conv/linear that made it, if any."""

    tensor: str
    scale: np.ndarray  # float64 per channel
    producer: Node | None = None
    relu: bool = False


@dataclass
class Pool:
    """An average pool still waiting for its Quant/Trunc: the real value is sum(window) * input scale / count."""

    onnx_name: str
    x: str
    kernel: list[int]
    stride: list[int]
    padding: list[int]
    count: int
    is_global: bool = False


@dataclass
class _State:
    graph: Graph
    env: dict[str, object] = field(default_factory=dict)
    counter: int = 0

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}__{self.counter}"


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _where(node: onnx.NodeProto) -> str:
    return f"node {node.name or node.output[0]!r} ({node.op_type})"


def _mode(node: onnx.NodeProto) -> str:
    mode = _attrs(node).get("rounding_mode", b"ROUND")
    return (mode.decode() if isinstance(mode, bytes) else str(mode)).upper()


def rounding_function(mode: str, where: str = "Quant"):
    """The qonnx executor's numpy function for a rounding mode (``qonnx...intquant.resolve_rounding_mode``)."""
    functions = {
        "ROUND": np.round,
        "HALF_EVEN": np.round,
        "CEIL": np.ceil,
        "FLOOR": np.floor,
        "UP": lambda x: np.sign(x) * np.ceil(np.abs(x)),
        "DOWN": np.fix,
        "HALF_UP": lambda x: np.sign(x) * np.floor(np.abs(x) + 0.5),
        "HALF_DOWN": lambda x: np.sign(x) * np.ceil(np.abs(x) - 0.5),
    }
    if mode not in functions:
        raise QonnxImportError(f"{where}: unknown rounding_mode {mode!r}")
    return functions[mode]


def int_range(signed: bool, narrow: bool, bits: int) -> tuple[int, int]:
    """qonnx's min_int / max_int."""
    if signed:
        return -(1 << (bits - 1)) + int(narrow), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1 - int(narrow)


def quantize_constant(values, scale, zero_point, bits: int, signed: bool, narrow: bool, mode: str) -> np.ndarray:
    """The integers the qonnx executor's ``int_quant`` produces (float32 arithmetic), as int64."""
    y = np.asarray(values, np.float32) / np.asarray(scale, np.float32) + np.asarray(zero_point, np.float32)
    low, high = int_range(signed, narrow, bits)
    y = np.clip(y, np.float32(low), np.float32(high))
    return rounding_function(mode)(y).astype(np.int64)


def _integer(value: np.ndarray, what: str, where: str) -> int:
    flat = np.unique(np.asarray(value, np.float64))
    if flat.size != 1 or flat[0] != round(flat[0]):
        raise QonnxImportError(f"{where}: {what} must be one integer, got {np.asarray(value).tolist()}")
    return int(flat[0])


def _scalar_scale(value: np.ndarray, where: str) -> float:
    flat = np.unique(np.asarray(value, np.float32))
    if flat.size != 1 or not (np.isfinite(flat[0]) and flat[0] > 0):
        raise QonnxImportError(f"{where}: activation scale must be one positive number (per-tensor), got {flat}")
    return float(flat[0])


def _grid_units(ratio: float) -> int | None:
    """How many steps of ``Trunc``'s input scale one unit of its input is: a positive integer, allowing for the
    float32 rounding of a scale like ``s / 9`` (the executor's first ``round(x / scale)`` absorbs it)."""
    units = round(ratio)
    return units if units >= 1 and abs(ratio - units) <= GRID_TOLERANCE * units else None


def _pair(values, default) -> list[int]:
    return [int(v) for v in values] if values is not None else list(default)


class _Importer:
    def __init__(self, model: onnx.ModelProto, source: str, max_acc_bits: int):
        self.model, self.source, self.max_acc_bits = model, source, max_acc_bits
        self.s = _State(Graph(model.graph.name or "qonnx", [], [], {}, [], {}, {"source": source}))
        for init in model.graph.initializer:
            self.s.env[init.name] = Const(numpy_helper.to_array(init))
        self.shapes = {
            vi.name: [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
            for vi in list(model.graph.input) + list(model.graph.value_info)
        }
        for vi in model.graph.input:
            if vi.name not in self.s.env:
                self.s.env[vi.name] = "float"

    # -- helpers --------------------------------------------------------------------------------
    @property
    def graph(self) -> Graph:
        return self.s.graph

    def value(self, node: onnx.NodeProto, index: int):
        if index >= len(node.input) or node.input[index] == "":
            return None
        name = node.input[index]
        if name not in self.s.env:
            raise QonnxImportError(f"{_where(node)}: input {name!r} is not produced before it")
        return self.s.env[name]

    def const(self, node: onnx.NodeProto, index: int, what: str) -> np.ndarray:
        value = self.value(node, index)
        if not isinstance(value, Const):
            raise QonnxImportError(f"{_where(node)}: {what} (input {index}) must be a constant")
        return value.value

    def add_node(self, op: Op, name: str, inputs: list[str], output: str, dtype: IntType, quant, **attrs) -> str:
        node = Node(op, name, inputs, [output], attrs)
        shapes = [self.graph.tensors[i].shape for i in (inputs[:1] if op is Op.REQUANTIZE else inputs)]
        shape = infer_shape(self.graph, node, shapes)
        self.graph.tensors[output] = TensorInfo(output, dtype, shape, quant)
        self.graph.nodes.append(node)
        return output

    def node_name(self, node: onnx.NodeProto) -> str:
        name = node.name or node.output[0]
        if any(n.name == name for n in self.graph.nodes):
            name = self.s.fresh(name)
        return name

    def quantized(self, node: onnx.NodeProto, index: int = 0) -> Quantized:
        value = self.value(node, index)
        if not isinstance(value, Quantized):
            raise QonnxImportError(
                f"{_where(node)}: input {node.input[index]!r} is not a quantized tensor (a Quant node must precede it)"
            )
        return value

    # -- the QONNX ops ---------------------------------------------------------------------------
    def quant(self, node: onnx.NodeProto) -> object:
        where = _where(node)
        attrs = _attrs(node)
        scale = self.const(node, 1, "scale")
        zero = self.const(node, 2, "zero point")
        bits = _integer(self.const(node, 3, "bit width"), "bit width", where)
        signed, narrow, mode = bool(attrs.get("signed", 1)), bool(attrs.get("narrow", 0)), _mode(node)
        rounding_function(mode, where)
        if bits == 1 and signed:  # the executor treats signed 1-bit Quant as bipolar
            return self.bipolar(node, scale)
        if not 1 <= bits <= 32:
            raise QonnxImportError(f"{where}: bit width {bits} has no IR integer type (1..32)")
        dtype = IntType(signed, bits)
        low, high = int_range(signed, narrow, bits)
        x = self.value(node, 0)
        if isinstance(x, Const):
            zero_points = np.asarray(zero, np.float64)
            if np.any(zero_points != np.round(zero_points)):
                raise QonnxImportError(f"{where}: zero point must be integers")
            integers = quantize_constant(x.value, scale, zero, bits, signed, narrow, mode)
            return QConst(integers, np.asarray(scale, np.float32), zero_points.astype(np.int64), dtype)
        step = _scalar_scale(scale, where)
        zp = _integer(zero, "zero point", where)
        if not low <= zp <= high:
            raise QonnxImportError(f"{where}: zero point {zp} outside [{low}, {high}]")
        out = node.output[0]
        quant = QuantInfo(step, zp)
        if x == "float":
            if mode not in HALF_EVEN_MODES:
                raise QonnxImportError(
                    f"{where}: rounding_mode {mode} at the graph input (the IR input rounds half to even)"
                )
            shape = self.shapes.get(node.input[0])
            if not shape or len(shape) not in (2, 4):
                raise QonnxImportError(f"{where}: graph input {node.input[0]!r} needs a 2-D or 4-D shape")
            name = node.input[0]
            self.graph.tensors[name] = TensorInfo(name, dtype, (-1, *shape[1:]), quant)
            self.graph.inputs.append(name)
            if (low, high) == (dtype.min, dtype.max):
                return Quantized(name)
            return Quantized(
                self.add_node(Op.CLIP, self.node_name(node), [name], out, dtype, quant, clip_min=low, clip_max=high)
            )
        if isinstance(x, Quantized):
            x = self.as_accumulator(node, x, mode not in HALF_EVEN_MODES)
        if isinstance(x, Pool):
            x = self.pool_to_accumulator(node, x, step, zp, dtype, low, high, mode)
            if isinstance(x, Quantized):
                return x
        if not isinstance(x, Acc):
            raise QonnxImportError(f"{where}: input {node.input[0]!r} cannot be quantized here")
        ratios = [float(c) / step for c in x.scale]
        return self.requantize(node, x, ratios, dtype, quant, low, high, mode, out)

    def requantize(self, node, acc: Acc, ratios, dtype, quant, low, high, mode, out) -> Quantized:
        where = _where(node)
        if acc.relu:
            low = max(low, quant.zero_point)
        integral = all(r == int(r) for r in ratios)  # nothing to round
        if mode in HALF_EVEN_MODES and quant.zero_point % 2 and not integral and all(map(is_power_of_two, ratios)):
            raise QonnxImportError(
                f"{where}: odd zero point {quant.zero_point} after a power-of-two rescale: the executor rounds half to "
                "even after adding the zero point, so its ties differ from the IR's (round, then add)"
            )
        if mode in SHIFT_MODES and not integral:
            if not all(is_power_of_two(r) for r in ratios) or acc.producer is None:
                raise QonnxImportError(
                    f"{where}: rounding_mode {mode} is exact only after a conv/linear/pool with a power-of-two scale "
                    "ratio (the IR rounds half to even)"
                )
            ratios = self.offset_for_mode(acc, ratios, mode)
        elif mode not in HALF_EVEN_MODES and not integral:
            raise QonnxImportError(
                f"{where}: rounding_mode {mode} cannot be expressed by the IR's half-to-even requantize"
            )
        pairs = [multiplier_and_shift(r) for r in ratios]
        if len(set(pairs)) == 1:
            pairs = pairs[:1]
        return Quantized(
            self.add_node(
                Op.REQUANTIZE,
                self.node_name(node),
                [acc.tensor],
                out,
                dtype,
                quant,
                multiplier=[p[0] for p in pairs],
                shift=[p[1] for p in pairs],
                clip_min=low,
                clip_max=high,
            )
        )

    def double_grid(self, acc: Acc, offset: np.ndarray) -> None:
        """Make the producer's accumulator 2 * acc + offset[c] (weights on a grid half as fine, bias moved)."""
        node = acc.producer
        weight = self.graph.weights[node.attrs["weight"]]
        values = weight.arrays["values"].astype(np.int64) * 2
        zero = np.asarray(weight.attrs.get("zero_point", 0), np.int64) * 2
        low, high = min(int(values.min()), int(zero.min()), -1), max(int(values.max()), int(zero.max()), 1)
        weight.arrays["values"] = values
        weight.attrs.update(
            dtype=IntType.for_range(low, high).name,
            scale=(np.asarray(weight.attrs["scale"], np.float64) / 2).tolist(),
            zero_point=zero.tolist() if zero.ndim else int(zero),
        )
        channels = weight.shape[0]
        bias_name = node.attrs.get("bias") or f"{node.attrs['weight']}__bias"
        bias = self.graph.weights.get(bias_name)
        old = bias.arrays["values"].astype(np.int64) if bias is not None else np.zeros(channels, np.int64)
        acc.scale = acc.scale / 2
        self.graph.weights[bias_name] = Weight(
            bias_name,
            "int_affine",
            (channels,),
            {"values": old * 2 + np.broadcast_to(offset, (channels,))},
            {"dtype": "INT32", "scale": acc.scale.tolist(), "zero_point": 0, "axis": 0},
        )
        node.attrs["bias"] = bias_name
        self.graph.tensors[acc.tensor].quant = QuantInfo(acc.scale.tolist(), 0, 1)

    def offset_for_mode(self, acc: Acc, ratios: list[float], mode: str) -> list[float]:
        """floor(a / 2**s) = half_even((2a + 1 - 2**s) / 2**(s+1)); ceil uses + 2**s - 1 (the numerator is odd)."""
        shifts = np.array([-math.log2(r) for r in ratios])
        sign = -1 if mode == "FLOOR" else 1
        offset = np.where(shifts > 0, sign * (np.exp2(np.maximum(shifts, 0)).astype(np.int64) - 1), 0)
        self.double_grid(acc, offset.astype(np.int64))
        return [r / 2 for r in ratios]

    def bipolar(self, node: onnx.NodeProto, scale: np.ndarray | None = None) -> object:
        where = _where(node)
        if scale is None:
            scale = self.const(node, 1, "scale")
        x = self.value(node, 0)
        if isinstance(x, Const):  # the executor: x >= 0 -> +1, else -1
            integers = np.where(np.asarray(x.value, np.float32) >= 0, 1, -1).astype(np.int64)
            return QConst(integers, np.asarray(scale, np.float32), np.zeros(1, np.int64), IntType(True, 2))
        step = _scalar_scale(scale, where)
        if isinstance(x, Quantized):
            x = self.as_accumulator(node, x, True)
        if not isinstance(x, Acc) or x.producer is None or x.relu:
            raise QonnxImportError(
                f"{where}: BipolarQuant needs a conv/linear accumulator (or a quantized tensor) input"
            )
        self.double_grid(x, np.ones(1, np.int64))  # 2 * acc + 1 is odd: its sign is the executor's x >= 0 test
        pairs = [multiplier_and_shift(1.0)]
        return Quantized(
            self.add_node(
                Op.REQUANTIZE,
                self.node_name(node),
                [x.tensor],
                node.output[0],
                IntType(True, 2),
                QuantInfo(step, 0),
                multiplier=[pairs[0][0]],
                shift=[pairs[0][1]],
                clip_min=-1,
                clip_max=1,
            )
        )

    def trunc(self, node: onnx.NodeProto) -> object:
        where = _where(node)
        if len(node.input) != 6:
            raise QonnxImportError(f"{where}: only Trunc v2 (6 inputs: scale, zero point, bit widths, output scale)")
        attrs, mode = _attrs(node), _mode(node)
        rounding_function(mode, where)
        in_scale = float(np.float32(_scalar_scale(self.const(node, 1, "scale"), where)))
        zero = _integer(self.const(node, 2, "zero point"), "zero point", where)
        out_scale = _scalar_scale(self.const(node, 4, "output scale"), where)
        bits = _integer(self.const(node, 5, "output bit width"), "output bit width", where)
        signed, narrow = bool(attrs.get("signed", 1)), bool(attrs.get("narrow", 0))
        trunc_scale = 2.0 ** round(math.log2(out_scale / in_scale))
        if zero != 0:
            raise QonnxImportError(f"{where}: zero point {zero} (only 0 is supported)")
        x = self.value(node, 0)
        low, high = int_range(signed, narrow, bits)
        dtype = IntType(signed, bits)
        if isinstance(x, Quantized):
            x = self.as_accumulator(node, x, mode not in HALF_EVEN_MODES)
        # the executor first rounds x / in_scale to an integer: the input must lie on that grid
        if isinstance(x, Pool):
            src = self.graph.tensors[x.x].quant.scale
            per_unit = _grid_units(float(src) / (x.count * in_scale))
            if per_unit is None:
                raise QonnxImportError(f"{where}: input scale {in_scale} is not the pool's grid {float(src) / x.count}")
            ratio = per_unit / trunc_scale
            quant = QuantInfo(out_scale, 0)
            result = self.pool_as_average(node, x, ratio * x.count, quant, dtype, low, high, mode)
            if result is not None:
                return result
            x = self.pool_sum(x)
        if not isinstance(x, Acc):
            raise QonnxImportError(f"{where}: input {node.input[0]!r} is neither a pool nor an accumulator")
        units = [_grid_units(float(c) / in_scale) for c in x.scale]
        if any(u is None for u in units):
            raise QonnxImportError(f"{where}: input is not on the grid of its scale {in_scale}")
        ratios = [u / trunc_scale for u in units]
        return self.requantize(node, x, ratios, dtype, QuantInfo(out_scale, 0), low, high, mode, node.output[0])

    # -- accumulators ----------------------------------------------------------------------------
    def as_accumulator(self, node: onnx.NodeProto, x: Quantized, need_producer: bool = False) -> Acc:
        """A quantized tensor as an accumulator: itself (zero point 0), else a depthwise 1x1 identity conv
        (which removes the zero point, and whose grid ``double_grid`` can refine)."""
        info = self.graph.tensors[x.tensor]
        channels = info.shape[1]
        if info.quant.zero_point == 0 and not need_producer:
            return Acc(x.tensor, np.full(channels, float(info.quant.scale)))
        if len(info.shape) != 4:
            raise QonnxImportError(
                f"{_where(node)}: requantizing a 2-D tensor with a zero point or a non-half-even rounding mode"
            )
        return self.depthwise_ones(node.name or node.output[0], x.tensor, [1, 1], [1, 1], [0, 0, 0, 0])

    def depthwise_ones(self, base: str, tensor: str, kernel, stride, padding) -> Acc:
        info = self.graph.tensors[tensor]
        channels = info.shape[1]
        name = self.s.fresh(f"{base}.window")
        self.graph.weights[f"{name}.weight"] = Weight(
            f"{name}.weight",
            "int_affine",
            (channels, 1, *kernel),
            {"values": np.ones((channels, 1, *kernel), np.int64)},
            {"dtype": "UINT1", "scale": 1.0, "zero_point": 0, "axis": 0},
        )
        scale = np.full(channels, float(info.quant.scale))
        out = self.add_node(
            Op.CONV2D,
            name,
            [tensor],
            f"{name}_acc",
            INT32,
            QuantInfo(scale.tolist(), 0, 1),
            weight=f"{name}.weight",
            bias=None,
            stride=list(stride),
            padding=list(padding),
            dilation=[1, 1],
            groups=channels,
        )
        return Acc(out, scale, self.graph.nodes[-1])

    def pool_sum(self, pool: Pool) -> Acc:
        info = self.graph.tensors[pool.x]
        kernel = list(info.shape[2:]) if pool.is_global else pool.kernel
        acc = self.depthwise_ones(pool.onnx_name, pool.x, kernel, pool.stride, pool.padding)
        acc.scale = acc.scale / pool.count
        self.graph.tensors[acc.tensor].quant = QuantInfo(acc.scale.tolist(), 0, 1)
        return acc

    def pool_as_average(self, node, pool: Pool, ratio: float, quant, dtype, low, high, mode) -> Quantized | None:
        """The IR average pool when the result is round_half_even(sum / count) on the input's own grid."""
        info = self.graph.tensors[pool.x]
        if (
            ratio != 1.0
            or mode not in HALF_EVEN_MODES
            or quant.zero_point != info.quant.zero_point
            or float(np.float32(quant.scale)) != float(info.quant.scale)
            or not dtype.contains(info.dtype.min, info.dtype.max)
        ):
            return None
        name = self.node_name(node)
        if pool.is_global:
            out = self.add_node(Op.GLOBAL_AVGPOOL, name, [pool.x], f"{node.output[0]}__avg", info.dtype, info.quant)
        else:
            out = self.add_node(
                Op.AVGPOOL,
                name,
                [pool.x],
                f"{node.output[0]}__avg",
                info.dtype,
                info.quant,
                kernel=pool.kernel,
                stride=pool.stride,
                padding=pool.padding,
                count_include_pad=True,
            )
        if (low, high) == (info.dtype.min, info.dtype.max):
            self.graph.tensors[node.output[0]] = self.graph.tensors.pop(out)
            self.graph.tensors[node.output[0]].name = node.output[0]
            self.graph.nodes[-1].outputs = [node.output[0]]
            return Quantized(node.output[0])
        return Quantized(
            self.add_node(
                Op.CLIP,
                f"{name}.clip",
                [out],
                node.output[0],
                info.dtype,
                info.quant,
                clip_min=max(low, info.dtype.min),
                clip_max=min(high, info.dtype.max),
            )
        )

    def pool_to_accumulator(self, node, pool: Pool, step, zp, dtype, low, high, mode) -> Acc | Quantized:
        src = float(self.graph.tensors[pool.x].quant.scale)
        ratio = src / (pool.count * step)
        result = self.pool_as_average(node, pool, ratio * pool.count, QuantInfo(step, zp), dtype, low, high, mode)
        return result if result is not None else self.pool_sum(pool)

    # -- standard ops ----------------------------------------------------------------------------
    def weighted(self, node: onnx.NodeProto, weight: QConst, bias_value, op: Op, **attrs) -> Acc:
        where = _where(node)
        x = self.quantized(node)
        x_info = self.graph.tensors[x.tensor]
        out_channels = weight.integers.shape[0]
        if weight.scale.size not in (1, out_channels) or (
            weight.scale.ndim and weight.scale.shape[0] != weight.scale.size
        ):
            raise QonnxImportError(f"{where}: weight scale of shape {weight.scale.shape} is not per output channel")
        w_scale = np.broadcast_to(weight.scale.reshape(-1), (out_channels,))
        zero = weight.zero_point.reshape(-1)
        if zero.size not in (1, out_channels):
            raise QonnxImportError(f"{where}: weight zero point of shape {weight.zero_point.shape}")
        if not (w_scale > 0).all():
            raise QonnxImportError(f"{where}: weight scales must be positive")
        name = self.node_name(node)
        acc_scale = float(x_info.quant.scale) * w_scale.astype(np.float64)
        scale_attr = float(w_scale[0]) if np.all(w_scale == w_scale[0]) else w_scale.astype(np.float64).tolist()
        zero_attr = int(zero[0]) if np.all(zero == zero[0]) else zero.astype(np.int64).tolist()
        self.graph.weights[f"{name}.weight"] = Weight(
            f"{name}.weight",
            "int_affine",
            tuple(weight.integers.shape),
            {"values": weight.integers},
            {"dtype": weight.dtype.name, "scale": scale_attr, "zero_point": zero_attr, "axis": 0},
        )
        out = self.add_node(
            op,
            name,
            [x.tensor],
            f"{node.output[0]}",
            INT32,
            QuantInfo(acc_scale.tolist(), 0, 1),
            weight=f"{name}.weight",
            bias=None,
            **attrs,
        )
        acc = Acc(out, acc_scale, self.graph.nodes[-1])
        if bias_value is not None:
            self.add_bias(node, acc, bias_value)
        return acc

    def add_bias(self, node: onnx.NodeProto, acc: Acc, bias) -> None:
        """Bias in accumulator units: a Quant'ed bias whose scale is the accumulator's (times an integer)."""
        where = _where(node)
        channels = len(acc.scale)
        if isinstance(bias, QConst):
            real_units = np.broadcast_to(bias.scale.astype(np.float64).reshape(-1), (channels,)) / acc.scale
            units = np.round(real_units)
            if np.any(units < 1) or np.any(np.abs(real_units - units) > 1e-6 * units):
                raise QonnxImportError(f"{where}: bias scale is not an integer multiple of input scale x weight scale")
            centred = bias.integers.reshape(-1) - bias.zero_point.reshape(-1)
            values = np.broadcast_to(centred, (channels,)) * units.astype(np.int64)
        elif isinstance(bias, Const):
            real = np.broadcast_to(np.asarray(bias.value, np.float64).reshape(-1), (channels,))
            units = real / acc.scale
            if np.any(units != np.round(units)):
                raise QonnxImportError(
                    f"{where}: bias is not quantized to the accumulator grid (quantize it, e.g. Brevitas Int32Bias)"
                )
            values = units.astype(np.int64)
        else:
            raise QonnxImportError(f"{where}: bias must be a constant")
        node_ir = acc.producer
        name = f"{node_ir.name}.bias"
        previous = self.graph.weights.get(node_ir.attrs.get("bias") or "")
        total = values + (previous.arrays["values"] if previous is not None else 0)
        if total.size and (total.min() < INT32.min or total.max() > INT32.max):
            raise QonnxImportError(f"{where}: bias does not fit INT32 accumulator units")
        self.graph.weights[name] = Weight(
            name,
            "int_affine",
            (channels,),
            {"values": total.astype(np.int64)},
            {"dtype": "INT32", "scale": acc.scale.tolist(), "zero_point": 0, "axis": 0},
        )
        node_ir.attrs["bias"] = name

    def weight_of(self, node: onnx.NodeProto, index: int) -> QConst:
        value = self.value(node, index)
        if not isinstance(value, QConst):
            raise QonnxImportError(
                f"{_where(node)}: weight {node.input[index]!r} must be a Quant/BipolarQuant constant"
            )
        return value

    def conv(self, node: onnx.NodeProto) -> Acc:
        attrs = _attrs(node)
        where = _where(node)
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
            raise QonnxImportError(f"{where}: auto_pad {attrs['auto_pad']!r} (explicit pads only)")
        weight = self.weight_of(node, 1)
        if weight.integers.ndim != 4:
            raise QonnxImportError(f"{where}: only 2-D convolutions (weight rank 4) are supported")
        pads = _pair(attrs.get("pads"), [0, 0, 0, 0])
        return self.weighted(
            node,
            weight,
            self.value(node, 2),
            Op.CONV2D,
            stride=_pair(attrs.get("strides"), [1, 1]),
            padding=[pads[0], pads[1], pads[2], pads[3]],
            dilation=_pair(attrs.get("dilations"), [1, 1]),
            groups=int(attrs.get("group", 1)),
        )

    def gemm(self, node: onnx.NodeProto) -> Acc:
        attrs = _attrs(node)
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
            raise QonnxImportError(f"{_where(node)}: only alpha=1, beta=1, transA=0")
        weight = self.weight_of(node, 1)
        if not attrs.get("transB", 0):
            weight = self.transposed(node, weight)
        return self.weighted(node, weight, self.value(node, 2), Op.LINEAR)

    def transposed(self, node: onnx.NodeProto, weight: QConst) -> QConst:
        if weight.scale.size > 1 or weight.zero_point.size > 1:
            raise QonnxImportError(f"{_where(node)}: per-channel scales on a [K, M] weight (per input feature)")
        return QConst(weight.integers.T.copy(), weight.scale, weight.zero_point, weight.dtype)

    def matmul(self, node: onnx.NodeProto) -> Acc:
        weight = self.weight_of(node, 1)
        if weight.integers.ndim != 2:
            raise QonnxImportError(f"{_where(node)}: only [K, M] weight matrices")
        if weight.scale.size > 1:  # per output column: shape [1, M]
            weight = QConst(
                weight.integers.T.copy(), weight.scale.reshape(-1, 1), weight.zero_point.reshape(-1), weight.dtype
            )
        else:
            weight = self.transposed(node, weight)
        return self.weighted(node, weight, None, Op.LINEAR)

    def add(self, node: onnx.NodeProto) -> Acc:
        a, b = self.value(node, 0), self.value(node, 1)
        if isinstance(b, Acc) and isinstance(a, (Const, QConst)):
            a, b = b, a
        if isinstance(a, Acc) and isinstance(b, (Const, QConst)) and a.producer is not None:
            self.add_bias(node, a, b)
            self.s.env[node.output[0]] = a
            return a
        if not (isinstance(a, Quantized) and isinstance(b, Quantized)):
            raise QonnxImportError(f"{_where(node)}: Add needs two quantized tensors (or an accumulator and a bias)")
        steps = [float(self.graph.tensors[t.tensor].quant.scale) for t in (a, b)]
        # as the torch lowering: exact alignment for a power-of-two ratio, else 16 extra fraction bits
        small = min(steps) if is_power_of_two(max(steps) / min(steps)) else min(steps) / (1 << ADD_ALIGN_BITS)
        out = self.add_node(
            Op.ADD,
            self.node_name(node),
            [a.tensor, b.tensor],
            node.output[0],
            INT32,
            QuantInfo(small, 0, 1),
            lhs_multiplier=round(steps[0] / small),
            rhs_multiplier=round(steps[1] / small),
        )
        return Acc(out, np.full(self.graph.tensors[out].shape[1], small))

    def relu(self, node: onnx.NodeProto) -> object:
        x = self.value(node, 0)
        if isinstance(x, Acc):
            return Acc(x.tensor, x.scale, x.producer, True)
        q = self.quantized(node)
        info = self.graph.tensors[q.tensor]
        return Quantized(
            self.add_node(Op.RELU, self.node_name(node), [q.tensor], node.output[0], info.dtype, info.quant)
        )

    def maxpool(self, node: onnx.NodeProto) -> Quantized:
        attrs, where = _attrs(node), _where(node)
        if attrs.get("ceil_mode", 0) or any(d != 1 for d in attrs.get("dilations", [1, 1])):
            raise QonnxImportError(f"{where}: ceil_mode and dilation are not supported")
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
            raise QonnxImportError(f"{where}: auto_pad {attrs['auto_pad']!r} (explicit pads only)")
        q = self.quantized(node)
        info = self.graph.tensors[q.tensor]
        kernel = _pair(attrs["kernel_shape"], None)
        return Quantized(
            self.add_node(
                Op.MAXPOOL,
                self.node_name(node),
                [q.tensor],
                node.output[0],
                info.dtype,
                info.quant,
                kernel=kernel,
                stride=_pair(attrs.get("strides"), kernel),
                padding=_pair(attrs.get("pads"), [0, 0, 0, 0]),
            )
        )

    def avgpool(self, node: onnx.NodeProto) -> Pool:
        attrs, where = _attrs(node), _where(node)
        if attrs.get("ceil_mode", 0) or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
            raise QonnxImportError(f"{where}: ceil_mode / auto_pad are not supported")
        q = self.quantized(node)
        kernel = _pair(attrs["kernel_shape"], None)
        pads = _pair(attrs.get("pads"), [0, 0, 0, 0])
        if any(pads) and not attrs.get("count_include_pad", 0):
            raise QonnxImportError(f"{where}: padding with count_include_pad=0 (window counts vary)")
        return Pool(
            node.name or node.output[0],
            q.tensor,
            kernel,
            _pair(attrs.get("strides"), [1, 1]),
            pads,
            kernel[0] * kernel[1],
        )

    def global_pool(self, node: onnx.NodeProto) -> Pool:
        q = self.quantized(node)
        info = self.graph.tensors[q.tensor]
        if node.op_type == "ReduceMean":
            attrs = _attrs(node)
            axes = attrs.get("axes")
            if axes is None and len(node.input) > 1:
                axes = self.const(node, 1, "axes").tolist()
            if sorted(a % 4 for a in (axes or [])) != [2, 3] or not attrs.get("keepdims", 1):
                raise QonnxImportError(f"{_where(node)}: only the mean over H and W with keepdims=1")
        if len(info.shape) != 4:
            raise QonnxImportError(f"{_where(node)}: needs a 4-D input")
        h, w = info.shape[2:]
        return Pool(node.name or node.output[0], q.tensor, [h, w], [1, 1], [0, 0, 0, 0], h * w, True)

    def reshape(self, node: onnx.NodeProto) -> Quantized:
        q = self.quantized(node)
        info = self.graph.tensors[q.tensor]
        size = math.prod(info.shape[1:])
        if node.op_type == "Flatten":
            if _attrs(node).get("axis", 1) != 1:
                raise QonnxImportError(f"{_where(node)}: only Flatten(axis=1)")
            target = [size]
        else:
            target = [int(v) for v in self.const(node, 1, "shape")][1:]  # the first entry is the batch
            if target.count(-1) == 1:
                known = math.prod(v for v in target if v != -1)
                target[target.index(-1)] = size // known if known else 0
            if math.prod(target) != size or any(v < 1 for v in target):
                raise QonnxImportError(f"{_where(node)}: cannot reshape {info.shape[1:]} per sample")
        op, attrs = (Op.FLATTEN, {}) if len(target) == 1 else (Op.RESHAPE, {"shape": target})
        return Quantized(
            self.add_node(op, self.node_name(node), [q.tensor], node.output[0], info.dtype, info.quant, **attrs)
        )

    def transpose(self, node: onnx.NodeProto) -> QConst:
        """A transposed quantized constant (TorchScript exports write Quant -> Transpose -> MatMul)."""
        weight = self.value(node, 0)
        if not isinstance(weight, QConst):
            raise QonnxImportError(f"{_where(node)}: Transpose only of a quantized constant (weights)")
        perm = _attrs(node).get("perm", list(range(weight.integers.ndim))[::-1])

        def moved(array: np.ndarray) -> np.ndarray:
            return array.transpose(perm) if array.ndim == len(perm) else array

        if any(a.size > 1 and a.ndim != len(perm) for a in (weight.scale, weight.zero_point)):
            raise QonnxImportError(f"{_where(node)}: scale / zero point do not broadcast against the weight")
        return QConst(moved(weight.integers), moved(weight.scale), moved(weight.zero_point), weight.dtype)

    def fold(self, node: onnx.NodeProto) -> Const:
        """A standard op on constants only: evaluate it with onnx's reference evaluator."""
        from onnx.reference import ReferenceEvaluator

        inputs = [self.value(node, i).value for i in range(len(node.input)) if node.input[i]]
        feeds = {name: value for name, value in zip([i for i in node.input if i], inputs, strict=True)}
        graph = onnx.helper.make_graph(
            [node],
            "fold",
            [
                onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                for n, v in feeds.items()
            ],
            [onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.UNDEFINED, None)],
        )
        opsets = [o for o in self.model.opset_import if o.domain in ("", "ai.onnx")]
        result = ReferenceEvaluator(onnx.helper.make_model(graph, opset_imports=opsets)).run(None, feeds)
        return Const(np.asarray(result[0]))

    # -- driver ----------------------------------------------------------------------------------
    HANDLERS = {
        "Quant": quant,
        "BipolarQuant": bipolar,
        "Trunc": trunc,
        "Conv": conv,
        "Gemm": gemm,
        "MatMul": matmul,
        "Add": add,
        "Relu": relu,
        "MaxPool": maxpool,
        "AveragePool": avgpool,
        "GlobalAveragePool": global_pool,
        "ReduceMean": global_pool,
        "Flatten": reshape,
        "Reshape": reshape,
        "Transpose": transpose,
    }

    def run(self) -> Graph:
        for node in self.model.graph.node:
            if node.op_type == "Constant":
                self.s.env[node.output[0]] = Const(numpy_helper.to_array(_attrs(node)["value"]))
                continue
            if node.op_type in PASS_THROUGH:
                self.s.env[node.output[0]] = self.value(node, 0)
                continue
            values = [self.value(node, i) for i in range(len(node.input)) if node.input[i]]
            if node.op_type not in QONNX_OPS and values and all(isinstance(v, Const) for v in values):
                self.s.env[node.output[0]] = self.fold(node)
                continue
            handler = self.HANDLERS.get(node.op_type)
            if handler is None:
                raise QonnxImportError(f"{_where(node)}: op {node.op_type} is not supported by the QONNX importer")
            if len(node.output) != 1 and node.op_type != "Dropout":
                raise QonnxImportError(f"{_where(node)}: expected one output")
            self.s.env[node.output[0]] = handler(self, node)
        for output in self.model.graph.output:
            value = self.s.env.get(output.name)
            if not isinstance(value, Quantized):
                raise QonnxImportError(
                    f"graph output {output.name!r} is not quantized (end the graph with a Quant node)"
                )
            self.graph.outputs.append(value.tensor)
        if not self.graph.inputs:
            raise QonnxImportError("the graph input is not quantized by a Quant node")
        return check_graph(infer_accumulator_bits(self.graph, self.max_acc_bits))


NAME = "qonnx"


def is_qonnx(model: onnx.ModelProto) -> bool:
    """True when the model holds QONNX's Quant / BipolarQuant / Trunc nodes."""
    return any(node.op_type in QONNX_OPS for node in model.graph.node)


def import_qonnx(model: onnx.ModelProto, source: str = "model.onnx", max_acc_bits: int = DEFAULT_MAX_ACC_BITS) -> Graph:
    """Lower a QONNX model to a checked integer IR graph (refusals name the node and op)."""
    try:
        return _Importer(model, source, max_acc_bits).run()
    except QExportError as error:
        raise type(error)(f"{source}: {error}") from None


detect = is_qonnx


def load(model: onnx.ModelProto, name: str, max_acc_bits: int = DEFAULT_MAX_ACC_BITS) -> Graph:
    """The dispatcher's entry point (``qexport.frontend.onnx_import``): errors are prefixed by the caller."""
    graph = _Importer(model, name, max_acc_bits).run()
    graph.name = name
    produced = {out for node in model.graph.node for out in node.output}  # the graph input is still float
    accumulators = {n.outputs[0] for n in graph.nodes if n.op in (Op.CONV2D, Op.LINEAR, Op.ADD)}
    # IR tensor -> the ONNX tensor holding its real value scale * (q - zero point) (for layer-by-layer checks)
    graph.metadata["qonnx_tensors"] = {t: t for t in graph.tensors if t in produced and t not in accumulators}
    return graph
