"""Exact integer convolutions on oneDNN's int8 kernels (through torch), for hwsim's fast mode.

oneDNN multiplies uint8 activations (with a zero point) by int8 weights and accumulates in int32.
With unit scales and a float32 destination each output is that accumulator converted to float32,
which is exact while every |accumulator| stays below 2**24: the engine proves this bound from the
weights before it picks this path. Activations of any type spanning at most 256 values are moved
into uint8 by a constant offset (added to the zero point too, so the centred values are unchanged).

oneDNN's own padding is only used where every output window reads at least one real pixel: with a
nonzero source zero point and one input channel per group, it leaves outputs whose window lies
wholly in the padding unwritten (stale memory; found by hwsim's differential tests, torch 2.13).
Such layers, and asymmetric padding, are padded here (borders hold the zero point) and oneDNN gets
padding 0. Each layer geometry is probed once at plan time (cached) against a numpy reference.

The ops are torch's ``torch.ops.onednn`` entry points (the ones its x86 int8 inference uses). They
are probed once per process on adversarial convolutions (all-extreme values, which would expose
any 16-bit saturating multiply-add path) against a numpy reference; where torch lacks them or a
probe differs, ``available()`` is False and hwsim takes its next path (``hwsim.float_conv``, BLAS).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
    padding: list[int]  # oneDNN's symmetric padding (height, width)
    dilation: list[int]
    groups: int
    unit_scales: object = None  # torch.Tensor [O] of ones (made once)
    zero_points: object = None  # torch.Tensor [O] of zeros
    explicit_padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right, written here
    weight: object = None  # torch.Tensor int8 [O, C/g, kh, kw], repacked per input shape
    _work: threading.local = field(default_factory=threading.local)  # per thread: the padded uint8 input
    _by_shape: dict = field(default_factory=dict)  # input shape -> weights packed for exactly that shape

    def packed_for(self, shape: tuple[int, ...]) -> object:
        """The weights in the layout oneDNN's primitive for this [N, C, H, W] input wants: packed without
        the shape, oneDNN reorders them on every call (measured up to 4x the time of a 1x1 layer)."""
        if self.weight is None:
            return self.packed
        packed = self._by_shape.get(shape)
        if packed is None:
            import torch

            packed = torch.ops.onednn.qconv_prepack(
                self.weight, self.unit_scales, 1.0, self.zero_point, self.stride, self.padding, self.dilation,
                self.groups, list(shape),
            )  # fmt: skip
            self._by_shape[shape] = packed
        return packed

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x: logical [N, C, H, W] integers (any layout) -> accumulators float32 [N, OH, OW, O] (NHWC)."""
        import torch

        channels_last = x.transpose(0, 2, 3, 1)
        if any(self.explicit_padding):
            u8 = self._pad(channels_last)
        elif x.dtype == np.uint8 and self.offset == 0 and channels_last.flags.c_contiguous:
            u8 = channels_last
        else:
            u8 = layout.channels_last_uint8(x, self.offset)
        source = torch.from_numpy(u8).permute(0, 3, 1, 2)
        out = torch.ops.onednn.qconv2d_pointwise(
            source,
            1.0,
            self.zero_point,
            self.packed_for(tuple(source.shape)),
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

    def _pad(self, channels_last: np.ndarray) -> np.ndarray:
        """The uint8 input [N, H', W', C] with its borders at the zero point (borders written once)."""
        batch, height, width, channels = channels_last.shape
        top, left, bottom, right = self.explicit_padding
        shape = (batch, height + top + bottom, width + left + right, channels)
        padded = getattr(self._work, "padded", None)
        if padded is None or padded.shape != shape:  # reused while the batch shape stays (borders written once)
            padded = self._work.padded = np.full(shape, self.zero_point, dtype=np.uint8)
        inner = padded[:, top : top + height, left : left + width]
        np.add(channels_last, np.int32(self.offset), out=inner, casting="unsafe")
        return padded


def output_size(size: int, kernel: int, stride: int, before: int, after: int, dilation: int) -> int:
    """Output length of one convolution axis."""
    return (size + before + after - dilation * (kernel - 1) - 1) // stride + 1


def has_padding_only_window(size, kernel, stride, before, after, dilation) -> bool:
    """True when some output window of one axis reads only padding (every tap outside [0, size))."""
    outputs = output_size(size, kernel, stride, before, after, dilation)
    taps = np.arange(outputs)[:, None] * stride - before + np.arange(kernel)[None, :] * dilation
    return bool(((taps < 0) | (taps >= size)).all(axis=1).any())


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
    size: tuple[int, int],
) -> Int8Conv | None:
    """An Int8Conv for integer weights [O, C/g, kh, kw] and stored activations in [x_min, x_max]
    (zero point ``zero_point``) of spatial ``size``, or None when the layer does not fit int8, exactness
    is not proven, or oneDNN fails the probe of this layer geometry."""
    if not available():
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
    out_channels, per_group, kernel_h, kernel_w = weight.shape
    geometry = Geometry(
        out_channels, per_group, kernel_h, kernel_w, *size, tuple(stride), tuple(padding), tuple(dilation), groups
    )
    if min(geometry.output_shape()) < 1 or not geometry_exact(geometry, zero_point + offset):
        return None
    return _prepare(weight, offset, zero_point + offset, geometry)


