"""Verilog PEs of the MAC styles hwsim models, rendered from the package's ``rtl`` templates (rtl_templates/).

A ``PeSpec`` fixes one PE: its style, the activation range (zero point removed), the accumulator width
and the weight field widths; ``render_pe`` writes ``<name>.v``. ``encode`` packs weight fields into the
PE's stationary code (layouts in each template's header). Widths (all signed, two's complement):

* ``xw`` activation, ``wc`` weight code, ``tw`` one product term, ``aw`` accumulator (``psw`` the
  partial-sum port: ``aw``, or ``2 * aw`` for the split PE's two accumulators).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qexport import __version__
from qexport.errors import QExportError
from qexport.export.c_code import render_into
from qexport.formats.post import product_table

TEMPLATES = "rtl"  # qexport/export/templates/rtl -> rtl_templates/
STYLES = ("multiply", "shift", "apot", "shift_lut", "split", "codebook")
SIGN_CODES = {0: 0b00, 1: 0b01, -1: 0b11}  # the 2-bit sign field: zero weight, +1, -1


def signed_bits(low: int, high: int) -> int:
    """Smallest two's complement width holding ``[low, high]`` (at least 2)."""
    bits = 2
    while low < -(1 << (bits - 1)) or high >= 1 << (bits - 1):
        bits += 1
    return bits


def field_bits(largest: int) -> int:
    """Unsigned width of a field holding 0..largest (at least 1)."""
    return max(1, int(largest).bit_length())


@dataclass(frozen=True)
class PeSpec:
    """One PE. ``weight_bits``: multiply: signed width of the weight integer, codebook: level width.
    ``max_shift``: shift/apot largest shift, shift_lut/split largest exponent; ``levels``: codebook table size."""

    style: str
    x_min: int
    x_max: int
    acc_bits: int
    weight_bits: int = 0
    max_shift: int = 0
    frac_bits: int = 0
    terms: int = 1
    levels: int = 0

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise QExportError(f"rtl: unknown PE style {self.style!r} (known: {', '.join(STYLES)})")
        if self.x_min > self.x_max or self.acc_bits < 2:
            raise QExportError(f"rtl: PE {self.style}: empty activation range or accumulator under 2 bits")
        if self.style in ("shift_lut", "split") and self.frac_bits < (self.max_shift + 1) // 2:
            raise QExportError(f"rtl: PE {self.style}: frac_bits {self.frac_bits} < ceil(max exponent / 2)")

    @property
    def xw(self) -> int:
        return signed_bits(self.x_min, self.x_max)

    @property
    def sb(self) -> int:
        return field_bits(self.max_shift)

    @property
    def wc(self) -> int:
        return {
            "multiply": self.weight_bits,
            "shift": 2 + self.sb,
            "apot": 2 + self.terms * (self.sb + 1),
            "shift_lut": 2 + self.sb,
            "split": 2 + self.sb,
            "codebook": field_bits(self.levels - 1),
        }[self.style]

    @property
    def tw(self) -> int:
        """Width of one product term: |x * w| < 2**(tw - 1)."""
        if self.style == "multiply":
            return self.xw + self.weight_bits
        if self.style == "codebook":
            return self.xw + self.weight_bits
        if self.style in ("shift_lut", "split"):
            return self.xw + self.frac_bits + 1  # even: |x| 2**F; odd: |x| sqrt(2) 2**(F-1) < |x| 2**F
        return self.xw + self.max_shift + 1 + math.ceil(math.log2(self.terms if self.style == "apot" else 1))

    @property
    def aw(self) -> int:
        return max(self.acc_bits, self.tw + 1)

    @property
    def psw(self) -> int:
        return 2 * self.aw if self.style == "split" else self.aw

    @property
    def name(self) -> str:
        lo = f"m{-self.x_min}" if self.x_min < 0 else str(self.x_min)
        extra = {
            "multiply": f"w{self.weight_bits}",
            "shift": f"s{self.max_shift}",
            "apot": f"s{self.max_shift}t{self.terms}",
            "shift_lut": f"e{self.max_shift}f{self.frac_bits}",
            "split": f"e{self.max_shift}f{self.frac_bits}",
            "codebook": f"l{self.levels}w{self.weight_bits}",
        }[self.style]
        return f"pe_{self.style}_x{lo}_{self.x_max}_{extra}_a{self.aw}"

    def context(self) -> dict:
        p = {
            "version": __version__,
            "name": self.name,
            "style": self.style,
            "xw": self.xw,
            "wc": self.wc,
            "tw": self.tw,
            "aw": self.aw,
            "psw": self.psw,
            "sb": self.sb,
            "eb": self.sb,
            "smax": self.max_shift,
            "emax": self.max_shift,
            "frac_bits": self.frac_bits,
            "terms": self.terms,
            "levels": self.levels,
            "lb": self.weight_bits,
            "exponents": list(range(self.max_shift + 1)),
            "lut": {},
        }
        if self.style == "shift_lut":
            p["lut"] = {k: self._lut_column(k) for k in range(1, self.max_shift + 1, 2)}
        return p

    def _lut_column(self, exponent: int) -> list[tuple[str, str]]:
        """(x code, term) hex pairs of an odd exponent's table column (qexport.formats.post's products)."""
        xs = range(self.x_min, self.x_max + 1)
        values = product_table(exponent, self.frac_bits, self.x_min, self.x_max)
        return [(to_hex(x, self.xw), to_hex(int(v), self.tw)) for x, v in zip(xs, values, strict=True)]


