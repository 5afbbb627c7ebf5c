"""Exact integer convolutions as one torch float32 (float64) conv2d, for hwsim's fast mode.

A layer splits into terms ``coeff_t [O, K] x table_t(x)``: one for linear formats (the table is the
centred activation itself), one per exponent class for powers of sqrt(2) (shifts and the sqrt(2)
LUT). Stacking the terms' tables as input channels makes the layer a single convolution whose every
product and partial sum is an integer; when the bound ``max_o sum_t sum_k |coeff_t[o, k]| *
max|table_t|`` stays below 2**24 (2**53) any summation order is exact in float32 (float64).

This is the path for layers oneDNN's int8 kernels cannot take (weights or activations past 8 bits,
sqrt(2) powers, CPUs without exact int8 dot products). While it runs NNPACK (Winograd/FFT) is off
and oneDNN is held to IEEE float32. Padding is written here (every table is 0 at the zero point) and
torch convolves without padding, so no window reads torch's padding. A probe checks exactness once
per process, and once per layer geometry at plan time (cached).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from hwsim.exact import FLOAT32_EXACT, float_type
from hwsim.int8_conv import reference_conv
from hwsim.kernels import layout

TABLE_LIMIT = 1 << 16  # activation values a lookup table may span


@dataclass
class FloatConv:
    """One convolution layer prepared for torch: stacked term weights and the activation tables."""

    weight: object  # torch.Tensor [O, T * C / groups, kh, kw], float32 or float64, channels-last
    tables: np.ndarray  # [T, X]: value of term t for stored activation x_offset + i
    x_offset: int
    padding: tuple[int, int, int, int]  # top, left, bottom, right (applied while stacking the terms)
    stride: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    _work: threading.local = field(default_factory=threading.local)  # per thread: the padded, stacked input

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x: logical [N, C, H, W] stored integers (any layout) -> accumulators [N, OH, OW, O] (NHWC)."""
        import torch

        batch, channels, height, width = x.shape
        top, left, bottom, right = self.padding
        shape = (batch, height + top + bottom, width + left + right, self.tables.shape[0] * channels)
        stacked = getattr(self._work, "stacked", None)
        if stacked is None or stacked.shape != shape:  # borders stay zero: table(0) = 0 in every term (planned so)
            stacked = self._work.stacked = np.zeros(shape, dtype=self.tables.dtype)
        layout.stack_terms(
            np.ascontiguousarray(x.transpose(0, 2, 3, 1)), self.tables, self.x_offset, top, left, stacked
        )
        with exact_float_convolution():
            out = torch.nn.functional.conv2d(
                torch.from_numpy(stacked).permute(0, 3, 1, 2),
                self.weight,
                stride=self.stride,
                dilation=self.dilation,
                groups=self.groups,
            )
        return out.permute(0, 2, 3, 1).numpy()


@contextmanager
def exact_float_convolution() -> Iterator[None]:
    """No NNPACK (its Winograd/FFT kernels round) and IEEE float32 in oneDNN (no bf16 shortcuts)."""
    import torch

    precision = torch.backends.mkldnn.conv.fp32_precision
    torch.backends.mkldnn.conv.fp32_precision = "ieee"
    try:
        with torch.backends.nnpack.flags(enabled=False):
            yield
    finally:
        torch.backends.mkldnn.conv.fp32_precision = precision


