"""Powers-of-sqrt(2) weights (POST, seed 002 section 3.3): even exponents shift, odd ones read a LUT.

Levels for ``bits`` bits: 0 and ``+-alpha * sqrt(2)**-k`` for ``k = 0 .. 2**(bits-1) - 2`` (the code
budget of ``qexport.quant.pot``). ``alpha`` is learned per output channel (LSQ-style gradient scale,
optionally a power of two). Also home of ``LevelQuantizer``, the table-driven generalisation of
``PotQuantizer`` that APoT shares: nearest level in the linear domain (ties to the larger), clipping
past the largest level, straight-through inside it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from qexport.errors import QExportError
from qexport.formats.post import product_table
from qexport.ir.graph import Weight
from qexport.quant.pot import PotQuantizer
from qexport.quant.ste import grad_scale

if TYPE_CHECKING:
    from qexport.quant.config import QuantConfig

MAX_POST_BITS = 6  # 7 bits would need exponents up to 62; the IR caps post exponents at 40
LUT_EXTRA_BITS = 4  # default lut_frac_bits = ceil(max_exponent / 2) + 4
MAX_LUT_FRAC_BITS = 24


class LevelQuantizer(PotQuantizer):
    """w ~ scale[c] * sign * magnitudes[i], i the nearest entry of an ascending table starting at 0.

    ``alpha()`` (inherited) is the per-channel scale; weights clip at ``scale * magnitudes[-1]``.
    """

    def __init__(self, bits: int, channels: int, magnitudes: np.ndarray, channel_dim: int = 0, pow2: bool = False):
        super().__init__(bits, channels, channel_dim, pow2)
        table = torch.tensor(magnitudes, dtype=torch.float32)
        self.register_buffer("magnitudes", table, persistent=False)
        # float64 midpoints of the float32 levels: a tie is an exact tie, resolved toward the larger level
        self.register_buffer("midpoints", (table[1:].double() + table[:-1].double()) / 2, persistent=False)

    @torch.no_grad()
    def initialize(self, w: torch.Tensor) -> None:
        """The largest level = per-channel max |w| (an all-zero channel gets scale 1)."""
        super().initialize(w / self.magnitudes[-1])

    def codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sign in {-1, 0, 1}, index into ``magnitudes``) of every weight (no gradient)."""
        with torch.no_grad():
            ratio = w.abs() / self.alpha().reshape(self._shape(w))
            index = torch.bucketize(ratio.double(), self.midpoints, right=True)
            return torch.sign(w) * (index > 0), index

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self.initialize(w)
        per_channel = w.numel() / self.alpha_param.numel()
        scale = grad_scale(self.alpha(), 1.0 / math.sqrt(per_channel)).reshape(self._shape(w))
        sign, index = self.codes(w)
        level = sign * self.magnitudes[index]
        ratio = w / scale
        inside = (ratio.abs() <= self.magnitudes[-1]).to(w.dtype)
        # forward value exactly scale * level; gradient 1 to w inside the range, LSQ-style to the scale
        return scale * (level + (ratio - ratio.detach()) * inside)


def post_max_exponent(bits: int) -> int:
    return (1 << (bits - 1)) - 2


def default_lut_frac_bits(bits: int) -> int:
    return (post_max_exponent(bits) + 1) // 2 + LUT_EXTRA_BITS


class PostQuantizer(LevelQuantizer):
    """w ~ alpha[c] * sign * sqrt(2)**-k; ``step()`` is the LUT grid alpha * 2**-lut_frac_bits."""

    def __init__(
        self, bits: int, channels: int, lut_frac_bits: int | None = None, channel_dim: int = 0, pow2: bool = False
    ):
        if not 3 <= bits <= MAX_POST_BITS:
            raise QExportError(f"post weights need 3 <= weight_bits <= {MAX_POST_BITS}, got {bits}")
        max_exponent = post_max_exponent(bits)
        frac_bits = default_lut_frac_bits(bits) if lut_frac_bits is None else int(lut_frac_bits)
        if not (max_exponent + 1) // 2 <= frac_bits <= MAX_LUT_FRAC_BITS:
            raise QExportError(
                f"post_lut_frac_bits={frac_bits} out of range {(max_exponent + 1) // 2}..{MAX_LUT_FRAC_BITS}"
            )
        magnitudes = np.sqrt(2.0) ** -np.arange(max_exponent, -1, -1, dtype=np.float64)  # ascending
        super().__init__(bits, channels, np.concatenate([[0.0], magnitudes]), channel_dim, pow2)
        self.lut_frac_bits = frac_bits

    def extra_repr(self) -> str:
        channels = self.alpha_param.numel()
        return f"POST{self.bits}, exponents 0..{self.max_exponent}, lut_frac_bits={self.lut_frac_bits}, {channels=}"

    def step(self) -> torch.Tensor:
        """The accumulator grid of the shift + LUT MAC: alpha * 2**-lut_frac_bits, per channel."""
        return self.alpha() * 2.0**-self.lut_frac_bits

    def exponents(self, index: torch.Tensor) -> torch.Tensor:
        """The exponent k of table entry ``index`` (0 for the zero level)."""
        return torch.where(index > 0, self.max_exponent + 1 - index, 0)

    def to_ir_weight(self, name: str, w: torch.Tensor) -> Weight:
        sign, index = self.codes(w)
        alpha = self.alpha().detach().to(torch.float32).numpy().astype(np.float64)
        return Weight(
            name,
            "post",
            tuple(w.shape),
            {"sign": sign.to(torch.int64).numpy(), "exponent": self.exponents(index).to(torch.int64).numpy()},
            {"scale": alpha.tolist(), "max_exponent": self.max_exponent, "lut_frac_bits": self.lut_frac_bits},
        )


def post_lut_table(bits: int, act_bits: int, lut_frac_bits: int, signed: bool = False) -> np.ndarray:
    """The odd-exponent table a shift + LUT MAC holds: ``[x - x_min, j]`` = round(x * sqrt(2)**-k *
    2**lut_frac_bits) for the j-th odd exponent k; shape [2**act_bits, number of odd exponents]."""
    x_min, x_max = (-(1 << (act_bits - 1)), (1 << (act_bits - 1)) - 1) if signed else (0, (1 << act_bits) - 1)
    odd = range(1, post_max_exponent(bits) + 1, 2)
    return np.stack([product_table(k, lut_frac_bits, x_min, x_max) for k in odd], axis=1)


def make_weight_quantizer(bits: int, channels: int, config: QuantConfig) -> PostQuantizer:
    """Per output channel; ``post_lut_frac_bits`` option (default ceil(max_exponent / 2) + 4)."""
    frac_bits = config.option("post_lut_frac_bits", default_lut_frac_bits(bits))
    return PostQuantizer(bits, channels, frac_bits, channel_dim=0, pow2=config.pow2_scales)
