"""FPGA resources of a target's systolic array, from the Yosys numbers in resources.json (benchmarks/rtl_synthesis.py).

Each weighted layer needs a PE of its MAC style (int_affine: multiply, pot: shift, apot: apot, post:
shift_lut, codebook: codebook) at ``b`` bits: the larger of its weight width (multiply: the integer's
bits; exponent formats: 1 + the exponent code's bits; codebook: index bits) and its activation width,
rounded up to a synthesized width (2, 3, 4, 8). Per style the widest layer sizes the array:
``rows * cols`` PEs of synth_xilinx (xc7) LUTs, FFs, DSP48s and CARRY4s. PEs only: the input skew
registers, the sequencer and the SRAMs are not counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from hwsim.cost.targets import Hardware
from qexport.ir.dtypes import IntType
from qexport.ir.graph import Graph
from qexport.ir.ops import Op

STYLE_OF = {"int_affine": "multiply", "pot": "shift", "apot": "apot", "post": "shift_lut", "codebook": "codebook"}


@cache
def resource_table() -> dict:
    return json.loads(resources.files("hwsim.cost").joinpath("resources.json").read_text())


def _bits(weight, input_bits: int) -> int:
    fmt = weight.format
    if fmt == "int_affine":
        wbits = IntType.parse(str(weight.attrs["dtype"])).bits
    elif fmt == "codebook":
        wbits = max(1, (weight.arrays["levels"].shape[-1] - 1).bit_length())
    else:  # a sign and the exponent code: largest exponent <= 2**(b-1) - 2
        wbits = 1 + (int(weight.attrs["max_exponent"]) + 1).bit_length()
    return max(wbits, input_bits)


@dataclass(frozen=True)
class ArrayResources:
    style: str
    bits: int  # synthesized width used
    pes: int
    per_pe: dict[str, int]

    @property
    def total(self) -> dict[str, int]:
        return {key: self.pes * self.per_pe[key] for key in ("lut", "ff", "dsp", "carry")}


def array_resources(graph: Graph, hw: Hardware) -> list[ArrayResources]:
    """One entry per PE style the graph's layers use (empty for vector targets)."""
    if hw.model != "systolic":
        return []
    table = resource_table()["pe"]
    needed: dict[str, int] = {}
    for node in graph.nodes:
        if node.op in (Op.CONV2D, Op.LINEAR):
            weight = graph.weights[node.attrs["weight"]]
            style = STYLE_OF[weight.format]
            bits = _bits(weight, graph.tensors[node.inputs[0]].dtype.bits)
            needed[style] = max(needed.get(style, 0), bits)
    out = []
    for style, bits in sorted(needed.items()):
        widths = sorted(int(b) for b in table[style])
        width = next((b for b in widths if b >= bits), widths[-1])
        entry = table[style][str(width)]["xilinx"]
        per_pe = {key: entry[key] for key in ("lut", "ff", "dsp", "carry")}
        out.append(ArrayResources(style, width, hw.rows * hw.cols, per_pe))
    return out


def resource_dicts(graph: Graph, hw: Hardware) -> list[dict]:
    """The estimate JSON's ``resources``: per PE style, the synthesized width, PEs, per PE and totals."""
    return [
        {"style": r.style, "bits": r.bits, "pes": r.pes, "per_pe": r.per_pe, "total": r.total, "flavour": "xilinx"}
        for r in array_resources(graph, hw)
    ]


def resource_lines(graph: Graph, hw: Hardware) -> list[str]:
    """``hwsim estimate``'s resource lines."""
    lines = []
    for res in array_resources(graph, hw):
        t = res.total
        lines.append(
            f"resources ({hw.rows}x{hw.cols} {res.style} PEs at {res.bits} bits, yosys synth_xilinx xc7, PEs only): "
            f"LUT {t['lut']:,}, FF {t['ff']:,}, DSP {t['dsp']:,}, CARRY4 {t['carry']:,}"
        )
    return lines
