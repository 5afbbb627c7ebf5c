"""Seed 003: learned weight levels (codebook) and channel-aware activation quantizers.

Weights: every output channel owns ``2**bits`` learnable levels; each weight takes its nearest level
(forward), the levels receive the summed gradients of their weights ("direct" update of the quantized
weights) and the latent weights a straight-through gradient. The levels are snapped (with STE) to integers
on a per-channel grid so that the IR ``codebook`` format holds them exactly.

Activations: a per-tensor uniform quantizer (LSQ) whose step is initialised, and regularised during
training, by the mean over channels of each channel's quantization error relative to its power, so that a
few high-variance channels do not dominate it. See docs/methods/codebook.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from qexport.errors import QExportError
from qexport.ir.graph import Weight
from qexport.quant.lsq import SEARCH_RATIOS, LsqQuantizer
from qexport.quant.ste import round_ste

if TYPE_CHECKING:
    from qexport.quant.config import QuantConfig

KMEANS_ITERS = 8
FLOAT32_MANTISSA = 24


def nearest_level(w: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index into ``levels`` [C, L] of the level nearest to each row of ``w`` [C, K] (int64 [C, K]).

    Distances are exact (float64); ties go to the smaller level, equal levels to the smallest index.
    """
    ordered, order = torch.sort(levels.detach().double(), dim=1, stable=True)
    mids = (ordered[:, :-1] + ordered[:, 1:]) / 2
    position = torch.searchsorted(mids.contiguous(), w.detach().double().contiguous())  # w == mid -> lower
    count = ordered.shape[1]
    run_start = torch.arange(count).expand_as(ordered).clone()
    run_start[:, 1:] *= (ordered[:, 1:] != ordered[:, :-1]).long()
    run_start = run_start.cummax(dim=1).values  # first position of each run of equal levels
    return order.gather(1, run_start.gather(1, position))


def level_grid(levels: torch.Tensor, level_bits: int, pow2: bool) -> torch.Tensor:
    """Per-channel grid (float32 [C]) so that levels / grid fit signed ``level_bits`` integers.

    ``max|level| / (2**(level_bits-1) - 1)`` rounded up to ``FLOAT32_MANTISSA - level_bits`` significant
    bits (so integer * grid is exact in float32), or up to a power of two; an all-zero channel gets 1.
    """
    peak = levels.detach().abs().amax(dim=1).double()
    raw = peak / ((1 << (level_bits - 1)) - 1)
    mantissa, exponent = torch.frexp(torch.where(peak > 0, raw, torch.ones_like(raw)))  # raw = m * 2**e
    if pow2:
        grid = torch.ldexp(torch.ones_like(mantissa), exponent - (mantissa == 0.5).long())
    else:
        digits = FLOAT32_MANTISSA - level_bits
        grid = torch.ldexp(torch.ceil(torch.ldexp(mantissa, torch.tensor(digits))), exponent - digits)
    return grid.float()


