"""Seed 000 PQDE: MDE uniform quantizers, Arctangent Soft Round (ASR) and the progressive bit-width schedule.

* MDE (minimize discretization error): the step of a uniform quantizer (per output channel for weights, per
  tensor for activations) is the one minimising ``sum (clamp(round(x/s), qmin, qmax) * s - x)**2`` of the
  current tensor: a search over a geometric grid of candidate steps, then Lloyd iterations (q from s, s from
  q) from the best few while the error falls; with power-of-two scales, an exhaustive search over powers of
  two. Weights re-solve it in every forward; activations solve it per training batch (on a seeded sample of
  ``mde_samples`` elements) and keep an EMA (in log2) of it for eval.
* ASR: in training, ``round`` is replaced by the differentiable ``asr`` below (temperature ``t`` annealed
  upward; t -> inf is hard rounding); eval rounds half to even.
* ``train_progressive``: full precision -> stage bit widths -> target bits, each stage from the previous one.

See docs/methods/pqde.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import fx, nn

from qexport.errors import QExportError
from qexport.ir.graph import Weight
from qexport.quant.base import ActivationQuantizer
from qexport.quant.lsq import int_affine_weight

if TYPE_CHECKING:
    from qexport.quant.config import QuantConfig
    from qexport.training import Log

FLOAT32_MANTISSA = 24
GRID_EXPONENTS = torch.arange(4, -81, -1) / 16  # candidate steps: (no-clip step) * 2**e, 16 per octave, descending
POW2_WINDOW = 48  # powers of two tried: 2**(floor(log2 max|x|) + 1 - k), k = 0 .. 47
LLOYD_ITERS = 32
LLOYD_STARTS = 4
CHUNK_ELEMENTS = 1 << 22  # bound the [channels, candidates, elements] working set
CALIBRATION_SAMPLES = 256
ACT_SAMPLES = 4096  # activations: the per-batch MDE step is solved on this many elements (seeded draw)


def signed_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def snap_step(step: torch.Tensor, bits: int) -> torch.Tensor:
    """``step`` (positive) rounded to ``24 - bits`` significant bits, so ``q * step`` is exact in float32."""
    mantissa, exponent = torch.frexp(step.double())
    digits = FLOAT32_MANTISSA - bits
    return torch.ldexp(torch.round(torch.ldexp(mantissa, torch.tensor(digits))), exponent - digits).float()


def discretization_error(x: torch.Tensor, steps: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """``sum_n (clamp(round(x[c, n] / s), qmin, qmax) * s - x[c, n])**2`` (float64 [C, G]) for steps [C, G].

    Rounding happens in float32 exactly as the quantizer's forward does it; the error is summed in float64.
    """
    out = []
    per_step = max(1, CHUNK_ELEMENTS // max(1, x.numel()))
    for start in range(0, steps.shape[1], per_step):
        s = steps[:, start : start + per_step, None]
        q = torch.clamp(torch.round(x[:, None, :] / s), qmin, qmax)
        out.append(((q.double() * s.double() - x[:, None, :].double()) ** 2).sum(-1))
    return torch.cat(out, dim=1)


def candidate_steps(x: torch.Tensor, qmin: int, qmax: int, bits: int, pow2: bool) -> torch.Tensor:
    """Candidate steps per row of ``x`` [C, N] (float32 [C, G], descending); rows of zeros get a unit range.

    Uniform: ``snap(base * 2**e)`` for e in GRID_EXPONENTS, base = the smallest step that clips nothing.
    Power of two: ``2**(floor(log2 max|x|) + 1 - k)``, k = 0 .. POW2_WINDOW - 1.
    """
    positive = x.clamp_min(0).amax(dim=1) / max(qmax, 1)
    negative = (-x).clamp_min(0).amax(dim=1) / -qmin if qmin < 0 else torch.zeros_like(positive)
    base = torch.maximum(positive, negative)
    base = torch.where(base > 0, base, torch.ones_like(base) / max(qmax, 1))
    if pow2:
        peak = torch.where(x.abs().amax(dim=1) > 0, x.abs().amax(dim=1), torch.ones_like(base))
        top = torch.floor(torch.log2(peak.double())) + 1
        return torch.exp2(top[:, None] - torch.arange(POW2_WINDOW, dtype=torch.float64)).float()
    return snap_step(base[:, None].double() * torch.exp2(GRID_EXPONENTS.double())[None, :], bits)


def lloyd_refine(
    x: torch.Tensor, steps: torch.Tensor, errors: torch.Tensor, qmin: int, qmax: int, bits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd updates ``s = snap(sum x q / sum q**2)`` from every start steps[c, k], each kept only where it
    lowers the error, until none does (or LLOYD_ITERS); returns the refined (steps, errors) [C, K]."""
    xd = x.double()[:, None, :]
    for _ in range(LLOYD_ITERS):
        q = torch.clamp(torch.round(x[:, None, :] / steps[..., None]), qmin, qmax).double()
        num, den = (q * xd).sum(dim=-1), (q * q).sum(dim=-1)
        usable = (den > 0) & (num > 0)
        candidate = snap_step(torch.where(usable, num / den.clamp_min(1), steps.double()), bits)
        new_errors = discretization_error(x, candidate, qmin, qmax)
        better = usable & (new_errors < errors)
        if not bool(better.any()):
            break
        steps, errors = torch.where(better, candidate, steps), torch.where(better, new_errors, errors)
    return steps, errors


