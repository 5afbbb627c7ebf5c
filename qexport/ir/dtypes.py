"""Integer tensor types with explicit signedness and bit width (QONNX-style named values)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from qexport.errors import GraphError

MIN_BITS = 1
MAX_BITS = 32
_NAME = re.compile(r"^(U?)INT(\d+)$")


@dataclass(frozen=True, order=True)
class IntType:
    """A signed or unsigned integer type of 1-32 bits."""

    signed: bool
    bits: int

    def __post_init__(self) -> None:
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise GraphError(f"integer type: bit width {self.bits} out of range {MIN_BITS}..{MAX_BITS}")
        if self.signed and self.bits < 2:
            raise GraphError("integer type: a signed type needs at least 2 bits")

    @property
    def name(self) -> str:
        return f"{'' if self.signed else 'U'}INT{self.bits}"

    @property
    def min(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def max(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    def contains(self, low: int, high: int) -> bool:
        """True when every integer in [low, high] is representable."""
        return self.min <= low and high <= self.max

    @classmethod
    def parse(cls, name: str) -> IntType:
        match = _NAME.fullmatch(name) if isinstance(name, str) else None
        if not match:
            raise GraphError(f"integer type: cannot parse {name!r} (expected e.g. INT4, UINT8)")
        return cls(signed=match.group(1) == "", bits=int(match.group(2)))

    @classmethod
    def for_range(cls, low: int, high: int) -> IntType:
        """The narrowest type holding [low, high] (signed whenever low < 0)."""
        signed = low < 0
        bits = 2 if signed else 1
        while not cls(signed, bits).contains(low, high):
            bits += 1
            if bits > MAX_BITS:
                raise GraphError(f"integer type: range [{low}, {high}] needs more than {MAX_BITS} bits")
        return cls(signed, bits)

    def __str__(self) -> str:
        return self.name


INT2, INT4, INT8, INT16, INT32 = (IntType(True, b) for b in (2, 4, 8, 16, 32))
UINT2, UINT4, UINT8 = (IntType(False, b) for b in (2, 4, 8))
