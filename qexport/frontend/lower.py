"""Lower a prepared, trained QAT model (torch.fx GraphModule) to the integer IR."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import fx

from qexport.errors import LoweringError
from qexport.frontend.lower_asq import lower_dynamic_requant
from qexport.frontend.patterns import describe, node_kind
from qexport.frontend.requant import is_power_of_two, multiplier_and_shift
from qexport.ir.checker import check_graph
from qexport.ir.dtypes import INT32, IntType
from qexport.ir.graph import Graph, Node, QuantInfo, TensorInfo, Weight
from qexport.ir.ops import Op
from qexport.ir.shapes import infer_shape
from qexport.passes.infer_accumulator_bits import DEFAULT_MAX_ACC_BITS, infer_accumulator_bits, weighted_range
from qexport.quant.lsq import LsqQuantizer

ADD_ALIGN_BITS = 16
STEP_RANGE = (2.0**-30, 2.0**30)  # every quantizer step of a trained model lies far inside
POST_MACS = ("lut", "split")  # extra accumulator precision when two operand scales are not a power-of-two ratio


@dataclass
class Quantized:
    tensor: str
    dynamic: str | None = None  # a per-sample factor of the scale (see Accumulator.dynamic)


@dataclass
class Accumulator:
    tensor: str
    scale: np.ndarray  # per channel, float64 (exact product of float32 steps)
    activation: str | None = None  # "relu" / "relu6" still to apply
    # per-sample factor of the scale: a [N] tensor of fixed-point values (input-adaptive step sizes);
    # the real scale of sample n is scale * value[n] * that tensor's quant scale
    dynamic: str | None = None


class _Builder:
    def __init__(self, gm: fx.GraphModule, name: str, max_acc_bits: int, post_mac: str):
        self.gm = gm
        self.graph = Graph(name, [], [], {}, [], {}, {})
        self.max_acc_bits, self.post_mac = max_acc_bits, post_mac

    def steps(self, quantizer: LsqQuantizer) -> np.ndarray:
        """The quantizer's float32 steps, refused unless each lies in [2^-30, 2^30] (a trained model's do)."""
        steps = quantizer.step().detach().to(torch.float32).numpy().astype(np.float64)
        valid = np.isfinite(steps) & (steps >= STEP_RANGE[0]) & (steps <= STEP_RANGE[1])
        if not valid.all():
            name = next((n for n, m in self.gm.named_modules() if m is quantizer), "?")
            bad = steps[~valid][0]
            raise LoweringError(
                f"quantizer {name!r}: step {bad:g} is outside [2^-30, 2^30] (a zero, underflowing or overflowing "
                "step in the checkpoint)"
            )
        return steps

    def add_node(self, op: Op, name: str, inputs: list[str], output: str, dtype: IntType, quant, **attrs) -> str:
        node = Node(op, name, inputs, [output], attrs)
        shapes = [self.graph.tensors[i].shape for i in inputs[: 1 if op is Op.REQUANTIZE else None]]
        shape = infer_shape(self.graph, node, shapes)
        self.graph.tensors[output] = TensorInfo(output, dtype, shape, quant)
        self.graph.nodes.append(node)
        return output

    def quant_of(self, tensor: str) -> QuantInfo:
        return self.graph.tensors[tensor].quant


def _pair(value) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)] * 2


def _lower_weighted(b: _Builder, node: fx.Node, x: Quantized) -> Accumulator:
    module = b.gm.get_submodule(node.target)
    x_step = float(b.quant_of(x.tensor).scale)
    weight = module.weight_quant.to_ir_weight(f"{node.target}.weight", module.weight)
    b.graph.weights[weight.name] = weight
    out_channels = module.weight.shape[0]
    weight_steps = np.broadcast_to(b.steps(module.weight_quant), (out_channels,)).astype(np.float64)
    acc_scale = x_step * weight_steps
    attrs: dict = {"weight": f"{node.target}.weight", "bias": None}
    if module.bias is not None:
        bias = module.bias_integers().to(torch.int64).numpy().reshape(out_channels)
        b.graph.weights[f"{node.target}.bias"] = Weight(
            f"{node.target}.bias",
            "int_affine",
            (out_channels,),
            {"values": bias},
            {"dtype": "INT32", "scale": acc_scale.tolist(), "zero_point": 0, "axis": 0},
        )
        attrs["bias"] = f"{node.target}.bias"
    if node_kind(b.gm, node) == "qconv":
        pad_h, pad_w = _pair(module.padding)
        op = Op.CONV2D
        attrs.update(
            stride=_pair(module.stride),
            padding=[pad_h, pad_w, pad_h, pad_w],
            dilation=_pair(module.dilation),
            groups=int(module.groups),
        )
    else:
        op = Op.LINEAR
    if weight.format == "post" and b.post_mac == "split":
        return _split_post(b, node, x, op, attrs, acc_scale)
    out = b.add_node(
        op, node.target, [x.tensor], f"{node.name}_acc", INT32, QuantInfo(acc_scale.tolist(), 0, 1), **attrs
    )
    return Accumulator(out, acc_scale, dynamic=x.dynamic)


def _split_post(b: _Builder, node: fx.Node, x: Quantized, op: Op, attrs: dict, acc_scale: np.ndarray) -> Accumulator:
    """Powers-of-sqrt(2) weights as two exact shift accumulators (even and odd exponents).

    even: sum x * sign * 2**-(k/2), odd: sum x * sign * 2**-((k-1)/2), both on the grid 2**-F of
    the post weight (F = lut_frac_bits, so the bias stays on the even one). The odd sum carries
    an extra 1/sqrt(2); an add combines them once per output with integer multipliers
    round(sqrt(2) * 2**a) and 2**a, a as large as the accumulator width allows (at most 16),
    and requantization follows. No per-product rounding; see docs/methods/post.md.
    """
    post = b.graph.weights.pop(attrs["weight"])
    frac_bits = int(post.attrs["lut_frac_bits"])
    sign, exponent = post.arrays["sign"].astype(np.int64), post.arrays["exponent"].astype(np.int64)
    alpha = np.asarray(post.attrs["scale"], dtype=np.float64)
    accs = []
    for part, parity, scale in (("even", 0, alpha), ("odd", 1, alpha / np.sqrt(2.0))):
        chosen = (exponent % 2 == parity) & (sign != 0)
        name = f"{post.name}_{part}"
        b.graph.weights[name] = Weight(
            name,
            "pot",
            post.shape,
            {"sign": np.where(chosen, sign, 0), "exponent": np.where(chosen, (exponent - parity) // 2, 0)},
            {"scale": np.atleast_1d(scale).tolist(), "max_exponent": frac_bits},
        )
        part_attrs = {**attrs, "weight": name, "bias": attrs["bias"] if part == "even" else None}
        accs.append(
            b.add_node(op, f"{node.target}.{part}", [x.tensor], f"{node.name}_acc_{part}", INT32, None, **part_attrs)
        )
    widest = max(
        max(abs(low), abs(high)).bit_length() for low, high in (weighted_range(b.graph, n) for n in b.graph.nodes[-2:])
    )
    align = min(16, b.max_acc_bits - 3 - widest)  # sqrt(2) * 2**a * |acc| + 2**a * |acc| < 2**(max_acc_bits - 1)
    if align < 4:
        raise LoweringError(f"layer {describe(b.gm, node)}: accumulators too wide for the split POST MAC")
    combined_scale = acc_scale / np.sqrt(2.0) / (1 << align)
    for tensor, scale in zip(accs, (acc_scale, acc_scale / np.sqrt(2.0)), strict=True):
        b.graph.tensors[tensor].quant = QuantInfo(scale.tolist(), 0, 1)
    out = b.add_node(
        Op.ADD,
        f"{node.target}.combine",
        accs,
        f"{node.name}_acc",
        INT32,
        QuantInfo(combined_scale.tolist(), 0, 1),
        lhs_multiplier=round(np.sqrt(2.0) * (1 << align)),
        rhs_multiplier=1 << align,
    )
    return Accumulator(out, combined_scale, dynamic=x.dynamic)


def _lower_add(b: _Builder, node: fx.Node, lhs: Quantized, rhs: Quantized) -> Accumulator:
    if lhs.dynamic or rhs.dynamic:
        raise LoweringError(f"layer {describe(b.gm, node)}: an add of input-adaptive (per-sample) scales")
    lhs_step, rhs_step = float(b.quant_of(lhs.tensor).scale), float(b.quant_of(rhs.tensor).scale)
    small = min(lhs_step, rhs_step)
    exact = is_power_of_two(max(lhs_step, rhs_step) / small)
    acc_step = small if exact else small / (1 << ADD_ALIGN_BITS)
    lhs_multiplier, rhs_multiplier = round(lhs_step / acc_step), round(rhs_step / acc_step)
    out = b.add_node(
        Op.ADD,
        node.name,
        [lhs.tensor, rhs.tensor],
        f"{node.name}_acc",
        INT32,
        QuantInfo(acc_step, 0, 1),
        lhs_multiplier=lhs_multiplier,
        rhs_multiplier=rhs_multiplier,
    )
    channels = b.graph.tensors[out].shape[1]
    return Accumulator(out, np.full(channels, acc_step))


def _activation_clip(activation: str | None, step: float, dtype: IntType) -> tuple[int, int]:
    low, high = dtype.min, dtype.max
    if activation in ("relu", "relu6"):
        low = max(low, 0)
    if activation == "relu6":
        high = min(high, int(np.rint(np.float32(6.0) / np.float32(step))))
    return low, high


def _lower_requant(b: _Builder, node: fx.Node, acc: Accumulator) -> Quantized:
    quantizer: LsqQuantizer = b.gm.get_submodule(node.target)
    custom = getattr(quantizer, "lower_requant", None)
    if custom is not None:  # quantizers with their own integer form (e.g. ASQ's adapter subgraph)
        return custom(b, node, acc)
    if acc.dynamic is not None:  # a static step after a per-sample one: requantize "mul" by that factor
        return lower_dynamic_requant(b, node, acc)
    step = float(b.steps(quantizer)[0])
    dtype = IntType(quantizer.signed, quantizer.bits)
    pairs = [multiplier_and_shift(float(s) / step) for s in acc.scale]
    multipliers, shifts = [p[0] for p in pairs], [p[1] for p in pairs]
    if len(set(pairs)) == 1:
        multipliers, shifts = multipliers[:1], shifts[:1]
    low, high = _activation_clip(acc.activation, step, dtype)
    out = b.add_node(
        Op.REQUANTIZE,
        node.target,
        [acc.tensor],
        node.name,
        dtype,
        QuantInfo(step, 0),
        multiplier=multipliers,
        shift=shifts,
        clip_min=low,
        clip_max=high,
    )
    return Quantized(out)


def _lower_input(b: _Builder, node: fx.Node, input_shape: tuple[int, ...]) -> Quantized:
    quantizer: LsqQuantizer = b.gm.get_submodule(node.target)
    dtype = IntType(quantizer.signed, quantizer.bits)
    b.graph.tensors[node.name] = TensorInfo(
        node.name, dtype, (-1, *input_shape), QuantInfo(float(b.steps(quantizer)[0]), 0)
    )
    b.graph.inputs.append(node.name)
    return Quantized(node.name)


def _maxpool_args(b: _Builder, node: fx.Node) -> tuple:
    """(kernel, stride, padding, dilation, ceil_mode) of nn.MaxPool2d or F.max_pool2d."""
    if node.op == "call_module":
        pool = b.gm.get_submodule(node.target)
        return pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode
    names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
    defaults = dict(zip(names, (None, None, 0, 1, False), strict=True))
    given = dict(zip(names, node.args[1:], strict=False)) | {k: v for k, v in node.kwargs.items() if k in names}
    return tuple({**defaults, **given}[name] for name in names)


def _ceil_extra(size: int, kernel: int, stride: int, pad: int) -> int:
    """Extra bottom/right padding that gives torch's ceil_mode output size (0 when it adds no window)."""
    ceil_out = -(-(size + 2 * pad - kernel) // stride) + 1
    if (ceil_out - 1) * stride >= size + pad:  # torch: the last window must start inside the input or left pad
        ceil_out -= 1
    return max(0, (ceil_out - 1) * stride + kernel - (size + 2 * pad))


def _lower_maxpool(b: _Builder, node: fx.Node, x: Quantized) -> Quantized:
    info = b.graph.tensors[x.tensor]
    kernel, stride, padding, dilation, ceil_mode = _maxpool_args(b, node)
    if _pair(dilation) != [1, 1]:
        raise LoweringError(
            f"layer {describe(b.gm, node)}: max pool dilation={dilation}: the IR's maxpool has no dilation"
        )
    kernel, pad = _pair(kernel), _pair(padding)
    stride = kernel if stride in (None, ()) else _pair(stride)
    padding = [pad[0], pad[1], pad[0], pad[1]]
    if ceil_mode:  # the partial windows become bottom/right padding, which never wins a max
        for axis in (0, 1):
            padding[2 + axis] += _ceil_extra(info.shape[2 + axis], kernel[axis], stride[axis], pad[axis])
        if any(p > kernel[a % 2] // 2 for a, p in enumerate(padding)):
            raise LoweringError(
                f"layer {describe(b.gm, node)}: max pool ceil_mode=True needs padding {padding[2:]} at the "
                f"bottom/right, more than half the kernel {kernel}"
            )
    return Quantized(
        b.add_node(
            Op.MAXPOOL,
            node.name,
            [x.tensor],
            node.name,
            info.dtype,
            info.quant,
            kernel=kernel,
            stride=stride,
            padding=padding,
        )
    )


def _window_counts(size: int, kernel: int, stride: int, pad: int) -> set[int]:
    """How many input rows (or columns) each output window of an average pool covers (padding excluded)."""
    out = (size + 2 * pad - kernel) // stride + 1
    return {min(i * stride - pad + kernel, size) - max(i * stride - pad, 0) for i in range(out)}


def _check_average_count(b: _Builder, node: fx.Node, counts: set[int]) -> None:
    """Refuse averages whose count is even but not a power of two: a tie of the IR's exact rounding
    is then reached through a float division (or reciprocal) in torch and onnxruntime."""
    for count in sorted(counts):
        if count % 2 == 0 and count & (count - 1):
            raise LoweringError(
                f"layer {describe(b.gm, node)}: average pool over {count} values is not exact in float paths; "
                "use a power-of-two window"
            )


def _lower_pool(b: _Builder, node: fx.Node, kind: str, x: Quantized) -> Quantized:
    if kind == "maxpool":
        return _lower_maxpool(b, node, x)
    info = b.graph.tensors[x.tensor]
    pool = b.gm.get_submodule(node.target)
    if pool.kernel_size is None:
        return Quantized(b.add_node(Op.GLOBAL_AVGPOOL, node.name, [x.tensor], node.name, info.dtype, info.quant))
    kernel, pad = _pair(pool.kernel_size), _pair(pool.padding)
    stride = kernel if pool.stride in (None, ()) else _pair(pool.stride)
    if pool.count_include_pad:
        counts = {kernel[0] * kernel[1]}
    else:
        rows, cols = (_window_counts(info.shape[2 + a], kernel[a], stride[a], pad[a]) for a in (0, 1))
        counts = {r * c for r in rows for c in cols}
    _check_average_count(b, node, counts)
    return Quantized(
        b.add_node(
            Op.AVGPOOL,
            node.name,
            [x.tensor],
            node.name,
            info.dtype,
            info.quant,
            kernel=kernel,
            stride=stride,
            padding=[pad[0], pad[1], pad[0], pad[1]],
            count_include_pad=bool(pool.count_include_pad),
        )
    )


def _flatten_start(b: _Builder, node: fx.Node) -> int:
    if node.op == "call_module":
        module = b.gm.get_submodule(node.target)
        return module.start_dim if module.end_dim == -1 else -99
    start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
    end = node.kwargs.get("end_dim", node.args[2] if len(node.args) > 2 else -1)
    return start if end == -1 else -99


def lower(
    gm: fx.GraphModule,
    input_shape: tuple[int, ...],
    name: str = "model",
    max_acc_bits: int = DEFAULT_MAX_ACC_BITS,
    post_mac: str = "lut",
) -> Graph:
    """Lower ``gm`` (from ``prepare_qat``, trained) to a checked integer graph.

    ``post_mac`` picks how powers-of-sqrt(2) weights execute: ``lut`` (shift + look-up table,
    the paper's MAC) or ``split`` (two exact shift accumulators combined once per output).
    """
    if post_mac not in POST_MACS:
        raise LoweringError(f"post_mac={post_mac!r} (known: {', '.join(POST_MACS)})")
    b = _Builder(gm, name, max_acc_bits, post_mac)
    env: dict[fx.Node, object] = {}
    for node in gm.graph.nodes:
        kind = node_kind(gm, node)
        args = [env.get(a) for a in node.args if isinstance(a, fx.Node)]
        where = describe(gm, node)
        if kind == "placeholder":
            env[node] = "float"
        elif kind == "quant":
            source = args[0]
            if source == "float":
                env[node] = _lower_input(b, node, input_shape)
            elif isinstance(source, Accumulator):
                env[node] = _lower_requant(b, node, source)
            elif isinstance(source, Quantized):
                info = b.graph.tensors[source.tensor]
                env[node] = _lower_requant(
                    b,
                    node,
                    Accumulator(source.tensor, np.full(info.shape[1], float(info.quant.scale)), None, source.dynamic),
                )
            else:
                raise LoweringError(f"layer {where}: quantizer input cannot be lowered")
        elif kind in ("qconv", "qlinear"):
            if not isinstance(args[0], Quantized):
                raise LoweringError(f"layer {where}: its input is not a quantized tensor")
            env[node] = _lower_weighted(b, node, args[0])
        elif kind in ("relu", "relu6"):
            if isinstance(args[0], Accumulator) and args[0].activation is None:
                env[node] = Accumulator(args[0].tensor, args[0].scale, kind, args[0].dynamic)
            elif isinstance(args[0], Quantized):
                info = b.graph.tensors[args[0].tensor]
                low, high = _activation_clip(kind, float(info.quant.scale), info.dtype)
                env[node] = Quantized(
                    b.add_node(
                        Op.CLIP,
                        node.name,
                        [args[0].tensor],
                        node.name,
                        info.dtype,
                        info.quant,
                        clip_min=low,
                        clip_max=high,
                    ),
                    args[0].dynamic,
                )
            else:
                raise LoweringError(f"layer {where}: activation input cannot be lowered")
        elif kind == "add":
            if len(args) != 2 or not all(isinstance(a, Quantized) for a in args):
                raise LoweringError(f"layer {where}: both add operands must be quantized tensors")
            env[node] = _lower_add(b, node, args[0], args[1])
        elif kind in ("maxpool", "qavgpool"):
            if not isinstance(args[0], Quantized):
                raise LoweringError(f"layer {where}: pooling input is not a quantized tensor")
            env[node] = _lower_pool(b, node, kind, args[0])
            env[node].dynamic = args[0].dynamic
        elif kind == "flatten":
            if not isinstance(args[0], Quantized) or _flatten_start(b, node) != 1:
                raise LoweringError(f"layer {where}: only flatten(x, 1) of a quantized tensor is supported")
            info = b.graph.tensors[args[0].tensor]
            env[node] = Quantized(
                b.add_node(Op.FLATTEN, node.name, [args[0].tensor], node.name, info.dtype, info.quant),
                args[0].dynamic,
            )
        elif kind == "identity":
            env[node] = args[0]
        elif kind == "output":
            result = args[0]
            if not isinstance(result, Quantized) or result.dynamic is not None:
                raise LoweringError("model output is not quantized on a static grid (add an output quantizer)")
            b.graph.outputs.append(result.tensor)
        else:
            raise LoweringError(f"layer {where}: unsupported operation for integer lowering")
    graph = infer_accumulator_bits(b.graph, max_acc_bits)
    return check_graph(graph)
