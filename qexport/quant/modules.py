"""Fake-quantized layers whose arithmetic the integer IR reproduces exactly.

Each layer knows the quantizer of its input (``input_quant``, set by ``prepare_qat``):
the bias is quantized to the accumulator step ``input_step * weight_step`` and an
average pool rounds back onto its input's grid, exactly as the integer graph does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from qexport.quant.config import QuantConfig
from qexport.quant.lsq import LsqQuantizer
from qexport.quant.registry import make_weight_quantizer
from qexport.quant.ste import round_ste

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


class InputQuantRef:
    """Holds the upstream activation quantizer without registering it as a submodule."""

    def set_input_quant(self, quantizer: LsqQuantizer) -> None:
        object.__setattr__(self, "_input_quant", quantizer)

    @property
    def input_quant(self) -> LsqQuantizer:
        quantizer = getattr(self, "_input_quant", None)
        if quantizer is None:
            raise RuntimeError(f"{type(self).__name__}: input quantizer not set (run prepare_qat)")
        return quantizer

    def input_factor(self) -> torch.Tensor | None:
        """The input's per-sample step factor of the current batch ([N], e.g. ASQ's beta), or None."""
        factor = getattr(self.input_quant, "sample_factor", None)
        return None if factor is None else factor()


class _QuantWeighted(InputQuantRef):
    weight: torch.Tensor
    bias: torch.Tensor | None
    weight_quant: LsqQuantizer

    def accumulator_step(self) -> torch.Tensor:
        """input step * weight step, per output channel (float32, as the forward uses it)."""
        return self.input_quant.step().reshape(()) * self.weight_quant.step()

    def quant_weight(self) -> torch.Tensor:
        return self.weight_quant(self.weight)

    def quant_bias(self) -> torch.Tensor | None:
        if self.bias is None:
            return None
        step = self.accumulator_step()
        return torch.clamp(round_ste(self.bias / step), INT32_MIN, INT32_MAX) * step

    def biased_forward(self, layer: Callable[[torch.Tensor | None], torch.Tensor]) -> torch.Tensor:
        """``layer(bias)`` with the quantized bias; a per-sample input scale (ASQ) scales the whole
        accumulator, bias included, as the integer graph does."""
        bias, factor = self.quant_bias(), self.input_factor()
        if factor is None or bias is None:
            return layer(bias)
        out = layer(None)
        ones = (1,) * (out.dim() - 2)
        return out + bias.reshape(1, -1, *ones) * factor.reshape(-1, 1, *ones)

    def bias_integers(self) -> torch.Tensor:
        with torch.no_grad():
            return torch.clamp(torch.round(self.bias / self.accumulator_step()), INT32_MIN, INT32_MAX)


class QConv2d(nn.Conv2d, _QuantWeighted):
    def __init__(
        self,
        *args,
        weight_bits: int = 4,
        weight_method: str = "lsq",
        config: QuantConfig | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.weight_quant = make_weight_quantizer(
            weight_method, weight_bits, self.out_channels, config or QuantConfig()
        )

    @classmethod
    def from_float(cls, conv: nn.Conv2d, **quant_kwargs) -> QConv2d:
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("only numeric zero padding is supported")
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            **quant_kwargs,
        )
        layer.load_state_dict(conv.state_dict(), strict=False)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args = (self.stride, self.padding, self.dilation, self.groups)
        return self.biased_forward(lambda bias: F.conv2d(x, self.quant_weight(), bias, *args))


class QLinear(nn.Linear, _QuantWeighted):
    def __init__(
        self,
        *args,
        weight_bits: int = 4,
        weight_method: str = "lsq",
        config: QuantConfig | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.weight_quant = make_weight_quantizer(
            weight_method, weight_bits, self.out_features, config or QuantConfig()
        )

    @classmethod
    def from_float(cls, linear: nn.Linear, **quant_kwargs) -> QLinear:
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, **quant_kwargs)
        layer.load_state_dict(linear.state_dict(), strict=False)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.biased_forward(lambda bias: F.linear(x, self.quant_weight(), bias))


class QAvgPool2d(nn.Module, InputQuantRef):
    """Average pool rounded back onto the input's grid (kernel None means global)."""

    def __init__(self, kernel_size=None, stride=None, padding=0, count_include_pad: bool = True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.count_include_pad = count_include_pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_size is None:
            pooled = F.adaptive_avg_pool2d(x, 1)
        else:
            pooled = F.avg_pool2d(
                x, self.kernel_size, self.stride, self.padding, count_include_pad=self.count_include_pad
            )
        step, factor = self.input_quant.step().reshape(()), self.input_factor()
        if factor is not None:  # round on the per-sample grid
            step = step * factor.reshape(-1, 1, 1, 1)
        return round_ste(pooled / step) * step