def nothing_to_quantize(x: torch.Tensor, qmin: int) -> torch.Tensor:
    """Rows of ``x`` [C, N] that quantize to zero at any step (all zero; all <= 0 when unsigned)."""
    return (x == 0).all(dim=1) if qmin < 0 else (x <= 0).all(dim=1)


@torch.no_grad()
def mde_step(x: torch.Tensor, qmin: int, qmax: int, bits: int, pow2: bool) -> torch.Tensor:
    """The MDE step of every row of ``x`` [C, N] (float32 [C]); a row with nothing to quantize gets 1."""
    x = x.detach().float()
    candidates = candidate_steps(x, qmin, qmax, bits, pow2)
    errors = discretization_error(x, candidates, qmin, qmax)
    if not pow2:  # Lloyd from the LLOYD_STARTS best grid steps (stable sort: ties keep the larger step)
        starts = errors.sort(dim=1, stable=True).indices[:, :LLOYD_STARTS]
        candidates, errors = lloyd_refine(x, candidates.gather(1, starts), errors.gather(1, starts), qmin, qmax, bits)
    best = errors.argmin(dim=1, keepdim=True)  # ties: the first
    step = candidates.gather(1, best)[:, 0]
    return torch.where(nothing_to_quantize(x, qmin), torch.ones_like(step), step)


