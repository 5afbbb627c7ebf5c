"""The C runtime's fast conv2d / linear path (``qx_dot_t`` in templates/c/qx_runtime.h): when it applies.

A layer qualifies when its input is stored in one byte, its weights are integers in [-128, 127] of a
format that multiplies (int_affine, codebook, pot, apot: a shift is a multiply by a power of two), and
every partial sum of ``sum(u * w) - x_off * row_sum + bias`` (u = x - x_min in [0, 255]) fits int32.
Such a conv2d reads a padded channels-last copy of its input (scratch ``padded``), so the im2col row of
an output pixel (scratch ``cols``, a block of pixels at a time) is a few contiguous copies; its weight
rows are packed in the same (kernel row, kernel column, channel) order. A conv2d with at least
``BLOCK_MIN_OUTPUTS`` outputs per group uses the blocked weight layout (``blocked_layout``): output
channels in blocks of ``BLOCK_N``, K padded to a multiple of 4, [group][block][K / 4][BLOCK_N][4]; when
its window rows are runs of whole groups of 4 bytes it reads the padded copy in place (no im2col, no ``cols`` scratch).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from qexport.export.c_arena import CONTAINERS
from qexport.formats import get_format
from qexport.formats.base import per_channel
from qexport.ir.dtypes import IntType
from qexport.ir.graph import Graph, Node, Weight
from qexport.ir.ops import Op

DOT_FORMATS = ("int_affine", "codebook", "pot", "apot")
COL_BLOCK_BYTES = 4096  # im2col block: as many output pixels as fit (at least one)
INT32_MAX = (1 << 31) - 1
BLOCK_N = 16  # output channels per weight block (QX_BLOCK_N)
TILE = 8  # output pixels per pass of the blocked kernel (QX_TILE)
BLOCK_MIN_OUTPUTS = 8  # outputs per group from which a conv2d uses the blocked layout (at most 2x padding)
DISABLED = {"enabled": 0, "direct": False, "row_sum": None, "x_min": 0, "x_off": 0, "block": 1}
DISABLED.update(padded_h=0, padded_w=0, cols=0, wbuf=0, padded=0, blocked=0, k_pad=0, im2col=1)


def k_padded(row_len: int) -> int:
    return -(-row_len // 4) * 4


def blocked_layout(ints: np.ndarray, groups: int) -> np.ndarray:
    """Weight integers [out, K] (channels-last K order) in the blocked layout, zero padded, flattened."""
    out, row_len = ints.shape
    cout_g, k_pad = out // groups, k_padded(row_len)
    blocks = -(-cout_g // BLOCK_N)
    padded = np.zeros((groups, blocks * BLOCK_N, k_pad), dtype=np.int64)
    padded[:, :cout_g, :row_len] = ints.reshape(groups, cout_g, row_len)
    tiled = padded.reshape(groups, blocks, BLOCK_N, k_pad // 4, 4).transpose(0, 1, 3, 2, 4)
    return tiled.reshape(-1)


def channels_last(weight: Weight) -> Weight:
    """The conv weight with every per-element array in [out, kernel row, kernel column, in channel] order."""
    arrays = {
        key: np.moveaxis(value, 1, 3) if value.shape[:4] == tuple(weight.shape) else value
        for key, value in ((k, np.asarray(v)) for k, v in weight.arrays.items())
    }
    return replace(weight, arrays=arrays)


def plan_dot(graph: Graph, node: Node, x_container: str, bias: list[int] | None) -> dict:
    """Template fields of the layer's qx_dot_t, with the scratch bytes it needs (``cols``, ``wbuf``)."""
    weight = graph.weights[node.attrs["weight"]]
    info = graph.tensors[node.inputs[0]]
    if weight.format not in DOT_FORMATS or CONTAINERS[x_container][0] != 1:
        return dict(DISABLED)
    ints = get_format(weight.format).integers(weight).astype(np.int64).reshape(weight.shape[0], -1)
    zp = 0 if info.quant is None else int(info.quant.zero_point)
    x_min, span = info.dtype.min, info.dtype.max - info.dtype.min
    x_off = zp - x_min
    if ints.size == 0 or ints.min() < -128 or ints.max() > 127 or not 0 <= x_off <= 255 or span > 255:
        return dict(DISABLED)
    row_sum = ints.sum(axis=1)
    bound = np.abs(ints).sum(axis=1) * span + x_off * np.abs(row_sum) + np.abs(np.asarray(bias or 0, dtype=np.int64))
    if int(bound.max()) > INT32_MAX:
        return dict(DISABLED)
    row_len = ints.shape[1]
    direct = weight.format == "int_affine" and IntType.parse(str(weight.attrs["dtype"])) == IntType(True, 8)
    direct = direct and not per_channel(weight, "zero_point", 0.0).any()  # the packed bytes are the int8 values
    padded_h = padded_w = padded = blocked = k_pad = 0
    im2col = 1
    block, wbuf = 1, int(ints.size)
    if node.op is Op.CONV2D:
        _, cin_g, k_h, k_w = weight.shape
        _, out_h, out_w = graph.tensors[node.outputs[0]].shape[1:]
        (s_h, s_w), (d_h, d_w) = node.attrs["stride"], node.attrs["dilation"]
        padded_h, padded_w = (out_h - 1) * s_h + (k_h - 1) * d_h + 1, (out_w - 1) * s_w + (k_w - 1) * d_w + 1
        padded = padded_h * padded_w * cin_g
        groups = node.attrs["groups"]
        blocked = int(weight.shape[0] // groups >= BLOCK_MIN_OUTPUTS)
        k_pad = k_padded(row_len) if blocked else 0
        step = TILE if blocked else 1  # blocked: whole tiles of pixels per im2col block
        block = min(out_h * out_w, max(step, COL_BLOCK_BYTES // (k_pad or row_len) // step * step))
        if blocked:
            wbuf = groups * -(-weight.shape[0] // groups // BLOCK_N) * BLOCK_N * k_pad
            run = k_w * cin_g if d_w == 1 else cin_g  # contiguous bytes of a window row in the padded copy
            im2col = int(run % 4 != 0)  # runs of whole groups of 4: the kernel reads the padded copy in place
    return {
        "enabled": 1,
        "direct": direct,
        "row_sum": [int(v) for v in row_sum],
        "x_min": x_min,
        "x_off": x_off,
        "block": block,
        "padded_h": padded_h,
        "padded_w": padded_w,
        "padded": padded,
        "cols": block * (k_pad or row_len) if im2col else 0,
        "wbuf": 0 if direct else wbuf,
        "blocked": blocked,
        "k_pad": k_pad,
        "im2col": im2col,
    }
