"""Which ONNX integer type stores an IR tensor, chosen so that onnxruntime's default optimizations load it.

onnxruntime 1.32 with default SessionOptions fuses QDQ groups into QLinearConv, QGemm, QLinearAdd,
QLinearAveragePool, QLinearGlobalAveragePool and moves DequantizeLinear past MaxPool, Flatten, Reshape
and Concat, without checking that the fused kernels accept 4-bit types; its S8->U8 rewrite then leaves
propagated QuantizeLinear nodes whose ``output_dtype`` no longer matches their zero point. Activations
therefore use **unsigned byte (or wider) containers**: a signed IR tensor is stored with its integers and
zero point offset by ``2^(bits-1)``, which QuantizeLinear/DequantizeLinear reproduce exactly
(``clip(rint(x/s) + zp + o, 0, 2^b-1) = clip(rint(x/s) + zp, -2^(b-1), 2^(b-1)-1) + o``). Weights keep
the narrowest native signed type (onnxruntime does not fuse 4-bit weights). With INT2 opted in the model
needs ``ORT_DISABLE_ALL`` anyway, and activations then use the narrowest native width too.
"""

from __future__ import annotations

from qexport.errors import QExportError
from qexport.ir.dtypes import IntType

BYTE = 8
QUANTIZE_WIDTHS = (2, 4, 8, 16)  # QuantizeLinear outputs (opset 21/25); 32 bits only for weights and biases


def low_bit_activations(native_bits: tuple[int, ...]) -> bool:
    """True when INT2 is opted in: the model then targets ORT_DISABLE_ALL (see docs/onnx.md)."""
    return min(native_bits) < 4


def container_type(dtype: IntType, native_bits: tuple[int, ...]) -> IntType:
    """The narrowest native ONNX integer type that holds every value of ``dtype`` (weights)."""
    for bits in sorted(set(native_bits) | {32}):
        candidate = IntType(dtype.signed or bits == 32, bits)
        if candidate.contains(dtype.min, dtype.max):
            return candidate
    raise QExportError(f"no ONNX integer type holds {dtype.name}")


def activation_container(dtype: IntType, native_bits: tuple[int, ...]) -> tuple[IntType, int]:
    """(container, offset) of an activation tensor: stored integer = IR integer + offset."""
    floor = 1 if low_bit_activations(native_bits) else BYTE
    for bits in sorted(b for b in native_bits if b >= floor and b in QUANTIZE_WIDTHS):
        if IntType(dtype.signed, bits).contains(dtype.min, dtype.max):
            return IntType(False, bits), (1 << (bits - 1)) if dtype.signed else 0
    raise QExportError(f"no ONNX QuantizeLinear type among native bits {list(native_bits)} holds {dtype.name}")
