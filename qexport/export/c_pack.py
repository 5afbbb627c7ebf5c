"""Bit-packed weight rows and product tables for the C runtime (layout in templates/c/qx_runtime.h).

Every weight becomes ``rows`` (output channels) x ``row_len`` element codes of ``bits`` bits, least
significant bit first, each row starting on a byte boundary so a kernel can unpack one channel alone.
"""

from __future__ import annotations

import numpy as np

from qexport.errors import QExportError
from qexport.formats import get_format, int_affine
from qexport.formats.base import per_channel
from qexport.formats.post import product_table
from qexport.ir.dtypes import IntType
from qexport.ir.graph import Weight

FORMAT_ENUM = {"int_affine": 0, "pot": 1, "post": 2, "apot": 3, "codebook": 4}
INT32_MAX = (1 << 31) - 1


class CExportError(QExportError):
    """A graph the C exporter cannot represent (the message names the weight or node)."""


def pack_rows(codes: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
    """[rows, row_len] non-negative codes -> ([rows * row_bytes] uint8, row_bytes)."""
    rows, row_len = codes.shape
    row_bytes = max(1, (row_len * bits + 7) // 8)
    fields = (codes.astype(np.uint64)[:, :, None] >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)
    flat = np.zeros((rows, row_bytes * 8), dtype=np.uint8)
    flat[:, : row_len * bits] = fields.reshape(rows, row_len * bits)
    return np.packbits(flat, axis=1, bitorder="little").reshape(-1), row_bytes


def _fits_int32(values: np.ndarray, what: str) -> list[int]:
    values = np.asarray(values, dtype=np.int64)
    if values.size and (values.min() < -INT32_MAX - 1 or values.max() > INT32_MAX):
        raise CExportError(f"{what}: values do not fit the C runtime's 32-bit tables")
    return [int(v) for v in values.reshape(-1)]


def _shift_field(sign: np.ndarray, magnitude: np.ndarray, ebits: int) -> np.ndarray:
    """m | neg << ebits, with m = 0 where the sign is 0."""
    magnitude = np.where(sign != 0, magnitude, 0).astype(np.int64)
    return magnitude | (np.where(sign < 0, 1, 0).astype(np.int64) << ebits)


def pack_weight(weight: Weight, x_min: int, x_max: int) -> dict:
    """Template fields of one weight used on activations in [x_min, x_max] (zero point removed)."""
    rows = weight.shape[0]
    fields: dict = {"name": weight.name, "format": weight.format, "format_enum": FORMAT_ENUM[weight.format]}
    fields.update(ebits=0, terms=1, is_signed=0, shared_levels=0, zero_point=None, levels=None, n_levels=0)
    fields.update(frac_bits=0, lut=None, lut_len=0, x_min=x_min)
    arrays = {key: np.asarray(value).astype(np.int64) for key, value in weight.arrays.items()}
    if weight.format == "int_affine":
        dtype = IntType.parse(str(weight.attrs["dtype"]))
        bits = dtype.bits
        codes = arrays["values"].reshape(rows, -1) & ((1 << bits) - 1)
        zero_point = per_channel(weight, "zero_point", 0.0).astype(np.int64)
        _fits_int32(int_affine.integers(weight), f"weight {weight.name!r}")
        fields.update(is_signed=int(dtype.signed), zero_point=_fits_int32(zero_point, f"weight {weight.name!r}"))
    elif weight.format == "codebook":
        levels = arrays["levels"]
        n_levels = levels.shape[-1]
        bits = max(1, (n_levels - 1).bit_length())
        codes = arrays["indices"].reshape(rows, -1)
        fields.update(levels=_fits_int32(levels, f"weight {weight.name!r}"), n_levels=n_levels)
        fields["shared_levels"] = int(levels.ndim == 1)
    elif weight.format in ("pot", "post"):
        max_exponent = int(weight.attrs["max_exponent"])
        ebits = (max_exponent + 1).bit_length()
        bits = ebits + 1
        magnitude = max_exponent - arrays["exponent"] + 1 if weight.format == "pot" else arrays["exponent"] + 1
        codes = _shift_field(arrays["sign"], magnitude, ebits).reshape(rows, -1)
        fields["ebits"] = ebits
        if weight.format == "post":
            frac_bits = int(weight.attrs["lut_frac_bits"])
            table = [product_table(e, frac_bits, x_min, x_max) for e in range(1, max_exponent + 1, 2)]
            lut = np.concatenate(table) if table else np.zeros(0, dtype=np.int64)
            fields.update(frac_bits=frac_bits, lut_len=x_max - x_min + 1)
            fields["lut"] = [int(v) for v in lut] if lut.size else None
    else:  # apot
        max_exponent = int(weight.attrs["max_exponent"])
        exponent = arrays["exponent"]
        terms = exponent.shape[-1]
        ebits = (max_exponent + 1).bit_length()
        bits = 1 + terms * ebits
        magnitude = np.where(exponent >= 0, max_exponent - exponent + 1, 0)
        magnitude = np.where(arrays["sign"][..., None] != 0, magnitude, 0)
        code = np.where(arrays["sign"] < 0, 1, 0).astype(np.int64)
        for t in range(terms):
            code = code | (magnitude[..., t].astype(np.int64) << (1 + t * ebits))
        codes = code.reshape(rows, -1)
        fields.update(ebits=ebits, terms=terms)
    if bits > 32:
        raise CExportError(f"weight {weight.name!r}: {bits}-bit element codes (the C runtime reads at most 32)")
    packed, row_bytes = pack_rows(codes, bits)
    fields.update(bits=bits, rows=rows, row_len=int(codes.shape[1]), row_bytes=row_bytes)
    fields["packed"] = [int(b) for b in packed]
    return fields


def bias_values(weight: Weight | None) -> list[int] | None:
    if weight is None:
        return None
    return _fits_int32(int_affine.integers(weight), f"bias {weight.name!r}")


def partial_sum_bound(weight: Weight, bias: Weight | None, x_min: int, x_max: int) -> int:
    """Largest |partial sum| a layer can reach, over every channel and input (each product counted in full)."""
    total = np.zeros(weight.shape[0], dtype=object)
    for term in get_format(weight.format).terms(weight, x_min, x_max):
        extreme = max(abs(int(term.table[0])), abs(int(term.table[-1])))  # tables are monotone in x
        total = total + np.abs(term.coeff.reshape(weight.shape[0], -1).astype(object)).sum(axis=1) * extreme
    if bias is not None:
        total = total + np.abs(int_affine.integers(bias).astype(object))
    return int(max(total, default=0))
