"""HLS C++17 from the IR: one kernel instance per layer with ap_int / ap_uint types, a top function, a testbench.

``write_hls(graph, out_dir)`` writes ``out_dir/hls/``: ``qx_hls.h`` and ``tb.cpp`` (plain files of the
package), ``model_hls.h``, ``model.cpp`` and a ``Makefile`` from Jinja2 templates. Weights stay at
their IR bit widths. The ap_types headers are not copied: they come from the hls4ml package
(``ap_types_dir``), and the Makefile points at them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from qexport import __version__
from qexport.errors import QExportError
from qexport.export.c_code import c_context, render_into
from qexport.export.c_pack import partial_sum_bound
from qexport.formats.base import per_channel
from qexport.formats.post import product_table
from qexport.ir.dtypes import IntType
from qexport.ir.graph import Graph, Node, Weight
from qexport.ir.ops import Op, dynamic_operands

PLAIN_FILES = ("qx_hls.h", "tb.cpp")
TEMPLATES = {"model_hls.h": "model_hls.h.j2", "model.cpp": "model.cpp.j2", "Makefile": "Makefile.j2"}


def ap_types_dir() -> Path | None:
    """Xilinx's ap_types headers as shipped in the hls4ml wheel (None when hls4ml is not installed)."""
    spec = importlib.util.find_spec("hls4ml")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "templates" / "vivado" / "ap_types"
    return path if (path / "ap_int.h").is_file() else None


def ap_type(dtype: IntType) -> str:
    return f"ap_int<{dtype.bits}>" if dtype.signed else f"ap_uint<{dtype.bits}>"


def _signed_for(values: np.ndarray) -> str:
    values = np.asarray(values, dtype=np.int64)
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    return f"ap_int<{IntType.for_range(min(low, -1), max(high, 1)).bits}>"


def _literals(values) -> list[str]:
    return [f"{int(v)}" if -(2**31) <= int(v) < 2**31 else f"{int(v)}LL" for v in np.asarray(values).reshape(-1)]


def _array(name: str, type_: str, values) -> dict:
    """A weight field: stored as the smallest C integer type, read through its ap_int / ap_uint width."""
    values = np.asarray(values, dtype=np.int64)
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    store = next(f"int{b}_t" for b in (8, 16, 32, 64) if -(2 ** (b - 1)) <= low and high < 2 ** (b - 1))
    return {"name": name, "type": type_, "store": store, "data": _literals(values)}


def weight_arrays(weight: Weight, x_min: int, x_max: int) -> tuple[list[dict], dict[str, int], bool]:
    """The layer's ap_int arrays, extra constants, and whether codebook levels are shared."""
    a = {key: np.asarray(v).astype(np.int64) for key, v in weight.arrays.items()}
    extra: dict[str, int] = {}
    shared = False
    if weight.format == "int_affine":
        dtype = IntType.parse(str(weight.attrs["dtype"]))
        zero_point = per_channel(weight, "zero_point", 0.0).astype(np.int64)
        arrays = [_array("values", ap_type(dtype), a["values"]), _array("zero_point", ap_type(dtype), zero_point)]
    elif weight.format == "codebook":
        levels = a["levels"]
        shared = levels.ndim == 1
        index_bits = max(1, (levels.shape[-1] - 1).bit_length())
        arrays = [
            _array("index", f"ap_uint<{index_bits}>", a["indices"]),
            _array("levels", _signed_for(levels), levels),
        ]
        extra["N_LEVELS"] = int(levels.shape[-1])
    elif weight.format in ("pot", "post"):
        max_exponent = int(weight.attrs["max_exponent"])
        bits = max(1, max_exponent.bit_length())
        arrays = [_array("sign", "ap_int<2>", a["sign"])]
        if weight.format == "pot":
            arrays.append(
                _array("shift", f"ap_uint<{bits}>", np.where(a["sign"] != 0, max_exponent - a["exponent"], 0))
            )
        else:
            frac_bits = int(weight.attrs["lut_frac_bits"])
            arrays.append(_array("exponent", f"ap_uint<{bits}>", a["exponent"]))
            lut = [product_table(e, frac_bits, x_min, x_max) for e in range(1, max_exponent + 1, 2)]
            lut_values = np.concatenate(lut) if lut else np.zeros(1, dtype=np.int64)
            arrays.append(_array("lut", _signed_for(lut_values), lut_values))
            extra.update(FRAC_BITS=frac_bits, LUT_LEN=x_max - x_min + 1, X_MIN=x_min)
    else:  # apot
        max_exponent = int(weight.attrs["max_exponent"])
        exponent = a["exponent"]
        codes = np.where(exponent >= 0, max_exponent - exponent + 1, 0)
        bits = max(1, (max_exponent + 1).bit_length())
        arrays = [_array("sign", "ap_int<2>", a["sign"]), _array("shift", f"ap_uint<{bits}>", codes)]
        extra["TERMS"] = int(exponent.shape[-1])
    extra["ROW"] = int(np.prod(weight.shape[1:]))
    return arrays, extra, shared


