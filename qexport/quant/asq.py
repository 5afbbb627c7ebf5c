"""ASQ (seed 002, section 3.2): activation step sizes scaled per input by a small adapter.

``q = clamp(round(x / (s * beta[n])), qmin, qmax) * s * beta[n]``: ``s`` is learned as in LSQ,
``beta[n] = B[n] / 2**F`` comes from an adapter (per-channel spatial mean of ``x`` -> Linear(C, h) -> ReLU ->
Linear(h, 1), ``beta = clamp(1 + out, beta_min, beta_max)``, last layer zero-initialised so beta == 1 at
init). The adapter is fake-quantized exactly as the integer IR computes it (``docs/methods/asq.md``):
uint8 features ``clamp(round(x / s_f))`` averaged with round half to even, int8 weights with per-tensor
power-of-two steps, int32 biases, a uint8 hidden layer and the fixed-point ``B``; all of its steps are powers
of two, so torch (in float64) and the IR agree on ``B`` bit for bit.

``python -m qexport.quant.asq --table1`` prints the adapter overhead table (the paper's Table 1).
"""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from qexport.quant.base import ActivationQuantizer
from qexport.quant.lsq import mse_scale
from qexport.quant.ste import grad_scale, round_ste

if TYPE_CHECKING:
    from torch import fx

    from qexport.frontend.lower import Accumulator, Quantized, _Builder
    from qexport.ir.graph import Graph
    from qexport.quant.config import QuantConfig

FEATURE_LEVELS = {False: (0, 255), True: (-128, 127)}  # the adapter's input features: uint8 (or int8 if signed)
HIDDEN_MAX = 255  # uint8 hidden layer (after its ReLU)
WEIGHT_MIN, WEIGHT_MAX = -128, 127  # int8 adapter weights
MIN_WEIGHT_EXPONENT = -14  # adapter weight steps are at least 2**-14 (keeps the biases' units inside int32)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
BETA_SUFFIX = ".adapter.beta"  # IR name of a quantizer's fixed-point B tensor: <quantizer node>.adapter.beta


def pow2_exponent(peak: float, levels: int, floor: int | None = None) -> int:
    """The exponent of the smallest power of two step that covers ``peak`` with ``levels`` steps."""
    exponent = math.ceil(math.log2(peak / levels)) if peak > 0 else 0
    return exponent if floor is None else max(exponent, floor)


def weight_exponent(w: torch.Tensor) -> int:
    """Per-tensor power-of-two step of an int8 adapter weight (a function of its current values)."""
    return pow2_exponent(float(w.detach().abs().max()), WEIGHT_MAX, MIN_WEIGHT_EXPONENT)


def fake_weight(w: torch.Tensor) -> torch.Tensor:
    """int8 fake-quantized weight in float64 (straight-through gradient)."""
    step = 2.0 ** weight_exponent(w)
    return torch.clamp(round_ste(w.double() / step), WEIGHT_MIN, WEIGHT_MAX) * step


def fake_bias(b: torch.Tensor, unit: float) -> torch.Tensor:
    return torch.clamp(round_ste(b.double() / unit), INT32_MIN, INT32_MAX) * unit


