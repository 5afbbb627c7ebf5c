"""Quantization settings of a QAT model, stored in every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from qexport.errors import QExportError

MIN_QAT_BITS, MAX_QAT_BITS = 2, 8
WEIGHT_FORMATS = ("int_affine", "pot")


@dataclass(frozen=True)
class QuantConfig:
    weight_bits: int = 4
    act_bits: int = 4
    first_bits: int = 8  # weights of the first layer
    last_bits: int = 8  # weights of the last layer
    input_bits: int = 8  # the quantized network input
    output_bits: int = 8  # the network output (logits)
    residual_bits: int = 8  # signed tensors entering a residual add
    pow2_scales: bool = False
    per_channel_weights: bool = True
    weight_format: str = "int_affine"  # middle layers: int_affine (LSQ) or pot (power-of-two weights)

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("_bits") and not (isinstance(value, int) and MIN_QAT_BITS <= value <= MAX_QAT_BITS):
                raise QExportError(f"quant config: {field.name}={value!r} out of range {MIN_QAT_BITS}..{MAX_QAT_BITS}")
        if self.weight_format not in WEIGHT_FORMATS:
            known = ", ".join(WEIGHT_FORMATS)
            raise QExportError(f"quant config: weight_format={self.weight_format!r} (known: {known})")
        if self.weight_format == "pot" and self.weight_bits < 3:
            raise QExportError("quant config: pot weights need weight_bits >= 3 (a sign and two exponents)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        known = {field.name for field in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise QExportError(f"quant config: unknown field(s) {', '.join(sorted(unknown))}")
        return cls(**data)
