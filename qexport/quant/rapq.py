"""Power-of-two post-training quantization: RAPQ (seed 004) and the round-to-nearest (RTN) baseline.

Both return a ``prepare_qat`` model (plain LSQ quantizers, ``pow2_scales=True``) whose log2 steps are
integers and whose weights lie on their quantizer's grid. RAPQ (docs/methods/rapq.md):

1. initial exponents: the nearest power of two of each quantizer's MSE step (= RTN);
2. network-wide balancing: coordinate descent over all exponents (activation quantizers; weight
   quantizers per channel and per layer) in {e-1, e, e+1}, each move judged on one objective of the
   whole network (the relative errors of every layer output and of the network output against the
   float model on the calibration batch), repeated until no move helps;
3. BN-based reconstruction, layer by layer: AdaRound up/down choices on the fixed grid minimising
   ||y_q - y_f||^2 / ||y_f||^2 + lambda_bn * BN-statistics error + lambda_r * rounding regulariser
   (kept only if the whole-network objective improves on the balanced round-to-nearest model);
4. a last balancing pass over the activation exponents (weights are fixed integers by then).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from qexport.errors import QExportError
from qexport.frontend.patterns import ACTIVATIONS, node_kind
from qexport.frontend.prepare import prepare_qat
from qexport.quant.config import QuantConfig
from qexport.quant.lsq import LsqQuantizer
from qexport.training import calibrate

Log = Callable[[str], None]
ZETA, GAMMA = 1.1, -0.1  # AdaRound's rectified sigmoid stretch


@dataclass
class Layer:
    """A quantized conv/linear of the prepared model, its activation and the float node that matches it."""

    target: str
    module: nn.Module
    activation: str | None  # "relu" / "relu6" applied right after it, if any
    bn: tuple[torch.Tensor, torch.Tensor] | None  # (mean, std) of its output under the folded BN's statistics


@dataclass
class Reconstruction:
    integers: torch.Tensor  # the chosen weight integers
    loss_before: float  # block loss with round-to-nearest weights
    loss_after: float  # block loss with the learned rounding


def _as_tensor(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, torch.Tensor) else x.float()


def _check(config: QuantConfig) -> None:
    if not config.pow2_scales or config.weight_method != "lsq" or config.act_method != "lsq":
        raise QExportError("power-of-two PTQ needs pow2_scales=True and the lsq weight and activation methods")


def quantizers(gm: fx.GraphModule) -> list[LsqQuantizer]:
    """Every quantizer in graph order: activation quantizers and each layer's weight quantizer."""
    found: list[LsqQuantizer] = []
    for node in gm.graph.nodes:
        kind = node_kind(gm, node)
        if kind == "quant":
            found.append(gm.get_submodule(node.target))
        elif kind in ("qconv", "qlinear"):
            found.append(gm.get_submodule(node.target).weight_quant)
    return found


def _float_reference(float_model: nn.Module) -> tuple[fx.GraphModule, dict[str, str]]:
    """The traced float model and, for each conv/linear target, the module whose output the folded layer
    reproduces (its batch norm, if one follows)."""
    gm = fx.symbolic_trace(copy.deepcopy(float_model).eval())
    outputs: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node_kind(gm, node) in ("conv", "linear"):
            users = list(node.users)
            bn = len(users) == 1 and node_kind(gm, users[0]) == "bn"
            outputs[node.target] = users[0].target if bn else node.target
    return gm.eval(), outputs


def _layers(gm: fx.GraphModule, float_gm: fx.GraphModule, outputs: dict[str, str]) -> list[Layer]:
    layers = []
    for node in gm.graph.nodes:
        if node_kind(gm, node) not in ("qconv", "qlinear"):
            continue
        users = list(node.users)
        activation = node_kind(gm, users[0]) if len(users) == 1 else None
        bn = None
        if outputs[node.target] != node.target:  # read the BN statistics before folding
            norm = float_gm.get_submodule(outputs[node.target])
            std = norm.weight.abs() * torch.sqrt(norm.running_var / (norm.running_var + norm.eps))
            bn = (norm.bias.detach().clone(), std.detach().clone())
        activation = activation if activation in ACTIVATIONS else None
        layers.append(Layer(node.target, gm.get_submodule(node.target), activation, bn))
    return layers


@torch.no_grad()
def capture(model: nn.Module, module: nn.Module, x: torch.Tensor, want_input: bool) -> torch.Tensor:
    """The input (or output) of ``module`` when ``model`` runs on ``x``."""
    seen: list[torch.Tensor] = []
    hook = module.register_forward_hook(lambda m, args, out: seen.append(args[0] if want_input else out))
    try:
        model.eval()
        model(x)
    finally:
        hook.remove()
    return seen[-1].detach()


