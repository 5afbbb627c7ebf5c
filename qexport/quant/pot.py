"""Power-of-two weights with a learned clipping scale (sign and exponent: a shift MAC).

Levels for ``bits`` bits: 0 and ``+-alpha * 2**-e`` for ``e = 0 .. 2**(bits-1) - 2`` (one sign bit,
the remaining code points for exponents and zero). ``alpha`` is learned per output channel
(LSQ-style gradient scale) and may be constrained to a power of two. A weight goes to the level
nearest to it in the linear domain (ties toward the larger level); values past ``alpha`` clip.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from qexport.ir.graph import Weight
from qexport.quant.ste import grad_scale, round_ste

if TYPE_CHECKING:
    from qexport.quant.config import QuantConfig


def pot_exponents(ratio: torch.Tensor, max_exponent: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(exponent, nonzero mask) of the level nearest to ``ratio`` = |w| / alpha (ties: the larger level)."""
    ratio = ratio.clamp(0.0, 1.0)
    lower = torch.floor(-torch.log2(ratio.clamp_min(2.0 ** -(max_exponent + 2)))).clamp(0, max_exponent)
    big, small = torch.exp2(-lower), torch.exp2(-(lower + 1))
    exponent = torch.where(big - ratio <= ratio - small, lower, lower + 1).clamp(max=max_exponent)
    return exponent, ratio >= 0.5 * 2.0**-max_exponent


class PotQuantizer(nn.Module):
    """w ~ alpha[c] * sign * 2**-e, per output channel; ``step()`` is the grid alpha * 2**-max_exponent."""

    def __init__(self, bits: int, channels: int, channel_dim: int = 0, pow2: bool = False):
        super().__init__()
        self.bits, self.pow2, self.channel_dim = bits, pow2, channel_dim
        self.max_exponent = (1 << (bits - 1)) - 2
        self.alpha_param = nn.Parameter(torch.zeros(channels) if pow2 else torch.ones(channels))
        self.register_buffer("initialized", torch.tensor(False))

    def extra_repr(self) -> str:
        return f"POT{self.bits}, exponents 0..{self.max_exponent}, channels={self.alpha_param.numel()}"

    def _shape(self, x: torch.Tensor) -> list[int]:
        shape = [1] * x.dim()
        shape[self.channel_dim] = -1
        return shape

    @torch.no_grad()
    def initialize(self, w: torch.Tensor) -> None:
        """alpha = per-channel max |w| (an all-zero channel keeps 1)."""
        peak = w.detach().abs().transpose(0, self.channel_dim).reshape(w.shape[self.channel_dim], -1).amax(dim=1)
        peak = torch.where(peak > 0, peak, torch.ones_like(peak))
        self.alpha_param.copy_(torch.log2(peak) if self.pow2 else peak)
        self.initialized.fill_(True)

    def alpha(self) -> torch.Tensor:
        if self.pow2:
            return torch.exp2(round_ste(self.alpha_param))
        return self.alpha_param.abs().clamp_min(1e-10)

    def step(self) -> torch.Tensor:
        """The integer grid of the shift MAC: alpha * 2**-max_exponent, per channel."""
        return self.alpha() * 2.0**-self.max_exponent

    def codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sign in {-1, 0, 1}, exponent) of every weight (no gradient)."""
        with torch.no_grad():
            alpha = self.alpha().reshape(self._shape(w))
            exponent, nonzero = pot_exponents(w.abs() / alpha, self.max_exponent)
            return torch.sign(w) * nonzero, exponent

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self.initialize(w)
        per_channel = w.numel() / self.alpha_param.numel()
        alpha = grad_scale(self.alpha(), 1.0 / math.sqrt(per_channel)).reshape(self._shape(w))
        sign, exponent = self.codes(w)
        level = sign * torch.exp2(-exponent)
        clipped = (w.abs() > alpha).to(w.dtype)
        # straight-through for w inside the clipping range; alpha learns from level (and the clip)
        ratio = w / alpha
        ste_ratio = level + (ratio - ratio.detach()) * (1 - clipped)
        return alpha * ste_ratio

    def to_ir_weight(self, name: str, w: torch.Tensor) -> Weight:
        sign, exponent = self.codes(w)
        alpha = self.alpha().detach().to(torch.float32).numpy().astype(np.float64)
        return Weight(
            name,
            "pot",
            tuple(w.shape),
            {"sign": sign.to(torch.int64).numpy(), "exponent": exponent.to(torch.int64).numpy()},
            {"scale": alpha.tolist(), "max_exponent": self.max_exponent},
        )


def make_weight_quantizer(bits: int, channels: int, config: QuantConfig) -> PotQuantizer:
    """Always per output channel."""
    return PotQuantizer(bits, channels, channel_dim=0, pow2=config.pow2_scales)