@dataclass(frozen=True)
class Geometry:
    """Everything about a convolution layer but its values: the key of the per-geometry probe."""

    out_channels: int
    per_group: int  # input channels per group
    kernel_h: int
    kernel_w: int
    height: int
    width: int
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, left, bottom, right
    dilation: tuple[int, int]
    groups: int

    def output_shape(self) -> tuple[int, int]:
        top, left, bottom, right = self.padding
        return (
            output_size(self.height, self.kernel_h, self.stride[0], top, bottom, self.dilation[0]),
            output_size(self.width, self.kernel_w, self.stride[1], left, right, self.dilation[1]),
        )

    def explicit_padding(self) -> bool:
        """Pad in hwsim (not in oneDNN): asymmetric padding, or some window reads only padding."""
        top, left, bottom, right = self.padding
        return (
            top != bottom
            or left != right
            or has_padding_only_window(self.height, self.kernel_h, self.stride[0], top, bottom, self.dilation[0])
            or has_padding_only_window(self.width, self.kernel_w, self.stride[1], left, right, self.dilation[1])
        )


def _prepare(weight: np.ndarray, offset: int, zero_point: int, geometry: Geometry) -> Int8Conv:
    import torch

    channels = weight.shape[0]
    top, left, _, _ = geometry.padding
    explicit = geometry.padding if geometry.explicit_padding() else (0, 0, 0, 0)
    onednn_padding = [0, 0] if any(explicit) else [top, left]
    weight_tensor = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.int8))
    packed = torch.ops.onednn.qconv_prepack(
        weight_tensor,
        torch.ones(channels, dtype=torch.float32),
        1.0,
        zero_point,
        list(geometry.stride),
        onednn_padding,
        list(geometry.dilation),
        geometry.groups,
        None,
    )
    return Int8Conv(
        packed,
        channels,
        offset,
        zero_point,
        list(geometry.stride),
        onednn_padding,
        list(geometry.dilation),
        geometry.groups,
        torch.ones(channels, dtype=torch.float32),
        torch.zeros(channels, dtype=torch.int64),
        explicit,
        weight_tensor,
    )


def reference_conv(x: np.ndarray, weight: np.ndarray, zero_point: int, stride, padding, dilation) -> np.ndarray:
    """Plain numpy: sum over (c, u, v) of (x - zero_point) * w, zero padding (top, left, bottom, right);
    groups = channels / weight's channels; -> int64 [N, OH, OW, O]."""
    batch, channels, height, width = x.shape
    out_channels, per_group, kernel_h, kernel_w = weight.shape
    top, left, bottom, right = padding
    centred = np.pad(x.astype(np.int64) - zero_point, ((0, 0), (0, 0), (top, bottom), (left, right)))
    out_h = output_size(height, kernel_h, stride[0], top, bottom, dilation[0])
    out_w = output_size(width, kernel_w, stride[1], left, right, dilation[1])
    out = np.zeros((batch, out_h, out_w, out_channels), dtype=np.int64)
    groups = channels // per_group
    rows = out_channels // groups
    for g in range(groups):
        taps = weight[g * rows : (g + 1) * rows].astype(np.int64)
        for u in range(kernel_h):
            for v in range(kernel_w):
                y0, x0 = u * dilation[0], v * dilation[1]
                window = centred[
                    :,
                    g * per_group : (g + 1) * per_group,
                    y0 : y0 + stride[0] * (out_h - 1) + 1 : stride[0],
                    x0 : x0 + stride[1] * (out_w - 1) + 1 : stride[1],
                ]
                out[..., g * rows : (g + 1) * rows] += np.einsum("nchw,oc->nhwo", window, taps[:, :, u, v])
    return out