class _AssignSTE(torch.autograd.Function):
    """Forward: levels[c, index]; backward: straight through to w, summed per level to the levels."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, levels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.level_shape = levels.shape
        return levels.gather(1, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        level_grad = torch.zeros(ctx.level_shape, dtype=grad.dtype).scatter_add_(1, index, grad)
        return grad, level_grad, None


class CodebookQuantizer(nn.Module):
    """w ~ grid[c] * n[c, index], n = round(levels / grid) integers, per output channel."""

    def __init__(self, bits: int, channels: int, level_bits: int = 8, pow2: bool = False, kmeans_iters: int = 8):
        super().__init__()
        if not 2 <= level_bits <= 16:
            raise QExportError(f"codebook: codebook_level_bits={level_bits} out of range 2..16")
        self.bits, self.level_bits, self.pow2, self.kmeans_iters = bits, level_bits, pow2, kmeans_iters
        self.level_max = (1 << (level_bits - 1)) - 1
        self.levels = nn.Parameter(torch.zeros(channels, 1 << bits))
        self.register_buffer("initialized", torch.tensor(False))

    def extra_repr(self) -> str:
        return f"{self.levels.shape[1]} levels x {self.levels.shape[0]} channels, INT{self.level_bits} levels"

    @torch.no_grad()
    def initialize(self, w: torch.Tensor) -> None:
        """Quantiles (i + 1/2) / L of each channel's weights, then a few Lloyd (k-means) iterations."""
        flat = w.detach().double().reshape(w.shape[0], -1)
        count = self.levels.shape[1]
        levels = torch.quantile(flat, (torch.arange(count, dtype=torch.float64) + 0.5) / count, dim=1).T
        for _ in range(self.kmeans_iters):
            index = nearest_level(flat, levels)
            sums = torch.zeros_like(levels).scatter_add_(1, index, flat)
            members = torch.zeros_like(levels).scatter_add_(1, index, torch.ones_like(flat))
            levels = torch.where(members > 0, sums / members.clamp_min(1), levels)  # empty clusters stay
        self.levels.copy_(levels.float())
        self.initialized.fill_(True)

    def step(self) -> torch.Tensor:
        """The per-channel grid of the integer levels (float32 [C], no gradient)."""
        return level_grid(self.levels, self.level_bits, self.pow2)

    def snapped_levels(self) -> torch.Tensor:
        """Levels on the grid (float32 [C, L], exact integer multiples), straight-through to ``levels``."""
        grid = self.step().unsqueeze(1)
        return torch.clamp(round_ste(self.levels / grid), -self.level_max, self.level_max) * grid

    def codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(index [C, K], integer levels [C, L]) of ``w`` (no gradient)."""
        with torch.no_grad():
            grid = self.step().unsqueeze(1)
            integers = torch.clamp(torch.round(self.levels / grid), -self.level_max, self.level_max)
            return nearest_level(w.reshape(w.shape[0], -1), integers * grid), integers

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self.initialize(w)
        index, _ = self.codes(w)
        flat = w.reshape(w.shape[0], -1)
        return _AssignSTE.apply(flat, self.snapped_levels(), index).reshape(w.shape)

    def to_ir_weight(self, name: str, w: torch.Tensor) -> Weight:
        index, integers = self.codes(w)
        index_dtype = np.uint8 if self.levels.shape[1] <= 256 else np.uint16
        level_dtype = np.int8 if self.level_bits <= 8 else np.int16
        return Weight(
            name,
            "codebook",
            tuple(w.shape),
            {
                "indices": index.numpy().astype(index_dtype).reshape(w.shape),
                "levels": integers.to(torch.int64).numpy().astype(level_dtype),
            },
            {"scale": self.step().numpy().astype(np.float64).tolist()},
        )


def by_channel(x: torch.Tensor) -> torch.Tensor:
    """``x`` as [C, M] with channels = dim 1 (one channel for rank < 2)."""
    return x.transpose(0, 1).reshape(x.shape[1], -1) if x.dim() >= 2 else x.reshape(1, -1)


def channel_error(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Mean over channels of MSE_c / mean(x_c**2) (channels with zero power count as zero error).

    Differentiable in ``step`` (straight-through rounding, LSQ's gradient); ``x`` is not trained by it.
    """
    flat = by_channel(x.detach())
    power = (flat**2).mean(dim=1)
    err = ((torch.clamp(round_ste(flat / step), qmin, qmax) * step - flat) ** 2).mean(dim=1)
    return torch.where(power > 0, err / torch.where(power > 0, power, torch.ones_like(power)), 0 * err).mean()


def candidate_steps(x: torch.Tensor, qmin: int, qmax: int, pow2: bool) -> torch.Tensor:
    """Steps searched by the channel-aware init: LSQ's ratios of max|x| plus 12 octaves below, or powers of 2."""
    peak = float(x.detach().abs().max())
    peak = peak if peak > 0 else 1.0
    ratios = torch.cat([SEARCH_RATIOS, torch.exp2(-torch.arange(1, 49) / 4.0)])
    steps = ratios * peak / max(qmax, -qmin)
    if pow2:
        steps = torch.exp2(torch.unique(torch.round(torch.log2(steps))))
    return steps.float()


class _AddGrad(torch.autograd.Function):
    """Forward: ``out`` unchanged; backward: also sends ``weight`` to ``aux`` (an auxiliary loss term)."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, aux: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, torch.full((), ctx.weight, dtype=grad.dtype), None


class ChannelActQuant(LsqQuantizer):
    """Per-tensor uniform activation quantizer with a channel-aware step (init + auxiliary gradient)."""

    def __init__(self, bits: int, signed: bool, pow2: bool = False, aux_weight: float = 1.0):
        super().__init__(bits, signed, channels=1, channel_dim=None, pow2=pow2)
        self.aux_weight = aux_weight

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """The candidate step with the smallest ``channel_error`` (ties: the first, i.e. the largest)."""
        steps = candidate_steps(x, self.qmin, self.qmax, self.pow2)
        errors = torch.stack([channel_error(x, step, self.qmin, self.qmax) for step in steps])
        best = steps[int(torch.argmin(errors))]
        self.step_param.fill_(float(torch.log2(best)) if self.pow2 else float(best))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.training and self.aux_weight and torch.is_grad_enabled():
            aux = channel_error(x, self.step().reshape(()), self.qmin, self.qmax)
            out = _AddGrad.apply(out, aux, self.aux_weight)
        return out


def make_weight_quantizer(bits: int, channels: int, config: QuantConfig) -> CodebookQuantizer:
    """Always per output channel; options ``codebook_level_bits`` (8), ``codebook_kmeans_iters`` (8)."""
    return CodebookQuantizer(
        bits,
        channels,
        level_bits=int(config.option("codebook_level_bits", 8)),
        pow2=config.pow2_scales,
        kmeans_iters=int(config.option("codebook_kmeans_iters", KMEANS_ITERS)),
    )


def make_act_quantizer(bits: int, signed: bool, config: QuantConfig) -> ChannelActQuant:
    """Option ``channel_aux_weight`` (1.0): weight of the channel-normalised error in the loss."""
    weight = float(config.option("channel_aux_weight", 1.0))
    return ChannelActQuant(bits, signed, pow2=config.pow2_scales, aux_weight=weight)
