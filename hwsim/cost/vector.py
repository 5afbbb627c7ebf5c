"""Cycle model of a SIMD CPU (the ``arm`` target): dot-product lanes plus a bandwidth bound.

MAC cycles = ceil(MACs / (units * lanes * MACs per lane op)), lanes = simd_bits / 32; operands
wider than 8 bits halve the rate (16-bit multiply-accumulate), wider than 16 quarter it.
Element-wise work (requantize, add, pools) runs at ``requant_elements_per_cycle``. A layer whose
bytes (weights + activations in and out) exceed the cache streams them from DRAM; its latency
is the larger of compute and transfer time.
"""

from __future__ import annotations

import math

from hwsim.cost.targets import Hardware


def macs_per_cycle(hw: Hardware, operand_bits: int) -> float:
    rate = hw.vector_units * (hw.simd_bits // 32) * hw.int8_macs_per_lane_op
    if operand_bits > 16:
        return rate / 4
    return rate / 2 if operand_bits > 8 else rate


def vector_cycles(hw: Hardware, macs: int, elementwise: int, operand_bits: int, traffic_bytes: int) -> tuple[int, int]:
    """(compute cycles, stall cycles) for one layer."""
    compute = math.ceil(macs / macs_per_cycle(hw, operand_bits)) + math.ceil(
        elementwise / hw.requant_elements_per_cycle
    )
    transfer = math.ceil(traffic_bytes / hw.dram_bytes_per_cycle) if traffic_bytes > hw.cache_bytes else 0
    return compute, max(0, transfer - compute)
