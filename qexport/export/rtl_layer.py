"""One IR layer on an R x C weight-stationary array: PE choice, im2col tiling into folds, vector files, results.

The layer is the GEMM ``O[Sr x Sc] = A[Sr x T] @ B[T x Sc]`` per group (``hwsim.cost.systolic``'s
view: ``Sr`` output pixels, ``T`` window, ``Sc`` filters). Folds run groups outer, then column
folds, then row folds (SCALE-Sim's order); a fold loads the ``R x C`` weight tile (its last row
first) and streams all ``Sr`` activation rows. Row folds produce partial sums that the output
buffer adds (here: ``read_results``), which also adds the bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qexport import __version__
from qexport.errors import QExportError
from qexport.export.c_code import render_into
from qexport.export.rtl import TEMPLATES, PeSpec, encode, levels_word, render_pe, signed_bits, split_psum, to_hex
from qexport.formats import int_affine
from qexport.formats.base import per_channel
from qexport.ir.dtypes import IntType
from qexport.ir.graph import Graph, Node
from qexport.ir.ops import Op


def layer_pe(graph: Graph, node: Node, post_mac: str = "lut") -> tuple[PeSpec, np.ndarray, np.ndarray | None]:
    """The PE of a conv/linear node, its weight codes [O, K] and (codebook) level tables [O, L].

    ``post_mac="split"`` puts a post weight on the split PE (both accumulators in one pass) instead of
    the shift + LUT PE."""
    weight = graph.weights[node.attrs["weight"]]
    info = graph.tensors[node.inputs[0]]
    zero_point = info.quant.zero_point if info.quant else 0
    x_min, x_max = info.dtype.min - zero_point, info.dtype.max - zero_point
    acc_bits = graph.tensors[node.outputs[0]].dtype.bits + 1  # the bias is added after the array
    rows = weight.shape[0]
    a = {name: np.asarray(v) for name, v in weight.arrays.items()}
    flat = {name: v.reshape(rows, -1, *v.shape[len(weight.shape) :]) for name, v in a.items() if name != "levels"}
    fmt, levels = weight.format, None
    if fmt == "int_affine":
        dtype = IntType.parse(str(weight.attrs["dtype"]))
        zp = per_channel(weight, "zero_point", 0.0).astype(np.int64)
        integer = flat["values"].astype(np.int64) - zp[:, None]
        bits = signed_bits(dtype.min - int(zp.max()), dtype.max - int(zp.min()))
        spec = PeSpec("multiply", x_min, x_max, acc_bits, weight_bits=bits)
        return spec, encode(spec, integer=integer), None
    if fmt == "pot":
        max_e = int(weight.attrs["max_exponent"])
        spec = PeSpec("shift", x_min, x_max, acc_bits, max_shift=max_e)
        return spec, encode(spec, sign=flat["sign"], shift=max_e - flat["exponent"].astype(np.int64)), None
    if fmt == "apot":
        max_e = int(weight.attrs["max_exponent"])
        exponent = flat["exponent"].astype(np.int64)
        spec = PeSpec("apot", x_min, x_max, acc_bits, max_shift=max_e, terms=exponent.shape[-1])
        return spec, encode(spec, sign=flat["sign"], shift=np.where(exponent >= 0, max_e - exponent, -1)), None
    if fmt == "post":
        if post_mac not in ("lut", "split"):
            raise QExportError(f"rtl: layer {node.name!r}: post_mac must be lut or split, not {post_mac!r}")
        spec = PeSpec(
            "shift_lut" if post_mac == "lut" else "split",
            x_min,
            x_max,
            acc_bits,
            max_shift=int(weight.attrs["max_exponent"]),
            frac_bits=int(weight.attrs["lut_frac_bits"]),
        )
        return spec, encode(spec, sign=flat["sign"], exponent=flat["exponent"]), None
    if fmt == "codebook":
        levels = a["levels"].astype(np.int64)
        levels = np.broadcast_to(levels, (rows, levels.shape[-1])) if levels.ndim == 1 else levels
        spec = PeSpec(
            "codebook",
            x_min,
            x_max,
            acc_bits,
            weight_bits=signed_bits(int(levels.min()), int(levels.max())),
            levels=levels.shape[-1],
        )
        return spec, encode(spec, index=flat["indices"]), levels
    raise QExportError(f"rtl: layer {node.name!r}: no PE for weight format {fmt!r}")


def im2col(graph: Graph, node: Node, x: np.ndarray) -> np.ndarray:
    """[groups, Sr, T]: the layer's input (zero point removed, padding 0) as GEMM rows, (c, kh, kw) order."""
    info = graph.tensors[node.inputs[0]]
    zero_point = info.quant.zero_point if info.quant else 0
    x = np.asarray(x, dtype=np.int64) - zero_point
    if node.op is Op.LINEAR:
        return x.reshape(1, x.shape[0], -1)
    weight = graph.weights[node.attrs["weight"]]
    groups = int(node.attrs.get("groups", 1))
    kh, kw = weight.shape[2:]
    (sh, sw), (dh, dw) = node.attrs["stride"], node.attrs.get("dilation", [1, 1])
    top, left, bottom, right = node.attrs["padding"]
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    out_h = (padded.shape[2] - dh * (kh - 1) - 1) // sh + 1
    out_w = (padded.shape[3] - dw * (kw - 1) - 1) // sw + 1
    per_group = x.shape[1] // groups
    rows = []
    for n in range(x.shape[0]):
        for oy in range(out_h):
            for ox in range(out_w):
                y, x0 = oy * sh, ox * sw
                window = padded[n, :, y : y + dh * (kh - 1) + 1 : dh, x0 : x0 + dw * (kw - 1) + 1 : dw]
                rows.append(window.reshape(groups, per_group * kh * kw))
    return np.stack(rows, axis=1)


