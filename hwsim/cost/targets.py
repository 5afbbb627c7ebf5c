"""The hardware half of a target file (``[hardware]`` and ``[energy]``), with overrides from the CLI."""

from __future__ import annotations

from dataclasses import dataclass, replace

from qexport.errors import TargetError
from qexport.targets import Target

ENERGY_KEYS = ("mult_8bit_pj", "add_32bit_pj", "shift_32bit_pj", "lut_read_pj", "sram_byte_pj", "dram_byte_pj")


@dataclass(frozen=True)
class Hardware:
    name: str
    model: str  # systolic | vector
    clock_mhz: float
    energy: dict[str, float]
    rows: int = 0
    cols: int = 0
    dataflow: str = "ws"
    ifmap_sram_bytes: int = 0
    filter_sram_bytes: int = 0
    ofmap_sram_bytes: int = 0
    dram_bytes_per_cycle: float = 1.0
    simd_bits: int = 128
    vector_units: int = 1
    int8_macs_per_lane_op: int = 4
    requant_elements_per_cycle: int = 8
    cache_bytes: int = 0

    def with_overrides(self, array: str | None = None, dataflow: str | None = None) -> Hardware:
        """Apply ``--array RxC`` and ``--dataflow`` (systolic targets only)."""
        updated = self
        if array is not None:
            try:
                rows, cols = (int(v) for v in array.lower().split("x"))
                if rows < 1 or cols < 1:
                    raise ValueError
            except ValueError:
                raise TargetError(f"--array {array!r}: expected ROWSxCOLS, e.g. 16x16") from None
            updated = replace(updated, rows=rows, cols=cols)
        if dataflow is not None:
            if dataflow not in ("ws", "os", "is"):
                raise TargetError(f"--dataflow {dataflow!r}: expected ws, os or is")
            updated = replace(updated, dataflow=dataflow)
        if (array or dataflow) and updated.model != "systolic":
            raise TargetError(f"target {self.name!r} is a {self.model} model: --array/--dataflow do not apply")
        return updated


def hardware_of(target: Target) -> Hardware:
    raw = target.raw
    where = f"target {target.name!r}"
    try:
        hw, energy = raw["hardware"], raw["energy"]
        memory = hw.get("memory", {})
        common = {
            "name": target.name,
            "model": str(hw["model"]),
            "clock_mhz": float(hw["clock_mhz"]),
            "energy": {key: float(energy[key]) for key in ENERGY_KEYS},
            "dram_bytes_per_cycle": float(memory["dram_bytes_per_cycle"]),
        }
        if hw["model"] == "systolic":
            rows, cols = (int(v) for v in hw["array"])
            return Hardware(
                **common,
                rows=rows,
                cols=cols,
                dataflow=str(hw["dataflow"]),
                ifmap_sram_bytes=int(memory["ifmap_sram_bytes"]),
                filter_sram_bytes=int(memory["filter_sram_bytes"]),
                ofmap_sram_bytes=int(memory["ofmap_sram_bytes"]),
            )
        if hw["model"] == "vector":
            return Hardware(
                **common,
                simd_bits=int(hw["simd_bits"]),
                vector_units=int(hw["vector_units"]),
                int8_macs_per_lane_op=int(hw["int8_macs_per_lane_op"]),
                requant_elements_per_cycle=int(hw["requant_elements_per_cycle"]),
                cache_bytes=int(memory["l2_bytes"]),
            )
    except KeyError as error:
        raise TargetError(f"{where}: missing field {error} in [hardware] or [energy]") from None
    except (TypeError, ValueError) as error:
        raise TargetError(f"{where}: malformed hardware field ({error})") from None
    raise TargetError(f"{where}: hardware.model must be 'systolic' or 'vector', not {hw['model']!r}")