PROBE_BATCH = 2
DIRTY_BUFFERS = 8
PROBES = (  # (out channels, channels per group, kernel, size, stride, padding, dilation, groups, zero point)
    (5, 3, 3, 9, 1, 1, 1, 1, 3),
    (16, 16, 3, 8, 2, 1, 1, 1, 128),
    (64, 32, 3, 4, 1, 1, 1, 1, 0),
    (48, 32, 1, 5, 1, 0, 1, 1, 0),
    (24, 1, 3, 6, 1, 1, 1, 24, 128),
    (4, 1, 3, 4, 1, 3, 1, 1, 200),  # padding >= kernel, one input channel: a window wholly in padding
    (16, 1, 3, 4, 2, 4, 1, 8, 128),  # depthwise, 2 outputs per group, padding > kernel
    (8, 4, 3, 7, 1, 2, 2, 2, 5),  # dilation, groups
    (6, 3, 2, 7, 3, 1, 1, 1, 17),  # stride > kernel
)


@cache
def geometry_exact(geometry: Geometry, zero_point: int) -> bool:
    """True when oneDNN (as this module drives it) equals ``reference_conv`` on this geometry: random and
    extreme int8 weights and uint8 activations, each run into freshly dirtied memory (an output oneDNN
    leaves unwritten then shows). About 10 ms per geometry, mostly oneDNN's primitive creation."""
    import torch

    rng = np.random.default_rng(0)
    shape = (geometry.out_channels, geometry.per_group, geometry.kernel_h, geometry.kernel_w)
    x_shape = (PROBE_BATCH, geometry.per_group * geometry.groups, geometry.height, geometry.width)
    out_shape = (PROBE_BATCH, *geometry.output_shape(), geometry.out_channels)
    top = min(127, (FLOAT32_EXACT - 1) // ((UINT8_VALUES - 1) * math.prod(shape[1:])))  # every sum stays exact
    cases = (  # random, and extremes (adjacent -top * 255 pairs: a saturating 16-bit multiply-add shows)
        (rng.integers(-top, top + 1, shape), rng.integers(0, 256, x_shape)),
        (np.where(rng.random(shape) < 0.5, -top, top), rng.choice([0, 255], x_shape)),
    )
    for case, (weight, x) in enumerate(cases):
        expected = reference_conv(x, weight, zero_point, geometry.stride, geometry.padding, geometry.dilation)
        conv = _prepare(weight, 0, zero_point, geometry)
        dirty = [torch.full(out_shape, float(case * 7919 + i + 1)) for i in range(DIRTY_BUFFERS)]
        del dirty  # freed chunks of the output's size: the output likely lands in one
        got = conv(x.astype(np.uint8))
        if got.shape != expected.shape or not np.array_equal(got, expected):
            return False
    return True


@cache
def available() -> bool:
    """True when torch's oneDNN int8 convolution runs here and matches numpy on every probe geometry."""
    try:
        import torch

        torch.ops.onednn.qconv_prepack  # noqa: B018 - raises when the build lacks the op
        for out_channels, per_group, kernel, size, stride, pad, dilation, groups, zero_point in PROBES:
            geometry = Geometry(
                out_channels, per_group, kernel, kernel, size, size, (stride,) * 2, (pad,) * 4, (dilation,) * 2, groups
            )
            if not geometry_exact(geometry, zero_point):
                return False
        return True
    except Exception:  # noqa: BLE001 - any failure (missing op, unsupported CPU) means: not available
        return False
