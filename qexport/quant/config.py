"""Quantization settings of a QAT model, stored in every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from qexport.errors import QExportError
from qexport.validation import schema_problem, schema_validator

MIN_QAT_BITS, MAX_QAT_BITS = 2, 8
LEGACY_WEIGHT_FORMATS = {"int_affine": "lsq", "pot": "pot"}  # checkpoints written before weight_method existed


@dataclass(frozen=True)
class QuantConfig:
    """What ``prepare_qat`` builds. ``weight_method``/``act_method`` name a quantizer in
    ``qexport.quant.registry`` used for the middle layers' weights and the activations after
    ReLUs; first/last layers, the input, residual and output quantizers stay LSQ.
    ``options`` holds method hyper-parameters that shape the model (JSON values only)."""

    weight_bits: int = 4
    act_bits: int = 4
    first_bits: int = 8  # weights of the first layer
    last_bits: int = 8  # weights of the last layer
    input_bits: int = 8  # the quantized network input
    output_bits: int = 8  # the network output (logits)
    residual_bits: int = 8  # signed tensors entering a residual add
    pow2_scales: bool = False
    per_channel_weights: bool = True
    weight_method: str = "lsq"
    act_method: str = "lsq"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from qexport.quant.registry import ACT_METHODS, WEIGHT_METHODS, min_weight_bits

        for item in fields(self):
            value = getattr(self, item.name)
            if item.name.endswith("_bits") and not (isinstance(value, int) and MIN_QAT_BITS <= value <= MAX_QAT_BITS):
                raise QExportError(f"quant config: {item.name}={value!r} out of range {MIN_QAT_BITS}..{MAX_QAT_BITS}")
        for name, value, known in (
            ("weight_method", self.weight_method, WEIGHT_METHODS),
            ("act_method", self.act_method, ACT_METHODS),
        ):
            if value not in known:
                raise QExportError(f"quant config: {name}={value!r} (known: {', '.join(known)})")
        lowest = min_weight_bits(self.weight_method)
        if self.weight_bits < lowest:
            raise QExportError(f"quant config: {self.weight_method} weights need weight_bits >= {lowest}")
        if not isinstance(self.options, dict):
            raise QExportError("quant config: options must be a mapping")
        problem = schema_problem(schema_validator("qexport.quant", "options.schema.json"), self.options)
        if problem is not None:
            raise QExportError(f"quant config: options: {problem} (see qexport/quant/options.schema.json)")
        for item in fields(self):
            value = getattr(self, item.name)
            if item.type in ("bool", "str") and type(value).__name__ != item.type:
                raise QExportError(f"quant config: {item.name}={value!r} must be a {item.type}")

    def option(self, name: str, default: Any) -> Any:
        return self.options.get(name, default)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        if not isinstance(data, dict):
            raise QExportError(f"quant config: expected an object, got {type(data).__name__}")
        data = dict(data)
        if "weight_format" in data:
            legacy = data.pop("weight_format")
            data.setdefault("weight_method", LEGACY_WEIGHT_FORMATS.get(legacy, legacy))
        known = {item.name for item in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise QExportError(f"quant config: unknown field(s) {', '.join(sorted(unknown))}")
        return cls(**data)