class Objective:
    """Balancing objective: sum over layers of ||act(z_l) - y_l||^2 / ||y_l||^2 (z_l the quantized network's
    layer output, y_l the float network's) plus the same relative error of the network output."""

    def __init__(
        self,
        gm: fx.GraphModule,
        layers: list[Layer],
        x: torch.Tensor,
        float_outputs: list[torch.Tensor],
        target: torch.Tensor,
    ):
        self.gm, self.layers, self.x, self.target = gm, layers, x, target
        self.float_outputs = float_outputs
        self.norms = [float((y**2).sum().clamp_min(1e-12)) for y in float_outputs]
        self.target_norm = float((target**2).sum().clamp_min(1e-12))

    @torch.no_grad()
    def __call__(self) -> float:
        total = [0.0]
        hooks = [
            layer.module.register_forward_hook(
                lambda m, args, out, i=i: total.__setitem__(0, total[0] + self.layer_error(i, out).sum().item())
            )
            for i, layer in enumerate(self.layers)
        ]
        try:
            self.gm.eval()
            out = self.gm(self.x)
        finally:
            for hook in hooks:
                hook.remove()
        return total[0] + float(((out - self.target) ** 2).sum()) / self.target_norm

    def layer_error(self, index: int, z: torch.Tensor) -> torch.Tensor:
        """Per-channel relative error of layer ``index`` given its pre-activation output ``z``."""
        diff = _activate(self.layers[index].activation, z) - self.float_outputs[index]
        return (diff**2).transpose(0, 1).reshape(z.shape[1], -1).sum(dim=1) / self.norms[index]


@torch.no_grad()
def snap_exponents(gm: fx.GraphModule) -> None:
    """Make every log2 step an integer (the power of two the forward already uses)."""
    for quantizer in quantizers(gm):
        quantizer.step_param.copy_(torch.round(quantizer.step_param))
        quantizer.initialized.fill_(True)


@torch.no_grad()
def _channel_proposal(objective: Objective, index: int) -> torch.Tensor:
    """Per output channel, the exponent in {e-1, e, e+1} with the least error of this layer alone."""
    layer = objective.layers[index]
    module, quant = layer.module, layer.module.weight_quant
    x = capture(objective.gm, module, objective.x, want_input=True)
    base = quant.step_param.detach().clone()
    shape = quant._shape(module.weight)
    errors = []
    for shift in (-1.0, 0.0, 1.0):
        step = torch.exp2(base + shift).reshape(shape)
        weight = torch.clamp(torch.round(module.weight / step), quant.qmin, quant.qmax) * step
        errors.append(objective.layer_error(index, _layer_forward(layer, x, weight, module.bias)))
    stacked = torch.stack(errors)  # [3, channels]
    if base.numel() == 1:  # a per-tensor weight step
        stacked = stacked.sum(dim=1, keepdim=True)
    return base + stacked.argmin(dim=0).to(base.dtype) - 1.0


@torch.no_grad()
def balance_exponents(
    objective: Objective,
    which: list[LsqQuantizer] | None = None,
    max_sweeps: int = 10,
    log: Log | None = None,
) -> tuple[float, float]:
    """Coordinate descent over integer log2 steps, all judged on the whole-network ``objective``:
    each activation quantizer tries e-1 and e+1; each weight quantizer tries its per-channel proposal
    (the best of e-1, e, e+1 per channel for its own layer), then shifting all channels by -1 or +1.
    A move is kept only if it lowers the objective; sweeps repeat until none does.
    Returns (initial, final) objective."""
    gm = objective.gm
    snap_exponents(gm)
    weight_index = {id(layer.module.weight_quant): i for i, layer in enumerate(objective.layers)}
    error = initial = objective()
    for sweep in range(max_sweeps):
        moves = 0
        for quantizer in which if which is not None else quantizers(gm):
            exponents = quantizer.step_param.data
            base = exponents.clone()
            candidates = [base - 1.0, base + 1.0]
            if id(quantizer) in weight_index:
                proposal = _channel_proposal(objective, weight_index[id(quantizer)])
                if not torch.equal(proposal, base):
                    candidates.insert(0, proposal)
            best = base
            for candidate in candidates:
                exponents.copy_(candidate)
                trial = objective()
                if trial < error:
                    error, best = trial, candidate
            exponents.copy_(best)
            moves += not torch.equal(best, base)
        if log:
            log(f"rapq balance sweep {sweep + 1}: {moves} moves, objective {error:.6g} (initial {initial:.6g})")
        if not moves:
            break
    return initial, error


