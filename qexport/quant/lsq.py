"""LSQ fake quantizers (Esser et al., 2020): learned step size, per tensor or per channel.

With ``pow2=True`` the learned parameter is log2 of the step and the forward step is
2**round(log2 step), so requantization becomes a pure shift.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from qexport.ir.dtypes import IntType
from qexport.ir.graph import Weight
from qexport.quant.ste import grad_scale, round_ste

if TYPE_CHECKING:
    from qexport.quant.config import QuantConfig

SEARCH_RATIOS = torch.linspace(0.2, 1.0, 33)


def mse_scale(x: torch.Tensor, qmin: int, qmax: int, channel_dim: int | None) -> torch.Tensor:
    """Step size minimising the quantization MSE over clipping ratios of max|x| (per channel or not)."""
    x = x.detach().float()
    x = x.reshape(1, -1) if channel_dim is None else x.transpose(0, channel_dim).reshape(x.shape[channel_dim], -1)
    peak = x.abs().amax(dim=1)
    peak = torch.where(peak > 0, peak, torch.ones_like(peak))  # an all-zero channel keeps a unit range
    best_err = torch.full_like(peak, float("inf"))
    best = peak / max(qmax, -qmin)
    for ratio in SEARCH_RATIOS:
        step = (ratio * peak / max(qmax, -qmin)).unsqueeze(1)
        err = ((torch.clamp(torch.round(x / step), qmin, qmax) * step - x) ** 2).mean(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, step.squeeze(1), best)
    return best


def int_affine_weight(name: str, values: torch.Tensor, steps: torch.Tensor, bits: int) -> Weight:
    """A symmetric ``int_affine`` IR weight: signed ``bits``-bit ``values``, per-output-channel ``steps``."""
    scale = np.broadcast_to(steps.detach().to(torch.float32).numpy().astype(np.float64), (values.shape[0],))
    return Weight(
        name,
        "int_affine",
        tuple(values.shape),
        {"values": values.detach().to(torch.int64).numpy()},
        {"dtype": IntType(True, bits).name, "scale": scale.tolist(), "zero_point": 0, "axis": 0},
    )


class LsqQuantizer(nn.Module):
    """clamp(round(x / s), qmin, qmax) * s with a learned step s (round half to even)."""

    def __init__(self, bits: int, signed: bool, channels: int = 1, channel_dim: int | None = None, pow2: bool = False):
        super().__init__()
        self.bits, self.signed, self.pow2 = bits, signed, pow2
        self.channel_dim = channel_dim
        self.qmin = -(1 << (bits - 1)) if signed else 0
        self.qmax = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
        self.step_param = nn.Parameter(torch.zeros(channels) if pow2 else torch.ones(channels))
        self.register_buffer("initialized", torch.tensor(False))

    def extra_repr(self) -> str:
        kind = "INT" if self.signed else "UINT"
        return f"{kind}{self.bits}, channels={self.step_param.numel()}, pow2={self.pow2}"

    def _shape(self, x: torch.Tensor) -> list[int]:
        if self.channel_dim is None:
            return [1] * x.dim() if x.dim() else []
        shape = [1] * x.dim()
        shape[self.channel_dim] = -1
        return shape

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        step = mse_scale(x, self.qmin, self.qmax, self.channel_dim)
        self.step_param.copy_(torch.log2(step) if self.pow2 else step)
        self.initialized.fill_(True)

    def step(self) -> torch.Tensor:
        """The forward step size (a vector of one or ``channels`` float32 values)."""
        if self.pow2:
            return torch.exp2(round_ste(self.step_param))
        return self.step_param.abs().clamp_min(1e-10)

    def step_for(self, x: torch.Tensor) -> torch.Tensor:
        return self.step().reshape(self._shape(x))

    def integers(self, x: torch.Tensor) -> torch.Tensor:
        """The integers the forward pass uses (no gradient)."""
        with torch.no_grad():
            return torch.clamp(torch.round(x / self.step_for(x)), self.qmin, self.qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self.initialize(x)
        per_step_elements = x.numel() / self.step_param.numel()
        step = grad_scale(self.step_for(x), 1.0 / math.sqrt(per_step_elements * self.qmax))
        return torch.clamp(round_ste(x / step), self.qmin, self.qmax) * step

    def to_ir_weight(self, name: str, w: torch.Tensor) -> Weight:
        """The IR weight (``int_affine``, symmetric, per-channel steps) of ``w``."""
        return int_affine_weight(name, self.integers(w), self.step(), self.bits)


class ActQuant(LsqQuantizer):
    """A per-tensor activation quantizer inserted by ``prepare_qat``."""

    def __init__(self, bits: int, signed: bool, pow2: bool = False):
        super().__init__(bits, signed, channels=1, channel_dim=None, pow2=pow2)


def make_weight_quantizer(bits: int, channels: int, config: QuantConfig) -> LsqQuantizer:
    per_channel = config.per_channel_weights
    return LsqQuantizer(bits, True, channels if per_channel else 1, 0 if per_channel else None, pow2=config.pow2_scales)


def make_act_quantizer(bits: int, signed: bool, config: QuantConfig) -> ActQuant:
    return ActQuant(bits, signed, pow2=config.pow2_scales)