class AsqActQuant(ActivationQuantizer):
    """Adaptive step size activation quantizer (per-tensor ``s``, per-sample ``beta``)."""

    def __init__(
        self,
        bits: int,
        signed: bool,
        pow2: bool = False,
        hidden: int = 4,
        frac_bits: int = 8,
        beta_min: float = 0.25,
        beta_max: float = 4.0,
    ):
        super().__init__()
        self.bits, self.signed, self.pow2 = bits, signed, pow2
        self.qmin = -(1 << (bits - 1)) if signed else 0
        self.qmax = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
        self.frac_bits = frac_bits
        self.b_min, self.b_max = math.ceil(beta_min * 2**frac_bits), math.floor(beta_max * 2**frac_bits)
        if not 0 < self.b_min <= 1 << frac_bits <= self.b_max:
            raise ValueError(f"ASQ: need 0 < beta_min <= 1 <= beta_max (got {beta_min}, {beta_max})")
        self.step_param = nn.Parameter(torch.zeros(1) if pow2 else torch.ones(1))
        self.fc1 = nn.LazyLinear(hidden)  # C is unknown until the first batch; lazy modules load from a state dict
        self.fc2 = nn.Linear(hidden, 1)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("feature_exponent", torch.tensor(0.0))  # adapter input step 2**e
        self.register_buffer("hidden_exponent", torch.tensor(0.0))  # adapter hidden step 2**e
        self._beta: torch.Tensor | None = None
        self._b: torch.Tensor | None = None

    def extra_repr(self) -> str:
        kind = "INT" if self.signed else "UINT"
        return f"{kind}{self.bits}, pow2={self.pow2}, F={self.frac_bits}, B in [{self.b_min}, {self.b_max}]"

    # --- steps ---------------------------------------------------------------------------------------
    def step(self) -> torch.Tensor:
        """The base step ``s`` (one float32 value); the sample's step is ``s * beta[n]``."""
        if self.pow2:
            return torch.exp2(round_ste(self.step_param))
        return self.step_param.abs().clamp_min(1e-10)

    def feature_step(self) -> float:
        return 2.0 ** int(self.feature_exponent)

    def hidden_step(self) -> float:
        return 2.0 ** int(self.hidden_exponent)

    def sample_factor(self) -> torch.Tensor | None:
        """beta of the last batch ([N], float32, with gradient): consumers scale biases and pool grids by it."""
        return self._beta

    def beta_integers(self) -> np.ndarray | None:
        """B = beta * 2**F of the last batch (what the IR tensor ``<node>.adapter.beta`` holds)."""
        return None if self._b is None else self._b.detach().to(torch.int64).numpy()

    # --- adapter ---------------------------------------------------------------------------------------
    def _grow(self, buffer: torch.Tensor, peak: torch.Tensor, levels: int) -> None:
        """Widen a power-of-two step when a training batch would clip (steps never shrink)."""
        if float(peak) > 0:
            buffer.fill_(max(float(buffer), pow2_exponent(float(peak), levels)))

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel mean of the quantized input as integers [N, C] (float64), mean rounded half to even."""
        low, high = FEATURE_LEVELS[self.signed]
        if self.training:
            self._grow(self.feature_exponent, x.detach().abs().max(), high)
        features = torch.clamp(round_ste(x.double() / self.feature_step()), low, high)
        if features.dim() == 2:
            return features
        count = features.shape[2] * features.shape[3]
        return round_ste(features.sum(dim=(2, 3)) / count)  # float64: exact for any realistic count

    def _hidden_acc(self, g: torch.Tensor) -> torch.Tensor:
        if isinstance(self.fc1, nn.LazyLinear) and self.fc1.has_uninitialized_params():
            self.fc1(g.float())  # materialise the weights (C known now)
        unit = self.feature_step() * 2.0 ** weight_exponent(self.fc1.weight)
        return (g * self.feature_step()) @ fake_weight(self.fc1.weight).T + fake_bias(self.fc1.bias, unit)

    def adapter(self, x: torch.Tensor) -> torch.Tensor:
        """Fixed-point B[n] = clamp(round((1 + out) * 2**F), B_min, B_max) as float64 (gradient to the adapter)."""
        hidden_acc = self._hidden_acc(self._features(x))
        if self.training:
            self._grow(self.hidden_exponent, hidden_acc.detach().max(), HIDDEN_MAX)
        h = torch.clamp(round_ste(hidden_acc / self.hidden_step()), 0, HIDDEN_MAX) * self.hidden_step()
        unit = self.hidden_step() * 2.0 ** weight_exponent(self.fc2.weight)
        out = h @ fake_weight(self.fc2.weight).T + fake_bias(self.fc2.bias, unit)
        return torch.clamp(round_ste((1.0 + out.reshape(-1)) * 2.0**self.frac_bits), self.b_min, self.b_max)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        step = mse_scale(x, self.qmin, self.qmax, None)
        self.step_param.copy_(torch.log2(step) if self.pow2 else step)
        high = FEATURE_LEVELS[self.signed][1]
        self.feature_exponent.fill_(pow2_exponent(float(x.abs().max()), high))
        hidden_acc = self._hidden_acc(self._features(x))
        self.hidden_exponent.fill_(pow2_exponent(float(hidden_acc.max()), HIDDEN_MAX))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self.initialize(x)
        b = self.adapter(x)
        beta = b / 2.0**self.frac_bits
        shape = (-1,) + (1,) * (x.dim() - 1)
        s = grad_scale(self.step(), 1.0 / math.sqrt(x.numel() * self.qmax)).double()
        step = s * beta.reshape(shape)
        q = torch.clamp(round_ste(x.double() / step), self.qmin, self.qmax)
        self._beta, self._b = beta.float(), b.detach()
        return (q * step).float()

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state["_beta"] = state["_b"] = None  # the last batch's tensors are not part of the model (deepcopy-safe)
        return state

    def lower_requant(self, b: _Builder, node: fx.Node, acc: Accumulator) -> Quantized:
        """The integer form: the adapter as IR nodes and a per-sample requantization (``lower_asq``)."""
        from qexport.frontend.lower_asq import lower_asq_requant

        return lower_asq_requant(b, node, acc, self)


def make_act_quantizer(bits: int, signed: bool, config: QuantConfig) -> AsqActQuant:
    return AsqActQuant(
        bits,
        signed,
        pow2=config.pow2_scales,
        hidden=int(config.option("asq_hidden", 4)),
        frac_bits=int(config.option("asq_frac_bits", 8)),
        beta_min=float(config.option("asq_beta_min", 0.25)),
        beta_max=float(config.option("asq_beta_max", 4.0)),
    )


# --- the paper's Table 1: extra parameters and compute of the adapters ------------------------------------
# Parameters: conv/linear weights (Eq. 10-11). Operations (Eq. 12-13): a conv's multiplications (its MACs),
# a linear layer's multiplications and additions (2 x its MACs).


def _module_counts(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(adapter weights, adapter ops, layer weights, layer ops) per image, from one forward pass."""
    from qexport.quant.modules import QConv2d, QLinear

    counts = [0, 0, 0, 0]

    def hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        if isinstance(module, AsqActQuant):
            size = module.fc1.weight.numel() + module.fc2.weight.numel()
            counts[0] += size
            counts[1] += 2 * size
        else:
            counts[2] += module.weight.numel()
            counts[3] += output[0].numel() * module.weight[0].numel() * (2 if isinstance(module, QLinear) else 1)

    kinds = (AsqActQuant, QConv2d, QLinear)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
    return tuple(counts)