def _layer_forward(layer: Layer, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    module = layer.module
    if isinstance(module, nn.Conv2d):
        return F.conv2d(x, weight, bias, module.stride, module.padding, module.dilation, module.groups)
    return F.linear(x, weight, bias)


def _activate(activation: str | None, z: torch.Tensor) -> torch.Tensor:
    return F.relu(z) if activation == "relu" else F.relu6(z) if activation == "relu6" else z


def block_loss(layer: Layer, z: torch.Tensor, y_float: torch.Tensor, bn_weight: float) -> torch.Tensor:
    """||act(z) - y_f||^2 / ||y_f||^2
    + bn_weight * sum_c((mu_c - beta_c)^2 + (sd_c - sd_bn_c)^2) / sum_c(beta_c^2 + sd_bn_c^2),
    with mu_c, sd_c the per-channel mean and standard deviation of the pre-activation output z
    and (beta_c, sd_bn_c) the folded BN's output statistics (``layer.bn``; no BN: no term)."""
    loss = ((_activate(layer.activation, z) - y_float) ** 2).sum() / (y_float**2).sum().clamp_min(1e-12)
    if layer.bn is not None and bn_weight > 0:
        mean_bn, std_bn = layer.bn
        per_channel = z.transpose(0, 1).reshape(z.shape[1], -1)
        mean, std = per_channel.mean(dim=1), per_channel.std(dim=1, unbiased=False)
        stats = ((mean - mean_bn) ** 2 + (std - std_bn) ** 2).sum() / (mean_bn**2 + std_bn**2).sum().clamp_min(1e-12)
        loss = loss + bn_weight * stats
    return loss


def reconstruct_layer(
    layer: Layer,
    weight: torch.Tensor,
    x_quant: torch.Tensor,
    y_float: torch.Tensor,
    iters: int,
    generator: torch.Generator,
    bn_weight: float = 0.1,
    round_weight: float = 0.1,
    lr: float = 0.05,
    batch_size: int = 128,
) -> Reconstruction:
    """AdaRound on the layer's fixed power-of-two grid: weight integers floor(w/s) + h(V), h the rectified
    sigmoid, V learned by Adam on ``block_loss`` + round_weight * mean(1 - |2h - 1|^beta) (beta 20 -> 2
    after 20% warm-up); finally h >= 0.5 rounds up. Keeps round-to-nearest if that scores better."""
    module, quant = layer.module, layer.module.weight_quant
    with torch.no_grad():
        step = quant.step_for(weight)
        scaled = weight / step
        floor = torch.floor(scaled)
        rest = (scaled - floor).clamp(0.0, 1.0)
        bias = module.quant_bias()
        bias = None if bias is None else bias.detach()
    logits = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0))
    optimizer = torch.optim.Adam([logits], lr=lr)

    def weight_of(h: torch.Tensor) -> torch.Tensor:
        return torch.clamp(floor + h, quant.qmin, quant.qmax) * step

    def soft() -> torch.Tensor:
        return torch.clamp(torch.sigmoid(logits) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)

    @torch.no_grad()
    def hard_loss(h: torch.Tensor) -> float:
        return float(block_loss(layer, _layer_forward(layer, x_quant, weight_of(h), bias), y_float, bn_weight))

    warmup = int(0.2 * iters)
    for index in range(iters):
        batch = torch.randperm(len(x_quant), generator=generator)[:batch_size]
        h = soft()
        z = _layer_forward(layer, x_quant[batch], weight_of(h), bias)
        beta = 20.0 - 18.0 * max(0, index - warmup) / max(1, iters - warmup)
        regulariser = (1.0 - (2.0 * h - 1.0).abs() ** beta).mean() if index >= warmup else h.new_zeros(())
        loss = block_loss(layer, z, y_float[batch], bn_weight) + round_weight * regulariser
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        nearest = torch.round(scaled) - floor
        learned = (soft() >= 0.5).to(scaled.dtype)
        before, after = hard_loss(nearest), hard_loss(learned)
        chosen = learned if after <= before else nearest
        integers = torch.clamp(floor + chosen, quant.qmin, quant.qmax)
    return Reconstruction(integers, before, min(before, after))


@torch.no_grad()
def store_on_grid(gm: fx.GraphModule) -> None:
    """Replace each layer's weight by its fake-quantized value (integers * power-of-two step)."""
    gm.eval()
    for module in gm.modules():
        if hasattr(module, "weight_quant"):
            module.weight.copy_(module.weight_quant(module.weight))