@dataclass
class LayerRtl:
    """What ``write_layer`` wrote and what ``read_results`` needs."""

    node: str
    spec: PeSpec
    rows: int
    cols: int
    groups: int
    vectors: int  # Sr
    window: int  # T
    filters: int  # Sc per group
    folds: list[tuple[int, int, int]]  # (group, column fold, row fold)
    bias: np.ndarray
    testbench: str
    files: list[Path]


def _bias(graph: Graph, node: Node, outs: int) -> np.ndarray:
    name = node.attrs.get("bias")
    if not name:
        return np.zeros(outs, dtype=np.int64)
    return int_affine.integers(graph.weights[name]).reshape(-1)


def write_layer(
    graph: Graph, node: Node, x: np.ndarray, rows: int, cols: int, out_dir: Path, post_mac: str = "lut"
) -> LayerRtl:
    """Render the PE, the array, the sequencer and the testbench of ``node`` and its vector files into ``out_dir``."""
    out_dir = Path(out_dir)
    spec, codes, levels = layer_pe(graph, node, post_mac)
    a = im2col(graph, node, x)
    groups, vectors, window = a.shape
    outs = codes.shape[0]
    filters = outs // groups
    folds = [
        (g, cf, rf)
        for g in range(groups)
        for cf in range(math.ceil(filters / cols))
        for rf in range(math.ceil(window / rows))
    ]
    wlines, xlines, llines = [], [], []
    for g, cf, rf in folds:
        filt = [g * filters + cf * cols + j for j in range(cols)]
        for i in reversed(range(rows)):  # the tile's last row enters first and ends at the bottom
            k = rf * rows + i
            word = 0
            for j, f in enumerate(filt):
                if k < window and cf * cols + j < filters:
                    word |= int(codes[f, k]) << (j * spec.wc)
            wlines.append(format(word, "x"))
        for n in range(vectors):
            word = 0
            for i in range(rows):
                k = rf * rows + i
                if k < window:
                    word |= int(to_hex(int(a[g, n, k]), spec.xw), 16) << (i * spec.xw)
            xlines.append(format(word, "x"))
        if levels is not None:
            word = 0
            for j, f in enumerate(filt):
                if cf * cols + j < filters:
                    word |= int(levels_word(spec, levels[f]), 16) << (j * spec.levels * spec.weight_bits)
            llines.append(format(word, "x"))
    files = [render_pe(spec, out_dir)]
    array_name = f"array_ws_{rows}x{cols}_{spec.name}"
    seq_name = f"ws_seq_{node.name}"
    tb_name = f"tb_{node.name}"
    common = {"version": __version__, "rows": rows, "cols": cols, "xw": spec.xw, "wc": spec.wc, "psw": spec.psw}
    array = {**common, "name": array_name, "pe": spec.name, "codebook": levels is not None}
    array["level_bits"] = spec.levels * spec.weight_bits
    seq = {"version": __version__, "name": seq_name, "rows": rows, "vectors": vectors, "folds": len(folds)}
    timeout = len(folds) * (2 * rows + cols + vectors) + 100
    tb = {**array, "name": tb_name, "array": array_name, "sequencer": seq_name, "folds": len(folds)}
    tb.update(vectors=vectors, timeout=timeout)
    files += render_into(
        out_dir,
        TEMPLATES,
        (),
        {f"{array_name}.v": "array_ws.v.j2"},
        {"a": array},
    )
    files += render_into(out_dir, TEMPLATES, (), {f"{seq_name}.v": "ws_sequencer.v.j2"}, {"s": seq})
    files += render_into(out_dir, TEMPLATES, (), {f"{tb_name}.v": "tb_array.v.j2"}, {"t": tb})
    for name, lines in (("wmem.hex", wlines), ("xmem.hex", xlines), ("lmem.hex", llines)):
        if lines:
            (out_dir / name).write_text("\n".join(lines) + "\n")
            files.append(out_dir / name)
    return LayerRtl(
        node.name, spec, rows, cols, groups, vectors, window, filters, folds, _bias(graph, node, outs), tb_name, files
    )


@dataclass
class LayerResult:
    acc: np.ndarray  # [Sr, O] int64: the layer's accumulator (bias added), split: the two sums [2, Sr, O]
    first_input: int
    last_output: int


def read_results(layer: LayerRtl, out_txt: Path) -> LayerResult:
    """Add up the testbench's per-fold partial sums (and the bias); the cycles of the first input and last result."""
    text = Path(out_txt).read_text().split("\n")
    if "TIMEOUT" in text:
        raise QExportError(f"rtl: layer {layer.node!r}: the simulation timed out ({out_txt})")
    parts = 2 if layer.spec.style == "split" else 1
    acc = np.zeros((parts, layer.vectors, layer.groups * layer.filters), dtype=np.int64)
    seen = [0] * layer.cols
    first, last = None, -1
    for line in text:
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "I":
            first = int(fields[1])
            continue
        cycle, col, value = int(fields[1]), int(fields[2]), fields[3]
        fold, n = divmod(seen[col], layer.vectors)
        seen[col] += 1
        g, cf, _ = layer.folds[fold]
        f = cf * layer.cols + col
        if f < layer.filters:
            acc[:, n, g * layer.filters + f] += split_psum(layer.spec, value)
        last = max(last, cycle)
    if first is None or any(count != len(layer.folds) * layer.vectors for count in seen):
        raise QExportError(f"rtl: layer {layer.node!r}: expected {len(layer.folds) * layer.vectors} results per column")
    acc[0] += layer.bias[None, :]
    return LayerResult(acc if parts == 2 else acc[0], first, last)