def plan_float_conv(
    terms: list[tuple[np.ndarray, np.ndarray]],
    weight_shape: tuple[int, ...],
    stored_min: int,
    zero_point: int,
    stride: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
    groups: int,
    size: tuple[int, int],
) -> tuple[FloatConv, int] | None:
    """(FloatConv, accumulator bound) for terms ``(table, coeff [O, K])`` of a [O, C/g, kh, kw] layer on
    inputs of spatial ``size``, each table indexed by stored activation - ``stored_min``; None when it
    cannot be one exact float convolution (or torch fails the probe of this geometry)."""
    if not terms or not available() or (len(terms) > 1 and groups != 1):
        return None
    tables = np.stack([np.asarray(table, dtype=np.int64) for table, _ in terms])
    if tables.shape[1] > TABLE_LIMIT or np.any(tables[:, zero_point - stored_min] != 0):
        return None  # padding is written as 0, which must be every term's value at the zero point
    largest = np.abs(tables).max(axis=1)
    sums = sum(np.abs(coeff).sum(axis=1) * int(top) for (_, coeff), top in zip(terms, largest, strict=True))
    bound = int(np.max(sums, initial=0))
    dtype = float_type(bound)
    if dtype is None:
        return None
    top, left, bottom, right = padding
    geometry = (
        weight_shape[0],
        len(terms) * weight_shape[1],
        *weight_shape[2:],
        size[0] + top + bottom,
        size[1] + left + right,
        tuple(stride),
        tuple(dilation),
        groups,
        np.dtype(dtype).name,
    )
    if not geometry_exact(*geometry):
        return None
    import torch

    out_channels = weight_shape[0]
    stacked = np.concatenate([np.asarray(coeff).reshape(out_channels, *weight_shape[1:]) for _, coeff in terms], 1)
    tensor = torch.from_numpy(stacked.astype(dtype)).contiguous(memory_format=torch.channels_last)
    conv = FloatConv(tensor, tables.astype(dtype), stored_min, tuple(padding), tuple(stride), tuple(dilation), groups)
    return conv, bound


@cache
def available() -> bool:
    """True when torch's float convolutions are exact here on integer data near the float32 bound."""
    try:
        import torch

        rng = np.random.default_rng(1)
        for channels, groups, extreme in ((64, 1, False), (64, 1, True), (24, 24, False), (3, 1, False)):
            x = rng.integers(0, 201, size=(16, channels, 9, 9))
            weight = rng.choice([-127, -1, 0, 1, 127], size=(channels, channels // groups, 3, 3))
            if extreme:  # sums up to 576 * 200 * 127, just below 2**24
                x, weight = np.full_like(x, 200), np.full_like(weight, 127)
            expected = reference_conv(x, weight, 0, (1, 1), (1,) * 4, (1, 1)).transpose(0, 3, 1, 2)
            assert np.abs(expected).max() < FLOAT32_EXACT
            with exact_float_convolution():
                for dtype in (torch.float32, torch.float64):
                    got = torch.nn.functional.conv2d(
                        torch.from_numpy(x).to(dtype).contiguous(memory_format=torch.channels_last),
                        torch.from_numpy(weight).to(dtype).contiguous(memory_format=torch.channels_last),
                        padding=1,
                        groups=groups,
                    )
                    if not np.array_equal(got.numpy().astype(np.int64), expected):
                        return False
        return True
    except Exception:  # noqa: BLE001 - any failure means: not available
        return False


@cache
def geometry_exact(out_channels, per_group, kernel_h, kernel_w, height, width, stride, dilation, groups, dtype) -> bool:
    """True when torch's unpadded float convolution of this geometry (input already padded) equals
    ``reference_conv`` on random integers and on the extremes of a sum just below float32's bound."""
    import torch

    rng = np.random.default_rng(2)
    shape = (out_channels, per_group, kernel_h, kernel_w)
    x_shape = (2, per_group * groups, height, width)
    top = max(1, min(127, (FLOAT32_EXACT - 1) // (255 * math.prod(shape[1:]))))
    cases = (
        (rng.integers(-top, top + 1, shape), rng.integers(-255, 256, x_shape)),
        (np.full(shape, top), np.full(x_shape, 255)),
        (np.where(rng.random(shape) < 0.5, -top, top), rng.choice([-255, 255], x_shape)),
    )
    with exact_float_convolution():
        for weight, x in cases:
            expected = reference_conv(x, weight, 0, stride, (0,) * 4, dilation)
            got = torch.nn.functional.conv2d(
                torch.from_numpy(x.astype(dtype)).contiguous(memory_format=torch.channels_last),
                torch.from_numpy(weight.astype(dtype)).contiguous(memory_format=torch.channels_last),
                stride=stride,
                dilation=dilation,
                groups=groups,
            )
            if not np.array_equal(got.permute(0, 2, 3, 1).numpy(), expected):
                return False
    return True