def rtn_calibrate(float_model: nn.Module, config: QuantConfig, x_calib) -> fx.GraphModule:
    """Round-to-nearest power-of-two PTQ: every quantizer's step is the nearest power of two (in log2)
    of its MSE-optimal step (33 clipping ratios of max|x|, per weight channel; activations in forward
    order on the calibration batch), and weights round to nearest on that grid."""
    _check(config)
    gm = prepare_qat(float_model, config)
    calibrate(gm, _as_tensor(x_calib).numpy())
    snap_exponents(gm)
    store_on_grid(gm)
    return gm.eval()


def rapq_calibrate(
    float_model: nn.Module,
    config: QuantConfig,
    x_calib,
    iters: int | None = None,
    seed: int = 0,
    log: Log | None = None,
) -> fx.GraphModule:
    """RAPQ: RTN initial exponents, network-wide balancing, BN-based AdaRound reconstruction layer by
    layer, then the activation exponents balanced again. Options (``config.options``): ``rapq_iters``
    (300), ``rapq_bn_weight`` (0.1), ``rapq_round_weight`` (0.1), ``rapq_lr`` (0.05), ``rapq_batch`` (128),
    ``rapq_balance`` (True; False skips the balancing, an ablation)."""
    _check(config)
    iters = int(config.option("rapq_iters", 300) if iters is None else iters)
    x = _as_tensor(x_calib)
    generator = torch.Generator().manual_seed(seed)
    gm = prepare_qat(float_model, config)
    calibrate(gm, x.numpy())
    objective = make_objective(gm, float_model, x)
    balance = bool(config.option("rapq_balance", True))  # False: the ablation without steps 2 and 4
    initial, balanced = balance_exponents(objective, log=log, max_sweeps=10 if balance else 0)
    weights = [layer.module.weight.detach().clone() for layer in objective.layers]
    store_on_grid(gm)
    nearest = [layer.module.weight.detach().clone() for layer in objective.layers]
    for index, layer in enumerate(objective.layers):
        result = reconstruct_layer(
            layer,
            weights[index],
            capture(gm, layer.module, x, want_input=True),
            objective.float_outputs[index],
            iters,
            generator,
            bn_weight=float(config.option("rapq_bn_weight", 0.1)),
            round_weight=float(config.option("rapq_round_weight", 0.1)),
            lr=float(config.option("rapq_lr", 0.05)),
            batch_size=int(config.option("rapq_batch", 128)),
        )
        with torch.no_grad():
            layer.module.weight.copy_(result.integers * layer.module.weight_quant.step_for(layer.module.weight))
        if log:
            log(f"rapq reconstruct {layer.target}: block loss {result.loss_before:.4g} -> {result.loss_after:.4g}")
    reconstructed = objective()
    if reconstructed > balanced:  # the learned rounding hurt the whole network: keep round-to-nearest
        with torch.no_grad():
            for layer, weight in zip(objective.layers, nearest, strict=True):
                layer.module.weight.copy_(weight)
        reconstructed = balanced
    weight_quants = {id(layer.module.weight_quant) for layer in objective.layers}
    activations = [q for q in quantizers(gm) if id(q) not in weight_quants]
    _, final = balance_exponents(objective, which=activations, log=log, max_sweeps=10 if balance else 0)
    if log:
        stages = f"rtn {initial:.5g}, balanced {balanced:.5g}, reconstructed {reconstructed:.5g}, final {final:.5g}"
        log(f"rapq objective: {stages}")
    return gm.eval()


@torch.no_grad()
def make_objective(gm: fx.GraphModule, float_model: nn.Module, x: torch.Tensor) -> Objective:
    """The balancing objective of prepared model ``gm`` against ``float_model`` on the batch ``x``."""
    float_gm, outputs = _float_reference(float_model)
    layers = _layers(gm, float_gm, outputs)
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        float_gm.get_submodule(outputs[layer.target]).register_forward_hook(
            lambda m, args, out, name=layer.target: seen.__setitem__(name, out.detach())
        )
        for layer in layers
    ]
    try:
        target = float_gm(x).detach()
    finally:
        for hook in hooks:
            hook.remove()
    float_outputs = [_activate(layer.activation, seen[layer.target]) for layer in layers]
    return Objective(gm, layers, x, float_outputs, target)


__all__ = [
    "Layer",
    "Reconstruction",
    "balance_exponents",
    "block_loss",
    "capture",
    "make_objective",
    "Objective",
    "quantizers",
    "rapq_calibrate",
    "reconstruct_layer",
    "rtn_calibrate",
    "snap_exponents",
    "store_on_grid",
]
