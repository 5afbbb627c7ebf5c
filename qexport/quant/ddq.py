"""DDQ (seed 001): differentiable dynamic quantization, learned bit width, range and step per layer.

Every quantizer owns a uniform grid at ``max_bits`` with a learned step ``s_M`` (LSQ-style, a power of
two with ``pow2_scales``). A ``b``-bit quantizer uses the subset of that grid with step
``s_b = s_M * 2**(max_bits - b)``. The bit width is ``min_bits`` plus the number of leading open gates
``h_k = [theta_k > 0]``, ``k = min_bits+1 .. max_bits`` (nested bit groups). The forward pass is always
the hard quantizer at the chosen bits (train and eval alike); gate ``k`` receives the gradient of
``sum_k g_k * (Q_k - Q_{k-1})`` (straight-through with a sigmoid surrogate), and the budget penalty
uses the soft distribution ``P(bits >= k) = prod_{j<=k} sigmoid(theta_j)``. Weights also learn a
per-channel clipping range ``alpha`` (clamp to +-alpha before rounding). See docs/methods/ddq.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from qexport.errors import QExportError
from qexport.ir.dtypes import INT32, IntType
from qexport.ir.graph import Graph, Node, QuantInfo, TensorInfo, Weight
from qexport.ir.ops import Op
from qexport.passes.infer_accumulator_bits import infer_accumulator_bits
from qexport.quant.base import ActivationQuantizer
from qexport.quant.lsq import LsqQuantizer, int_affine_weight, mse_scale
from qexport.quant.ste import grad_scale, round_ste
from qexport.training import Log, calibrate, train

if TYPE_CHECKING:
    from qexport.quant.config import QuantConfig

LADDER = 1.0  # initial logits: theta_k = LADDER * (bits + 0.5 - k), so gates close one at a time
KINDS = ("size", "latency", "energy")


class _GateSTE(torch.autograd.Function):
    """Forward: the hard gate [theta > 0]; backward: the sigmoid's derivative."""

    @staticmethod
    def forward(ctx, theta: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(theta)
        return (theta > 0).to(theta.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (theta,) = ctx.saved_tensors
        sig = torch.sigmoid(theta)
        return grad * sig * (1 - sig)


class _GateGrad(torch.autograd.Function):
    """Identity on ``out``; gate ``k`` receives sum(grad * diffs[k]), the change adding bit ``k`` makes."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, gates: torch.Tensor, diffs: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(diffs)
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (diffs,) = ctx.saved_tensors
        return grad, (diffs * grad).flatten(1).sum(1), None


def signed_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


class DdqBits(nn.Module):
    """The learned bit width: nested gates over ``min_bits .. max_bits`` and a max-precision step."""

    signed: bool

    def __init__(self, bits: int, channels: int, config: QuantConfig):
        super().__init__()
        self.min_bits = int(config.option("ddq_min_bits", 2))
        self.max_bits = int(config.option("ddq_max_bits", 8))
        if not 2 <= self.min_bits <= bits <= self.max_bits <= 16:
            raise QExportError(
                f"ddq: bits {bits}, ddq_min_bits {self.min_bits}, ddq_max_bits {self.max_bits}: "
                "need 2 <= min <= bits <= max <= 16"
            )
        self.gate_scale = float(config.option("ddq_gate_scale", 20.0))  # logits = scale * param: a gate LR factor
        if not self.gate_scale > 0:
            raise QExportError(f"ddq: ddq_gate_scale must be positive, not {self.gate_scale}")
        self.pow2 = bool(config.pow2_scales)
        self.gate_param = nn.Parameter(torch.zeros(self.max_bits - self.min_bits))
        self.step_param = nn.Parameter(torch.zeros(channels) if self.pow2 else torch.ones(channels))  # s_M
        self.register_buffer("initialized", torch.tensor(False))
        self.set_bits(bits)

    def candidates(self) -> list[int]:
        return list(range(self.min_bits, self.max_bits + 1))

    def logits(self) -> torch.Tensor:
        return self.gate_param * self.gate_scale

    @torch.no_grad()
    def set_bits(self, bits: int) -> None:
        """Place the gate logits on a ladder around ``bits`` (the hard choice becomes ``bits``)."""
        if not self.min_bits <= bits <= self.max_bits:
            raise QExportError(f"ddq: bits {bits} outside {self.min_bits}..{self.max_bits}")
        k = torch.arange(self.min_bits + 1, self.max_bits + 1, dtype=torch.float32)
        self.gate_param.copy_(LADDER * (bits + 0.5 - k) / self.gate_scale)

    @property
    def bits(self) -> int:
        """The current hard choice: min_bits + the number of leading open gates."""
        return self.min_bits + int(torch.cumprod((self.gate_param.detach() > 0).to(torch.int64), 0).sum())

    @property
    def qmin(self) -> int:
        return signed_range(self.bits, self.signed)[0]

    @property
    def qmax(self) -> int:
        return signed_range(self.bits, self.signed)[1]

    def bit_probs(self) -> torch.Tensor:
        """Soft distribution over ``candidates()``: P(bits >= k) = prod_{j <= k} sigmoid(theta_j)."""
        at_least = torch.cat([torch.ones(1), torch.cumprod(torch.sigmoid(self.logits()), 0), torch.zeros(1)])
        return at_least[:-1] - at_least[1:]

    def hard_gates(self) -> torch.Tensor:
        """g_k = prod_{j <= k} [theta_j > 0] (exactly 0/1), with surrogate gradients to the logits."""
        open_ = _GateSTE.apply(self.logits())
        gates, product = [], torch.ones(())
        for index in range(open_.numel()):
            product = product * open_[index]
            gates.append(product)
        return torch.stack(gates)

    def max_step(self) -> torch.Tensor:
        """s_M, the step of the max-precision grid (float32, one per channel)."""
        if self.pow2:
            return torch.exp2(round_ste(self.step_param))
        return self.step_param.abs().clamp_min(1e-10)

    def step(self) -> torch.Tensor:
        """The step at the chosen bits: s_M * 2**(max_bits - bits) (exact: a power-of-two factor)."""
        return self.max_step() * 2.0 ** (self.max_bits - self.bits)

    @torch.no_grad()
    def _init_step(self, x: torch.Tensor, channel_dim: int | None) -> torch.Tensor:
        """LSQ's MSE initialisation at the current bits; returns the resulting step (per channel)."""
        step = mse_scale(x, self.qmin, self.qmax, channel_dim) * 2.0 ** -(self.max_bits - self.bits)
        self.step_param.copy_(torch.log2(step) if self.pow2 else step)
        self.initialized.fill_(True)
        return self.step()

    def _quantize(self, x: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
        qmin, qmax = signed_range(bits, self.signed)
        return torch.clamp(round_ste(x / step), qmin, qmax) * step

    def _with_gate_grad(self, out: torch.Tensor, x: torch.Tensor, shape: list[int]) -> torch.Tensor:
        """Attach the gate gradient: d out / d g_k = Q_k(x) - Q_{k-1}(x) (forward value unchanged).

        g_k = prod_{j <= k} h_j has a nonzero derivative only while at most one of h_1..h_k is closed,
        so the differences are computed up to the gate before the second closed one.
        """
        if not (
            self.training and torch.is_grad_enabled() and self.gate_param.requires_grad and self.gate_param.numel()
        ):
            return out
        closed = (self.gate_param.detach() <= 0).to(torch.int64)
        used = int((torch.cumsum(closed, 0) <= 1).sum())  # gates 1..used can receive a gradient
        with torch.no_grad():
            s_max = self.max_step().reshape(shape)
            bits = self.candidates()[: used + 1]
            levels = [self._quantize(x, s_max * 2.0 ** (self.max_bits - b), b) for b in bits]
            diffs = torch.stack([high - low for low, high in zip(levels[:-1], levels[1:], strict=True)])
        return _GateGrad.apply(out, self.hard_gates()[:used], diffs)


class DdqWeightQuantizer(DdqBits):
    """Signed, symmetric, per output channel: clamp(round(clamp(w, -alpha, alpha) / s_b), qmin, qmax) * s_b."""

    signed = True

    def __init__(self, bits: int, channels: int, config: QuantConfig):
        super().__init__(bits, channels, config)
        self.range_param = nn.Parameter(torch.ones(channels))  # alpha, the learned clipping range

    def extra_repr(self) -> str:
        return f"DDQ INT{self.bits} in {self.min_bits}..{self.max_bits}, channels={self.step_param.numel()}"

    @staticmethod
    def _shape(w: torch.Tensor) -> list[int]:
        return [-1] + [1] * (w.dim() - 1)

    @torch.no_grad()
    def initialize(self, w: torch.Tensor) -> None:
        """MSE step at the initial bits; alpha = that quantizer's range (no clipping at first)."""
        self.range_param.copy_(self._init_step(w, 0) * self.qmax)

    def alpha(self) -> torch.Tensor:
        return self.range_param.abs().clamp_min(1e-10)

    def _clip(self, w: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.maximum(w, -alpha), alpha)

    def integers(self, w: torch.Tensor) -> torch.Tensor:
        """The integers the forward pass uses (no gradient)."""
        with torch.no_grad():
            shape = self._shape(w)
            clipped = self._clip(w, self.alpha().reshape(shape))
            return torch.clamp(torch.round(clipped / self.step().reshape(shape)), self.qmin, self.qmax)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self.initialize(w)
        shape, bits = self._shape(w), self.bits
        per_channel = w.numel() / self.step_param.numel()
        step = grad_scale(self.step().reshape(shape), 1.0 / math.sqrt(per_channel * self.qmax))
        alpha = grad_scale(self.alpha().reshape(shape), 1.0 / math.sqrt(per_channel))
        clipped = self._clip(w, alpha)
        out = self._quantize(clipped, step, bits)
        return self._with_gate_grad(out, clipped.detach(), shape)

    def to_ir_weight(self, name: str, w: torch.Tensor) -> Weight:
        """``int_affine`` at the chosen bits, symmetric, per-channel steps (as LsqQuantizer.to_ir_weight)."""
        return int_affine_weight(name, self.integers(w), self.step(), self.bits)


class DdqActQuantizer(DdqBits, ActivationQuantizer):
    """Per tensor: clamp(round(x / s_b), qmin, qmax) * s_b; the range is s_b * qmax (the IR clips at the dtype)."""

    def __init__(self, bits: int, signed: bool, config: QuantConfig):
        super().__init__(bits, 1, config)
        self.signed = signed

    def extra_repr(self) -> str:
        return f"DDQ {'' if self.signed else 'U'}INT{self.bits} in {self.min_bits}..{self.max_bits}"

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        self._init_step(x, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self.initialize(x)
        bits, shape = self.bits, [1] * x.dim()
        step = grad_scale(self.step().reshape(shape), 1.0 / math.sqrt(x.numel() * self.qmax))
        out = self._quantize(x, step, bits)
        return self._with_gate_grad(out, x.detach(), shape)


def make_weight_quantizer(bits: int, channels: int, config: QuantConfig) -> DdqWeightQuantizer:
    """Always per output channel."""
    return DdqWeightQuantizer(bits, channels, config)


def make_act_quantizer(bits: int, signed: bool, config: QuantConfig) -> DdqActQuantizer:
    return DdqActQuantizer(bits, signed, config)


# ---------------------------------------------------------------- model level: bits, costs, budget, training


def bit_widths(model: nn.Module) -> dict[str, int]:
    """The chosen bits of every quantizer (DDQ and fixed LSQ ones), by module name, in model order."""
    return {name: int(m.bits) for name, m in model.named_modules() if isinstance(m, (DdqBits, LsqQuantizer))}


def _weighted_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    from qexport.quant.modules import QConv2d, QLinear

    for name, module in model.named_modules():
        if isinstance(module, (QConv2d, QLinear)):
            yield name, module


def _probs(quantizer: nn.Module, hard: bool) -> torch.Tensor:
    """Distribution over the quantizer's candidate bits (one-hot at the hard choice if ``hard``)."""
    if not isinstance(quantizer, DdqBits):
        return torch.ones(1, dtype=torch.float64)
    if hard:
        return torch.nn.functional.one_hot(
            torch.tensor(quantizer.bits - quantizer.min_bits), len(quantizer.candidates())
        ).double()
    return quantizer.bit_probs().double()


def _candidates(quantizer: nn.Module) -> list[int]:
    return quantizer.candidates() if isinstance(quantizer, DdqBits) else [int(quantizer.bits)]


def _pair(value) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)] * 2


def _layer_graph(layer: nn.Module, x_shape: tuple, out_shape: tuple, x_type: IntType, w_bits: int) -> Graph:
    """A one-node IR graph of ``layer`` at the given operand types (worst-case weights: all qmin)."""
    shape, rows = tuple(layer.weight.shape), layer.weight.shape[0]
    unit = [1.0] * rows
    weights = {
        "w": Weight(
            "w",
            "int_affine",
            shape,
            {"values": np.full(shape, -(1 << (w_bits - 1)), dtype=np.int64)},
            {"dtype": f"INT{w_bits}", "scale": unit, "zero_point": 0, "axis": 0},
        )
    }
    attrs: dict = {"weight": "w", "bias": None}
    if layer.bias is not None:
        weights["b"] = Weight(
            "b", "int_affine", (rows,), {"values": np.zeros(rows, np.int64)}, {"dtype": "INT32", "scale": unit}
        )
        attrs["bias"] = "b"
    if isinstance(layer, nn.Conv2d):
        pad = _pair(layer.padding)
        op = Op.CONV2D
        attrs.update(
            stride=_pair(layer.stride),
            padding=[pad[0], pad[1], pad[0], pad[1]],
            dilation=_pair(layer.dilation),
            groups=int(layer.groups),
        )
    else:
        op = Op.LINEAR
    tensors = {
        "x": TensorInfo("x", x_type, (-1, *x_shape[1:]), QuantInfo(1.0)),
        "acc": TensorInfo("acc", INT32, (-1, *out_shape[1:]), QuantInfo(unit, 0, 1)),
    }
    graph = Graph("ddq_cost", ["x"], ["acc"], tensors, [Node(op, "layer", ["x"], ["acc"], attrs)], weights)
    return infer_accumulator_bits(graph)


def ddq_cost_table(model: nn.Module, input_shape: tuple[int, ...], target: str = "fpga") -> dict[str, torch.Tensor]:
    """hwsim's per-layer cost of every weighted layer at every candidate (input bits, weight bits).

    Returns {layer name: tensor [n_x, n_w, 2]} of (cycles, energy pJ) from ``hwsim.cost.model.estimate``
    on a one-layer graph (batch 1); cached on the model for ``ddq_penalty``. The model must be calibrated.
    """
    from hwsim.cost.model import estimate
    from hwsim.cost.targets import hardware_of
    from qexport.targets import load_target

    if not all(bool(buf) for name, buf in model.named_buffers() if name.endswith("initialized")):
        raise QExportError("ddq_cost_table: calibrate the model first (uninitialised quantizers)")
    hw = hardware_of(load_target(target))
    shapes: dict[str, tuple] = {}
    layers = dict(_weighted_layers(model))
    hooks = [
        layer.register_forward_hook(
            lambda m, i, o, name=name: shapes.__setitem__(name, (tuple(i[0].shape), tuple(o.shape)))
        )
        for name, layer in layers.items()
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    tables = {}
    for name, layer in layers.items():
        x_quant, x_shape, out_shape = layer.input_quant, *shapes[name]
        table = torch.zeros(len(_candidates(x_quant)), len(_candidates(layer.weight_quant)), 2, dtype=torch.float64)
        for i, x_bits in enumerate(_candidates(x_quant)):
            for j, w_bits in enumerate(_candidates(layer.weight_quant)):
                graph = _layer_graph(layer, x_shape, out_shape, IntType(bool(x_quant.signed), x_bits), w_bits)
                cost = estimate(graph, hw).costs[0]
                table[i, j, 0], table[i, j, 1] = cost.cycles, cost.energy_total_pj
        tables[name] = table
    model.__dict__.setdefault("_ddq_cost_tables", {})[target] = tables
    return tables


def ddq_cost(model: nn.Module, kind: str = "size", target: str = "fpga", hard: bool = False) -> torch.Tensor:
    """Expected cost under the soft bit distributions (``hard``: at the chosen bits) of all weighted layers.

    size: weight bytes (params * bits / 8); latency: hwsim cycles; energy: hwsim pJ (batch 1).
    """
    if kind not in KINDS:
        raise QExportError(f"ddq: kind={kind!r} (known: {', '.join(KINDS)})")
    total = torch.zeros((), dtype=torch.float64)
    tables = model.__dict__.get("_ddq_cost_tables", {}).get(target) if kind != "size" else None
    if kind != "size" and tables is None:
        raise QExportError(f"ddq: no {target!r} cost table; call ddq_cost_table(model, input_shape, {target!r})")
    for name, layer in _weighted_layers(model):
        w_probs = _probs(layer.weight_quant, hard)
        if kind == "size":
            bits = torch.tensor(_candidates(layer.weight_quant), dtype=torch.float64)
            total = total + layer.weight.numel() * (w_probs * bits).sum() / 8
        else:
            table = tables[name][..., 0 if kind == "latency" else 1]
            total = total + _probs(layer.input_quant, hard) @ table @ w_probs
    return total


def ddq_penalty(
    model: nn.Module, budget: float, kind: str = "size", target: str = "fpga", strength: float = 1.0
) -> torch.Tensor:
    """strength * relu(expected cost / budget - 1): pushes the expected cost to at most ``budget``."""
    return strength * torch.relu(ddq_cost(model, kind, target) / float(budget) - 1).float()


def train_ddq(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    lr: float,
    seed: int,
    budget: float | None = None,
    kind: str = "size",
    target: str = "fpga",
    log: Log | None = None,
    strength: float = 1.0,
) -> nn.Module:
    """QAT of a prepared DDQ model with the budget penalty; ``budget=None``: the initial expected cost."""
    if not all(bool(buf) for name, buf in model.named_buffers() if name.endswith("initialized")):
        calibrate(model, x[:256])
    if kind in ("latency", "energy"):
        ddq_cost_table(model, tuple(x.shape[1:]), target)
    if budget is None:
        budget = float(ddq_cost(model, kind, target).detach())
    if log:
        log(f"ddq: {kind} budget {budget:.6g}, chosen bits cost {float(ddq_cost(model, kind, target, hard=True)):.6g}")

    def on_epoch(epoch: int, m: nn.Module) -> None:
        if log:
            log(f"ddq epoch {epoch}: bits {bit_widths(m)}")

    model = train(
        model,
        x,
        y,
        epochs,
        lr,
        seed,
        log=log,
        extra_loss=lambda m: ddq_penalty(m, budget, kind, target, strength),
        on_epoch=on_epoch,
    )
    if log:
        log(f"ddq: final bits {bit_widths(model)}, {kind} {float(ddq_cost(model, kind, target, hard=True)):.6g}")
    return model
