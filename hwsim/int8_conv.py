"""Exact integer convolutions on oneDNN's int8 kernels (through torch), for hwsim's fast mode.

oneDNN multiplies uint8 activations (with a zero point) by int8 weights and accumulates in int32.
With unit scales and a float32 destination each output is that accumulator converted to float32,
which is exact while every |accumulator| stays below 2**24: the engine proves this bound from the
weights before it picks this path. Activations of any type spanning at most 256 values are moved
into uint8 by a constant offset (added to the zero point too, so the centred values are unchanged).

The ops are torch's ``torch.ops.onednn`` entry points (the ones its x86 int8 inference uses). They
are probed once per process on adversarial convolutions (all-extreme values, which would expose
any 16-bit saturating multiply-add path) against a numpy reference; where torch lacks them or a
probe differs, ``available()`` is False and hwsim takes its next path (``hwsim.float_conv``, BLAS).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import numpy as np

from hwsim.exact import FLOAT32_EXACT
from hwsim.kernels import layout

INT32_LIMIT = 2**31
UINT8_VALUES = 256


@dataclass
class Int8Conv:
    """One convolution layer prepared for oneDNN: packed weights and the activation offset."""

    packed: object  # torch.Tensor, oneDNN's blocked weight layout
    channels: int
    offset: int  # stored activation + offset = the uint8 that oneDNN reads
    zero_point: int  # the uint8 activation that means 0 (padding reads it)
    stride: list[int]
    padding: list[int]
    dilation: list[int]
    groups: int
    unit_scales: object = None  # torch.Tensor [O] of ones (made once)
    zero_points: object = None  # torch.Tensor [O] of zeros

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x: logical [N, C, H, W] integers (any layout) -> accumulators float32 [N, OH, OW, O] (NHWC)."""
        import torch

        channels_last = x.transpose(0, 2, 3, 1)
        if x.dtype == np.uint8 and self.offset == 0 and channels_last.flags.c_contiguous:
            u8 = channels_last
        else:
            u8 = layout.channels_last_uint8(x, self.offset)
        out = torch.ops.onednn.qconv2d_pointwise(
            torch.from_numpy(u8).permute(0, 3, 1, 2),
            1.0,
            self.zero_point,
            self.packed,
            self.unit_scales,
            self.zero_points,
            None,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            1.0,
            0,
            torch.float32,
            "none",
            [],
            "",
        )
        return out.permute(0, 2, 3, 1).numpy()


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run torch's intra-op pool (oneDNN) with ``count`` threads inside the block (None: unchanged)."""
    if count is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def plan_int8_conv(
    weight: np.ndarray,
    x_min: int,
    x_max: int,
    zero_point: int,
    stride: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
    groups: int,
) -> Int8Conv | None:
    """An Int8Conv for integer weights [O, C/g, kh, kw] and stored activations in [x_min, x_max]
    (zero point ``zero_point``), or None when the layer does not fit int8 or exactness is not proven."""
    if not available():
        return None
    top, left, bottom, right = padding
    if top != bottom or left != right:
        return None
    if x_max - x_min >= UINT8_VALUES or weight.min(initial=0) < -128 or weight.max(initial=0) > 127:
        return None
    offset = -x_min
    if not 0 <= zero_point + offset < UINT8_VALUES:
        return None
    magnitude = np.abs(weight.reshape(weight.shape[0], -1).astype(np.int64)).sum(axis=1).max(initial=0)
    centred = max(abs(x_min - zero_point), abs(x_max - zero_point))
    if magnitude * centred >= FLOAT32_EXACT or magnitude * (UINT8_VALUES - 1) >= INT32_LIMIT:
        return None
    return _prepare(weight, offset, zero_point + offset, stride, (top, left), dilation, groups)


def _prepare(weight, offset, zero_point, stride, padding, dilation, groups) -> Int8Conv:
    import torch

    channels = weight.shape[0]
    packed = torch.ops.onednn.qconv_prepack(
        torch.from_numpy(np.ascontiguousarray(weight, dtype=np.int8)),
        torch.ones(channels, dtype=torch.float32),
        1.0,
        zero_point,
        list(stride),
        list(padding),
        list(dilation),
        groups,
        None,
    )
    return Int8Conv(
        packed,
        channels,
        offset,
        zero_point,
        list(stride),
        list(padding),
        list(dilation),
        groups,
        torch.ones(channels, dtype=torch.float32),
        torch.zeros(channels, dtype=torch.int64),
    )


def reference_conv(x: np.ndarray, weight: np.ndarray, zero_point: int, stride, padding, dilation, groups) -> np.ndarray:
    """Plain numpy: sum over (c, u, v) of (x - zero_point) * w, zero padding; -> int64 [N, OH, OW, O]."""
    batch, channels, height, width = x.shape
    out_channels, per_group, kernel_h, kernel_w = weight.shape
    centred = np.pad(x.astype(np.int64) - zero_point, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    out_h = (height + 2 * padding[0] - dilation[0] * (kernel_h - 1) - 1) // stride[0] + 1
    out_w = (width + 2 * padding[1] - dilation[1] * (kernel_w - 1) - 1) // stride[1] + 1
    out = np.zeros((batch, out_h, out_w, out_channels), dtype=np.int64)
    rows_per_group = out_channels // groups
    for o in range(out_channels):
        group = o // rows_per_group
        for u in range(kernel_h):
            for v in range(kernel_w):
                y0, x0 = u * dilation[0], v * dilation[1]
                window = centred[
                    :,
                    group * per_group : (group + 1) * per_group,
                    y0 : y0 + stride[0] * (out_h - 1) + 1 : stride[0],
                    x0 : x0 + stride[1] * (out_w - 1) + 1 : stride[1],
                ]
                out[..., o] += np.einsum("nchw,c->nhw", window, weight[o, :, u, v].astype(np.int64))
    return out


PROBES = (  # (batch, channels, size, out channels, kernel, stride, groups); every |sum| < 2**24
    (2, 3, 9, 5, 3, 1, 1),
    (2, 16, 8, 16, 3, 2, 1),
    (1, 32, 4, 64, 3, 1, 1),
    (2, 32, 5, 48, 1, 1, 1),
    (2, 24, 6, 24, 3, 1, 24),
)


@cache
def available() -> bool:
    """True when torch's oneDNN int8 convolution runs here and matches numpy on every probe."""
    try:
        import torch

        torch.ops.onednn.qconv_prepack  # noqa: B018 - raises when the build lacks the op
        rng = np.random.default_rng(0)
        for batch, channels, size, out_channels, kernel, stride, groups in PROBES:
            shape = (out_channels, channels // groups, kernel, kernel)
            for weight, x, zero_point in (
                (rng.integers(-128, 128, shape), rng.integers(0, 256, (batch, channels, size, size)), 3),
                (np.full(shape, -128), np.full((batch, channels, size, size), 255), 0),
                (np.full(shape, 127), np.full((batch, channels, size, size), 255), 0),
                (np.where(rng.random(shape) < 0.5, -128, 127), rng.choice([0, 255], (batch, channels, size, size)), 0),
            ):
                pad = kernel // 2
                conv = _prepare(weight, 0, zero_point, (stride, stride), (pad, pad), (1, 1), groups)
                got = conv(x.astype(np.uint8))
                expected = reference_conv(x, weight, zero_point, (stride, stride), (pad, pad), (1, 1), groups)
                if got.shape != expected.shape or not np.array_equal(got.astype(np.int64), expected):
                    return False
        return True
    except Exception:  # noqa: BLE001 - any failure (missing op, unsupported CPU) means: not available
        return False