class _HlsSteps:
    def __init__(self, graph: Graph):
        self.graph = graph
        names = [*graph.inputs, *(node.outputs[0] for node in graph.nodes)]
        self.ids = {name: index for index, name in enumerate(dict.fromkeys(names))}

    def type_of(self, tensor: str) -> str:
        return ap_type(self.graph.tensors[tensor].dtype)

    def weighted(self, step: dict, node: Node) -> None:
        graph = self.graph
        weight = graph.weights[node.attrs["weight"]]
        bias_name = node.attrs.get("bias")
        bias = graph.weights[bias_name] if bias_name is not None else None
        info = graph.tensors[node.inputs[0]]
        zp = 0 if info.quant is None else int(info.quant.zero_point)
        x_min, x_max = info.dtype.min - zp, info.dtype.max - zp
        arrays, extra, shared = weight_arrays(weight, x_min, x_max)
        if bias is not None:
            from qexport.formats import int_affine

            arrays.append(_array("bias", "ap_int<33>", int_affine.integers(bias)))
        acc_bits = max(partial_sum_bound(weight, bias, x_min, x_max).bit_length(), info.dtype.bits) + 2
        step.update(tacc=f"ap_int<{acc_bits}>", has_bias=bias is not None)
        step["weight"] = {"name": weight.name, "format": weight.format, "arrays": arrays, "shared": shared}
        if node.op is Op.CONV2D:
            keys = ("IN_C", "IN_H", "IN_W", "OUT_C", "OUT_H", "OUT_W", "K_H", "K_W")
            dims = dict(zip(keys, (step[k.lower()] for k in keys), strict=True))
            dims.update(STRIDE_H=step["stride"][0], STRIDE_W=step["stride"][1], PAD_TOP=step["padding"][0])
            dims.update(PAD_LEFT=step["padding"][1], DIL_H=step["dilation"][0], DIL_W=step["dilation"][1])
            dims.update(GROUPS=step["groups"])
        else:
            dims = {"IN_N": step["in_n"], "OUT_N": step["out_n"]}
        dims.update(X_ZP=zp, **extra)
        step["dims"] = list(dims.items())

    def step(self, step: dict, node: Node) -> dict:
        step = dict(step)
        ids = self.ids
        step.update(x=ids[node.inputs[0]], y=ids[node.outputs[0]], tx=self.type_of(node.inputs[0]))
        step["ty"] = self.type_of(node.outputs[0])
        if node.op in (Op.CONV2D, Op.LINEAR):
            self.weighted(step, node)
        elif node.op is Op.ADD:
            step["x2"] = ids[node.inputs[1]]
        elif node.op is Op.REQUANTIZE:
            if "float_scale" in node.attrs or "float_add" in node.attrs:
                raise QExportError(f"node {node.name!r}: float32 requantize has no integer HLS form")
            operands = dynamic_operands(node)
            step["num"] = ids[operands["num"]] if "num" in operands else None
            step["den"] = ids[operands["den"]] if "den" in operands else None
        elif node.op is Op.RELU:
            step["type_max"] = self.graph.tensors[node.inputs[0]].dtype.max
        elif node.op is Op.CONCAT:
            step["parts"] = [dict(part, x=ids[name]) for part, name in zip(step["parts"], node.inputs, strict=True)]
        return step


def hls_context(graph: Graph, ap_types: Path | None = None) -> dict:
    context = c_context(graph)
    hls = _HlsSteps(graph)
    context["steps"] = [hls.step(step, node) for step, node in zip(context["steps"], graph.nodes, strict=True)]
    context["tensors"] = [
        {"id": index, "name": name, "type": hls.type_of(name), "dtype": graph.tensors[name].dtype.name,
         "elems": max(1, int(np.prod(graph.tensors[name].shape[1:])))}
        for name, index in hls.ids.items()
    ]  # fmt: skip
    for row in (*context["inputs"], *context["outputs"]):
        row["tid"] = hls.ids[row["name"]]
    found = ap_types or ap_types_dir()
    context["ap_types"] = str(found) if found else "/path/to/ap_types"
    context["version"] = __version__
    return context


def write_hls(graph: Graph, out_dir: Path) -> list[Path]:
    """Write the HLS kernels, top function, testbench and Makefile into ``out_dir/hls``."""
    for name, info in graph.tensors.items():
        if info.dtype.bits > 32:
            raise QExportError(f"tensor {name!r}: {info.dtype.name} is wider than the HLS top's 32-bit ports")
    return render_into(Path(out_dir) / "hls", "hls", PLAIN_FILES, TEMPLATES, hls_context(graph))
