"""Additive powers-of-two weights (APoT, Li et al., ICLR 2020): two shifts and an add per MAC.

``bits`` = one sign bit + ``m = bits - 1`` magnitude bits. Magnitudes are ``p1 + p2`` with
``p1 in {0, 2**0, 2**-2, 2**-4, ...}`` (``2**ceil(m/2)`` values) and ``p2 in {0, 2**-1, 2**-3, ...}``
(``2**floor(m/2)`` values): the paper's construction (Eq. 5, base width k = m/2, n = 2 terms).
Even and odd exponents never collide, so all ``2**m`` sums are distinct. Weights are
``sign * scale[c] * (p1 + p2)``; the clipping threshold alpha = scale * max(p1 + p2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from qexport.errors import QExportError
from qexport.ir.graph import Weight
from qexport.quant.post import LevelQuantizer

if TYPE_CHECKING:
    from qexport.quant.config import QuantConfig

MAX_APOT_BITS = 7  # 8 bits: sums like 2**-1 + 2**-28 are no longer exact in float32


def apot_terms(bits: int) -> tuple[list[int], list[int]]:
    """Non-zero exponents of term 1 (even: 0, 2, 4, ...) and term 2 (odd: 1, 3, 5, ...)."""
    magnitude_bits = bits - 1
    first, second = (1 << ((magnitude_bits + 1) // 2)) - 1, (1 << (magnitude_bits // 2)) - 1
    return [2 * i for i in range(first)], [2 * i + 1 for i in range(second)]


def apot_levels(bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(ascending magnitudes p1 + p2, exponent pairs [levels, 2] with -1 for an absent term)."""
    first, second = apot_terms(bits)
    pairs = np.array([(a, b) for a in [-1, *first] for b in [-1, *second]], dtype=np.int64)
    values = np.where(pairs >= 0, 2.0 ** -pairs.clip(min=0).astype(np.float64), 0.0).sum(axis=1)
    order = np.argsort(values, kind="stable")
    return values[order], pairs[order]


class ApotQuantizer(LevelQuantizer):
    """w ~ scale[c] * sign * (2**-e1 + 2**-e2); ``step()`` is the grid scale * 2**-max_exponent."""

    def __init__(self, bits: int, channels: int, channel_dim: int = 0, pow2: bool = False):
        if not 3 <= bits <= MAX_APOT_BITS:
            raise QExportError(f"apot weights need 3 <= weight_bits <= {MAX_APOT_BITS}, got {bits}")
        magnitudes, pairs = apot_levels(bits)
        super().__init__(bits, channels, magnitudes, channel_dim, pow2)
        self.max_exponent = int(pairs.max())  # the inherited step() is scale * 2**-max_exponent
        self.register_buffer("pairs", torch.from_numpy(pairs), persistent=False)

    def extra_repr(self) -> str:
        return f"APoT{self.bits}, {len(self.pairs)} magnitudes, max_exponent={self.max_exponent}"

    def to_ir_weight(self, name: str, w: torch.Tensor) -> Weight:
        sign, index = self.codes(w)
        scale = self.alpha().detach().to(torch.float32).numpy().astype(np.float64)
        return Weight(
            name,
            "apot",
            tuple(w.shape),
            {"sign": sign.to(torch.int64).numpy(), "exponent": self.pairs[index].numpy()},
            {"scale": scale.tolist(), "max_exponent": self.max_exponent},
        )


def make_weight_quantizer(bits: int, channels: int, config: QuantConfig) -> ApotQuantizer:
    """Always per output channel; with ``pow2_scales`` the grid unit ``scale`` is a power of two."""
    return ApotQuantizer(bits, channels, channel_dim=0, pow2=config.pow2_scales)
