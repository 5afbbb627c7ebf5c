"""The hardware half of a target file (``[hardware]`` and ``[energy]``), with overrides from the CLI."""

from __future__ import annotations

from dataclasses import dataclass, replace

from qexport.errors import TargetError
from qexport.targets import Target

MAX_ARRAY = 4096  # as in target.schema.json
MEMORY_MODELS = ("hwsim", "scalesim")  # hwsim.cost.systolic.memory_cost, hwsim.cost.scalesim_memory
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
    memory_model: str = "hwsim"
    ifmap_sram_bytes: int = 0
    filter_sram_bytes: int = 0
    ofmap_sram_bytes: int = 0
    dram_bytes_per_cycle: float = 1.0
    simd_bits: int = 128
    vector_units: int = 1
    int8_macs_per_lane_op: int = 4
    requant_elements_per_cycle: int = 8
    cache_bytes: int = 0

    def with_overrides(
        self, array: str | None = None, dataflow: str | None = None, memory_model: str | None = None
    ) -> Hardware:
        """Apply ``--array RxC``, ``--dataflow`` and ``--memory-model`` (systolic targets only)."""
        updated = self
        if memory_model is not None:
            if memory_model not in MEMORY_MODELS:
                raise TargetError(f"--memory-model {memory_model!r}: expected {' or '.join(MEMORY_MODELS)}")
            if self.model != "systolic":
                raise TargetError(f"target {self.name!r} is a {self.model} model: --memory-model does not apply")
            updated = replace(updated, memory_model=memory_model)
        if array is not None:
            try:
                rows, cols = (int(v) for v in array.lower().split("x"))
                if not (1 <= rows <= MAX_ARRAY and 1 <= cols <= MAX_ARRAY):
                    raise ValueError
            except ValueError:
                raise TargetError(f"--array {array!r}: expected ROWSxCOLS, each 1..{MAX_ARRAY}, e.g. 16x16") from None
            updated = replace(updated, rows=rows, cols=cols)
        if dataflow is not None:
            if dataflow not in ("ws", "os", "is"):
                raise TargetError(f"--dataflow {dataflow!r}: expected ws, os or is")
            updated = replace(updated, dataflow=dataflow)
        if (array or dataflow) and updated.model != "systolic":
            raise TargetError(f"target {self.name!r} is a {self.model} model: --array/--dataflow do not apply")
        return updated


def hardware_of(target: Target) -> Hardware:
    """The hardware model of a target (its file was schema-checked by ``load_target``)."""
    raw = target.raw
    where = target.source or f"target {target.name!r}"
    for section in ("hardware", "energy"):
        if section not in raw:
            raise TargetError(f"{where}: no [{section}] section (hwsim needs the hardware and energy tables)")
    hw, energy = raw["hardware"], raw["energy"]
    memory = hw["memory"]
    common = {
        "name": target.name,
        "model": hw["model"],
        "clock_mhz": float(hw["clock_mhz"]),
        "energy": {key: float(energy[key]) for key in ENERGY_KEYS},
        "dram_bytes_per_cycle": float(memory["dram_bytes_per_cycle"]),
    }
    if hw["model"] == "systolic":
        rows, cols = hw["array"]
        return Hardware(
            **common,
            rows=rows,
            cols=cols,
            dataflow=hw["dataflow"],
            memory_model=hw.get("memory_model", "hwsim"),
            ifmap_sram_bytes=memory["ifmap_sram_bytes"],
            filter_sram_bytes=memory["filter_sram_bytes"],
            ofmap_sram_bytes=memory["ofmap_sram_bytes"],
        )
    return Hardware(
        **common,
        simd_bits=hw["simd_bits"],
        vector_units=hw["vector_units"],
        int8_macs_per_lane_op=hw["int8_macs_per_lane_op"],
        requant_elements_per_cycle=hw["requant_elements_per_cycle"],
        cache_bytes=memory["l2_bytes"],
    )
