"""Checks shared by the tests of the shift-based weight quantizers (APoT, POST)."""

from __future__ import annotations

import math

import torch

from qexport.formats import get_format


def check_straight_through_gradients(quantizer, w: torch.Tensor, alpha: float, pow2: bool) -> None:
    """Gradients pass to weights inside [-alpha, alpha] only, and the clipping scale gets LSQ's gradient:
    (level - w / alpha) inside the range, the level when clipped, scaled by 1 / sqrt(elements per channel);
    with a power-of-two scale 2^round(p), times ln 2 (straight through the round)."""
    w = w.detach().clone().requires_grad_(True)
    out = quantizer(w)
    out.sum().backward()
    inside = (w.abs() <= alpha).double()
    assert w.grad.tolist() == inside.tolist()
    expected = ((out.detach().double() - w.detach().double() * inside).sum(dim=1)) / math.sqrt(w.shape[1])
    if pow2:
        expected = expected * math.log(2.0)
    torch.testing.assert_close(quantizer.alpha_param.grad.double(), expected, rtol=1e-6, atol=1e-7)
    assert torch.all(quantizer.alpha_param.grad != 0)


def check_zero_channel_stays_zero(quantizer, format_name: str) -> None:
    """An all-zero channel quantizes to zeros with a unit scale and zero signs in the IR weight."""
    w = torch.tensor([[0.0, 0.0, 0.0], [0.5, -0.25, 0.1]])
    out = quantizer(w)
    assert torch.equal(out[0], torch.zeros(3)) and quantizer.alpha()[0].item() == 1.0
    weight = quantizer.to_ir_weight("w", w)
    get_format(format_name).check(weight)
    assert weight.arrays["sign"][0].tolist() == [0, 0, 0]
