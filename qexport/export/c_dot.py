"""The C runtime's fast conv2d / linear path (``qx_dot_t`` in templates/c/qx_runtime.h): when it applies.

A layer qualifies when its input is stored in one byte, its weights are integers in [-128, 127] of a
format that multiplies (int_affine, codebook, pot, apot: a shift is a multiply by a power of two), and
every partial sum of ``sum(u * w) - x_off * row_sum + bias`` (u = x - x_min in [0, 255]) fits int32.
Such a conv2d reads a padded channels-last copy of its input (scratch ``padded``), so the im2col row of
an output pixel (scratch ``cols``, a block of pixels at a time) is a few contiguous copies; its weight
rows are packed in the same (kernel row, kernel column, channel) order.
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
DISABLED = {"enabled": 0, "direct": False, "row_sum": None, "x_min": 0, "x_off": 0, "block": 1}
DISABLED.update(padded_h=0, padded_w=0, cols=0, wbuf=0, padded=0)


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
    padded_h = padded_w = padded = 0
    block = 1
    if node.op is Op.CONV2D:
        _, cin_g, k_h, k_w = weight.shape
        _, out_h, out_w = graph.tensors[node.outputs[0]].shape[1:]
        (s_h, s_w), (d_h, d_w) = node.attrs["stride"], node.attrs["dilation"]
        padded_h, padded_w = (out_h - 1) * s_h + (k_h - 1) * d_h + 1, (out_w - 1) * s_w + (k_w - 1) * d_w + 1
        padded = padded_h * padded_w * cin_g
        block = max(1, min(out_h * out_w, COL_BLOCK_BYTES // row_len))
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
        "cols": block * row_len,
        "wbuf": 0 if direct else int(ints.size),
    }