def asr(v: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """Arctangent soft round: floor(v) + 1/2 + atan(t (frac(v) - 1/2)) / (2 atan(t / 2)).

    Equal to v at integers and half-integers, strictly increasing, tends to round(v) as t -> inf and to v as
    t -> 0; the gradient t / (1 + t**2 (frac - 1/2)**2) / (2 atan(t/2)) is positive and finite for finite t > 0.
    """
    t = torch.as_tensor(temperature, dtype=v.dtype)
    floor = torch.floor(v).detach()
    return floor + 0.5 + torch.atan(t * (v - floor - 0.5)) / (2 * torch.atan(t / 2))


def fake_quant(
    x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int, temperature: torch.Tensor | None
) -> torch.Tensor:
    """clamp(round(x / step), qmin, qmax) * step; with a temperature, ASR replaces the rounding."""
    v = x / step
    q = torch.round(v) if temperature is None else asr(v, temperature)
    return torch.clamp(q, qmin, qmax) * step


class _MdeBase(nn.Module):
    signed: bool

    def __init__(self, bits: int, pow2: bool, temperature: float):
        super().__init__()
        self.pow2 = pow2
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.register_buffer("initialized", torch.tensor(False))
        self.set_bits(bits)

    @torch.no_grad()
    def set_bits(self, bits: int) -> None:
        """Change the bit width (no shape changes); the step is re-solved on the next forward."""
        if not 2 <= bits <= 16:
            raise QExportError(f"mde: bits {bits} outside 2..16")
        self.bits = int(bits)
        self.qmin, self.qmax = signed_range(self.bits, self.signed)
        self.initialized.fill_(False)

    def _temperature(self) -> torch.Tensor | None:
        return self.temperature if self.training else None


class MdeWeightQuantizer(_MdeBase):
    """Signed symmetric weights, MDE step per output channel (or one), re-solved from ``w`` in every forward."""

    signed = True

    def __init__(self, bits: int, channels: int, pow2: bool = False, temperature: float = 32.0):
        super().__init__(bits, pow2, temperature)
        self.register_buffer("step_value", torch.ones(channels))

    def extra_repr(self) -> str:
        return f"MDE INT{self.bits}, channels={self.step_value.numel()}, pow2={self.pow2}"

    def _shape(self, w: torch.Tensor) -> list[int]:
        return [-1] + [1] * (w.dim() - 1) if self.step_value.numel() > 1 else [1] * w.dim()

    @torch.no_grad()
    def solve(self, w: torch.Tensor) -> torch.Tensor:
        """Set (and return) the MDE step of ``w``."""
        rows = w.reshape(self.step_value.numel(), -1)
        self.step_value.copy_(mde_step(rows, self.qmin, self.qmax, self.bits, self.pow2))
        self.initialized.fill_(True)
        return self.step_value

    def step(self) -> torch.Tensor:
        return self.step_value

    def integers(self, w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.clamp(torch.round(w / self.step().reshape(self._shape(w))), self.qmin, self.qmax)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        step = self.solve(w).clone().reshape(self._shape(w))
        return fake_quant(w, step, self.qmin, self.qmax, self._temperature())

    def to_ir_weight(self, name: str, w: torch.Tensor) -> Weight:
        """``int_affine``, symmetric, per-channel steps: the MDE step of ``w`` (re-solved here)."""
        return int_affine_weight(name, self.integers(w), self.solve(w), self.bits)


class MdeActQuantizer(_MdeBase, ActivationQuantizer):
    """Per-tensor MDE step; training updates an EMA of log2 of each batch's MDE step, which eval uses."""

    def __init__(
        self,
        bits: int,
        signed: bool,
        pow2: bool = False,
        temperature: float = 32.0,
        momentum: float = 0.1,
        samples: int = ACT_SAMPLES,
    ):
        self.signed = signed
        super().__init__(bits, pow2, temperature)
        self.momentum, self.samples = momentum, samples
        self.register_buffer("log2_step", torch.zeros(1))

    def extra_repr(self) -> str:
        return f"MDE {'' if self.signed else 'U'}INT{self.bits}, pow2={self.pow2}, momentum={self.momentum}"

    def step(self) -> torch.Tensor:
        if self.pow2:
            return torch.exp2(torch.round(self.log2_step))
        return snap_step(torch.exp2(self.log2_step), self.bits)

    def sample(self, x: torch.Tensor) -> torch.Tensor:
        """[1, n]: all of ``x`` when it has at most ``samples`` elements, else a seeded draw (with replacement)."""
        flat = x.detach().reshape(1, -1)
        if flat.shape[1] <= self.samples:
            return flat
        return flat[:, torch.randint(flat.shape[1], (self.samples,), generator=torch.Generator().manual_seed(0))]

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Move the running log2 step toward this batch's MDE step (the first batch sets it)."""
        x = self.sample(x)
        if bool(nothing_to_quantize(x, self.qmin).all()):
            return
        batch = torch.log2(mde_step(x, self.qmin, self.qmax, self.bits, self.pow2))
        if bool(self.initialized):
            batch = self.log2_step + self.momentum * (batch - self.log2_step)
        self.log2_step.copy_(batch)
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not bool(self.initialized):
            self.update(x)
        return fake_quant(x, self.step(), self.qmin, self.qmax, self._temperature())


def make_weight_quantizer(bits: int, channels: int, config: QuantConfig) -> MdeWeightQuantizer:
    channels = channels if config.per_channel_weights else 1
    return MdeWeightQuantizer(bits, channels, config.pow2_scales, float(config.option("asr_t_end", 32.0)))


def make_act_quantizer(bits: int, signed: bool, config: QuantConfig) -> MdeActQuantizer:
    t_end, momentum = float(config.option("asr_t_end", 32.0)), float(config.option("mde_momentum", 0.1))
    samples = int(config.option("mde_samples", ACT_SAMPLES))
    return MdeActQuantizer(bits, signed, config.pow2_scales, t_end, momentum, samples)


# ---------------------------------------------------------------- progressive schedule


def stage_bits(config: QuantConfig, stages: Sequence[int]) -> list[tuple[int, int]]:
    """(weight bits, activation bits) per stage: never below the target; a final stage at the target if needed."""
    if not stages or any(not 2 <= int(b) <= 8 for b in stages):
        raise QExportError(f"pqde: stages {list(stages)} must be bit widths in 2..8")
    plan = [(max(int(b), config.weight_bits), max(int(b), config.act_bits)) for b in stages]
    if plan[-1] != (config.weight_bits, config.act_bits):
        plan.append((config.weight_bits, config.act_bits))
    return plan


def asr_temperature(epoch: int, epochs: int, t_start: float, t_end: float) -> float:
    """Geometric annealing within a stage: t_start * (t_end / t_start) ** ((epoch + 1) / epochs)."""
    return t_start * (t_end / t_start) ** ((epoch + 1) / epochs)


def mde_quantizers(model: nn.Module) -> list[_MdeBase]:
    return [m for m in model.modules() if isinstance(m, _MdeBase)]


def set_stage(model: nn.Module, weight_bits: int, act_bits: int) -> None:
    for quantizer in mde_quantizers(model):
        quantizer.set_bits(act_bits if isinstance(quantizer, MdeActQuantizer) else weight_bits)


def set_temperature(model: nn.Module, temperature: float) -> None:
    for quantizer in mde_quantizers(model):
        quantizer.temperature.fill_(temperature)


def train_progressive(
    float_model: nn.Module,
    config: QuantConfig,
    x: np.ndarray,
    y: np.ndarray,
    stages: Sequence[int],
    epochs_per_stage: int,
    lr: float,
    seed: int,
    log: Log | None = None,
) -> fx.GraphModule:
    """PQDE: ``prepare_qat(float_model, config)``, then per stage: set the MDE quantizers' bits, calibrate,
    train ``epochs_per_stage`` epochs with the ASR temperature annealed from ``asr_t_start`` to ``asr_t_end``
    (``config.options``). First/last layers and the LSQ input/output/residual quantizers keep their bits."""
    from qexport.frontend.prepare import prepare_qat
    from qexport.training import calibrate, train

    if "mde" not in (config.weight_method, config.act_method):
        raise QExportError("pqde: progressive training needs weight_method or act_method 'mde'")
    t_start, t_end = float(config.option("asr_t_start", 1.0)), float(config.option("asr_t_end", 32.0))
    if not 0 < t_start <= t_end < float("inf"):
        raise QExportError(f"pqde: need 0 < asr_t_start <= asr_t_end < inf (got {t_start}, {t_end})")
    model = prepare_qat(float_model, config)
    plan = stage_bits(config, stages)

    def anneal(epoch: int, m: nn.Module) -> None:
        set_temperature(m, asr_temperature(epoch, epochs_per_stage, t_start, t_end))

    for index, (weight_bits, act_bits) in enumerate(plan):
        set_stage(model, weight_bits, act_bits)
        calibrate(model, x[:CALIBRATION_SAMPLES])
        if log:
            log(f"pqde stage {index + 1}/{len(plan)}: weights {weight_bits} bits, activations {act_bits} bits")
        train(model, x, y, epochs_per_stage, lr=lr, seed=seed + index, log=log, on_epoch=anneal)
    model.eval()
    return model