def _graph_counts(graph: Graph) -> tuple[int, int, int, int]:
    counts = [0, 0, 0, 0]
    for node in graph.nodes:
        if "weight" not in node.attrs:
            continue
        weight = graph.weights[node.attrs["weight"]]
        size = int(np.prod(weight.shape))
        macs = int(np.prod(graph.tensors[node.outputs[0]].shape[1:])) * size // weight.shape[0]
        index = 0 if ".adapter." in node.name else 2
        counts[index] += size
        counts[index + 1] += macs * (2 if node.op.value == "linear" else 1)
    return tuple(counts)


def overhead_counts(
    model_or_graph: nn.Module | Graph, input_shape: tuple[int, ...] | None = None
) -> tuple[int, int, int, int]:
    """(adapter weights, adapter ops, layer weights, layer ops) per image of an IR graph or a prepared model
    (which needs ``input_shape``: one forward pass measures the operations)."""
    if not isinstance(model_or_graph, nn.Module):
        return _graph_counts(model_or_graph)
    if input_shape is None:
        raise ValueError("asq_overhead: a torch model needs input_shape")
    return _module_counts(model_or_graph, input_shape)


def overhead_percent(counts: tuple[int, int, int, int], bits: int, adapter_bits: int = 32) -> tuple[float, float]:
    """Storage is parameters x bits (Eq. 14); compute is operations x bits / 32 (Eq. 15-16, our reading)."""
    adapter, adapter_ops, weights, ops = counts
    return 100.0 * adapter * adapter_bits / (weights * bits), 100.0 * adapter_ops * adapter_bits / (ops * bits)


def asq_overhead(
    model_or_graph: nn.Module | Graph, bits: int, adapter_bits: int = 32, input_shape: tuple[int, ...] | None = None
) -> tuple[float, float]:
    """(extra parameter storage %, extra compute %) of the ASQ adapters (Table 1 of the paper): every layer at
    ``bits``, the adapters at ``adapter_bits`` (32: the paper's float adapter; 8: our int8 adapter)."""
    return overhead_percent(overhead_counts(model_or_graph, input_shape), bits, adapter_bits)


PAPER_TABLE1 = {8: (2.67, 0.04), 4: (5.34, 0.07), 3: (7.11, 0.10), 2: (10.67, 0.14)}


def table1(hidden: tuple[int, ...] = (4, 20), seed: int = 0) -> str:
    """The Table 1 reproduction on the zoo's ImageNet ResNet-18 (markdown), for adapter widths ``hidden``."""
    from qexport.frontend.prepare import prepare_qat
    from qexport.quant.config import QuantConfig
    from qexport.zoo import build

    torch.manual_seed(seed)
    float_model = build("resnet18")
    shape = float_model.input_shape
    header = "| bits | paper param % | paper compute % |"
    rule = "|---|---|---|"
    lines, columns = [], []
    for width in hidden:
        model = prepare_qat(float_model, QuantConfig(act_method="asq", options={"asq_hidden": width}))
        model.train()
        with torch.no_grad():
            model(torch.randn(1, *shape))  # calibration: materialises the adapters
        counts = overhead_counts(model, shape)
        columns.append(counts)
        header += f" h={width}, fp32: param % | compute % | h={width}, int8: param % | compute % |"
        rule += "---|---|---|---|"
        lines.append(
            f"h = {width}: {counts[0]:,} adapter weights next to {counts[2]:,} layer weights; "
            f"{counts[1]:,} adapter ops next to {counts[3]:,} layer ops per image."
        )
    lines += ["", header, rule]
    for bits, (paper_params, paper_compute) in PAPER_TABLE1.items():
        row = f"| {bits} | {paper_params:.2f} | {paper_compute:.2f} |"
        for counts in columns:
            for adapter_bits in (32, 8):
                params, compute = overhead_percent(counts, bits, adapter_bits)
                row += f" {params:.2f} | {compute:.3f} |"
        lines.append(row)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ASQ adapter overhead (the paper's Table 1)")
    parser.add_argument("--table1", action="store_true", help="print Table 1 for the zoo's ResNet-18")
    parser.add_argument("--hidden", type=int, nargs="+", default=[4, 20], help="adapter hidden widths h")
    args = parser.parse_args(argv)
    if args.table1:
        print(table1(tuple(args.hidden)))
    else:
        parser.print_help()


if __name__ == "__main__":  # run the package module, not this __main__ copy (one AsqActQuant class)
    from qexport.quant import asq

    asq.main()
