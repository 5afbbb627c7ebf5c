"""Marker base class that lets the front end recognise an activation quantizer in a traced graph."""

from __future__ import annotations

import torch
from torch import nn


class ActivationQuantizer(nn.Module):
    """An activation quantizer: ``forward(x)`` fake-quantizes; the integer lowering reads
    ``bits``, ``signed``, ``qmin``, ``qmax`` and ``step()`` (one float32 value)."""

    bits: int
    signed: bool
    qmin: int
    qmax: int

    def step(self) -> torch.Tensor:
        raise NotImplementedError