def to_hex(value: int, bits: int) -> str:
    """Two's complement of ``value`` in ``bits`` bits, as hex digits."""
    if not -(1 << (bits - 1)) <= value < 1 << bits:
        raise QExportError(f"rtl: value {value} does not fit {bits} bits")
    return format(value & ((1 << bits) - 1), f"0{(bits + 3) // 4}x")


def from_hex(text: str, bits: int) -> int:
    """Signed value of the low ``bits`` bits of a hex string."""
    value = int(text, 16) & ((1 << bits) - 1)
    return value - (1 << bits) if value >> (bits - 1) else value


def _sign_field(sign: np.ndarray) -> np.ndarray:
    sign = np.asarray(sign, dtype=np.int64)
    if not np.isin(sign, (-1, 0, 1)).all():
        raise QExportError("rtl: sign must be -1, 0 or 1")
    return np.where(sign < 0, 0b11, sign)


def encode(spec: PeSpec, **fields: np.ndarray) -> np.ndarray:
    """Weight codes (int64, same shape as the fields) in the layout of ``spec``'s template.

    multiply: ``integer``; shift: ``sign``, ``shift``; apot: ``sign``, ``shift`` [..., terms] (-1 = absent);
    shift_lut / split: ``sign``, ``exponent``; codebook: ``index``.
    """
    style = spec.style
    if style == "multiply":
        integer = np.asarray(fields["integer"], dtype=np.int64)
        if integer.size and (integer.min() < -(1 << (spec.wc - 1)) or integer.max() >= 1 << (spec.wc - 1)):
            raise QExportError(f"rtl: {spec.name}: weight outside {spec.wc} signed bits")
        return integer & ((1 << spec.wc) - 1)
    if style == "codebook":
        index = np.asarray(fields["index"], dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= spec.levels):
            raise QExportError(f"rtl: {spec.name}: index outside the table of {spec.levels}")
        return index
    sign = _sign_field(fields["sign"])
    if style == "apot":
        shift = np.asarray(fields["shift"], dtype=np.int64)
        code = np.zeros(sign.shape, dtype=np.int64)
        for t in range(spec.terms):
            part = shift[..., t]
            present = part >= 0
            if (part[present] > spec.max_shift).any():
                raise QExportError(f"rtl: {spec.name}: shift above {spec.max_shift}")
            code |= (np.where(present, (1 << spec.sb) | part, 0)) << (t * (spec.sb + 1))
        return code | (sign << (spec.wc - 2))
    magnitude = np.asarray(fields["shift" if style == "shift" else "exponent"], dtype=np.int64)
    if magnitude.size and (magnitude.min() < 0 or magnitude.max() > spec.max_shift):
        raise QExportError(f"rtl: {spec.name}: shift/exponent outside 0..{spec.max_shift}")
    return (sign << spec.sb) | magnitude


def render_pe(spec: PeSpec, out_dir: Path) -> Path:
    """Write ``out_dir/<spec.name>.v``."""
    template = {f"{spec.name}.v": f"pe_{spec.style}.v.j2"}
    return render_into(Path(out_dir), TEMPLATES, (), template, {"p": spec.context()})[0]


def render_pe_testbench(spec: PeSpec, out_dir: Path, depth: int) -> Path:
    """Write ``out_dir/tb_<spec.name>.v``: dot products of up to ``depth`` MACs through one PE (tb_pe.v.j2)."""
    t = {
        "version": __version__,
        "name": f"tb_{spec.name}",
        "pe": spec.name,
        "xw": spec.xw,
        "wc": spec.wc,
        "psw": spec.psw,
        "depth": depth,
        "codebook": spec.style == "codebook",
        "level_bits": spec.levels * spec.weight_bits,
    }
    return render_into(Path(out_dir), TEMPLATES, (), {f"tb_{spec.name}.v": "tb_pe.v.j2"}, {"t": t})[0]


def pe_vectors(spec: PeSpec, x: np.ndarray, codes: np.ndarray) -> list[str]:
    """vectors.hex lines for ``tb_pe``: dot product r is ``sum_k term(x[r, k], codes[r, k])``."""
    lines = []
    for row_x, row_code in zip(np.asarray(x), np.asarray(codes), strict=True):
        for k, (xv, code) in enumerate(zip(row_x, row_code, strict=True)):
            word = (int(k == 0) << (spec.xw + spec.wc)) | ((int(xv) & ((1 << spec.xw) - 1)) << spec.wc) | int(code)
            lines.append(format(word, "x"))
    return lines


def levels_word(spec: PeSpec, levels: np.ndarray) -> str:
    """One column's level table as the PE's ``levels`` port (level 0 in the low bits), hex."""
    word = 0
    for i, level in enumerate(np.asarray(levels, dtype=np.int64).tolist()):
        word |= int(to_hex(level, spec.weight_bits), 16) << (i * spec.weight_bits)
    return format(word, "x")


def split_psum(spec: PeSpec, text: str) -> tuple[int, ...]:
    """A psum port value (hex) as its accumulator(s): (acc,) or (even, odd) for the split PE."""
    value = int(text, 16)
    if spec.style == "split":
        return from_hex(format(value & ((1 << spec.aw) - 1), "x"), spec.aw), from_hex(
            format(value >> spec.aw, "x"), spec.aw
        )
    return (from_hex(text, spec.aw),)
