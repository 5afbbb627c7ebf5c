"""Straight-through helpers whose forward values are exact (no (a - b).detach() + b tricks)."""

from __future__ import annotations

import torch


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """torch.round (half to even) forward, identity gradient."""
    return _RoundSTE.apply(x)


def grad_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity forward, gradient multiplied by ``factor`` (LSQ's step-size gradient scale)."""
    return _GradScale.apply(x, factor)
