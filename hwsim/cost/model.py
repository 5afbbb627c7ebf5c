"""Per-layer latency, memory traffic, energy and footprint of an IR graph on a target.

Everything here is analytic (no data): it reads the graph and the target's hardware tables.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from hwsim.cost.scalesim_memory import ScaleSimMemoryConfig, scalesim_memory_cost
from hwsim.cost.systolic import ConvShape, MemoryConfig, layer_cost, memory_cost
from hwsim.cost.targets import Hardware
from hwsim.cost.vector import vector_cycles
from hwsim.counters import LayerCounts, accumulators, layer_counts
from qexport.ir.dtypes import IntType
from qexport.ir.graph import Graph, Node
from qexport.ir.ops import Op


@dataclass
class LayerCost:
    name: str
    op: str
    compute_cycles: int = 0
    stall_cycles: int = 0
    utilization: float = 0.0
    dram_bytes: int = 0
    sram_bytes: int = 0
    energy_pj: dict[str, float] = field(default_factory=dict)

    @property
    def cycles(self) -> int:
        return self.compute_cycles + self.stall_cycles

    @property
    def energy_total_pj(self) -> float:
        return sum(self.energy_pj.values())


@dataclass
class Estimate:
    hardware: Hardware
    batch: int
    counts: list[LayerCounts]
    costs: list[LayerCost]
    weight_bytes: int
    lut_bytes: int
    peak_activation_bytes: int

    def total(self, field_name: str) -> float:
        return sum(getattr(c, field_name) for c in self.costs)

    @property
    def total_cycles(self) -> int:
        return sum(c.cycles for c in self.costs)

    @property
    def milliseconds(self) -> float:
        return self.total_cycles / (self.hardware.clock_mhz * 1e3)

    def to_dict(self) -> dict:
        rows = []
        for counts, cost in zip(self.counts, self.costs, strict=True):
            rows.append(
                {**counts.to_dict(), **asdict(cost), "cycles": cost.cycles, "energy_total_pj": cost.energy_total_pj}
            )
        totals = {
            key: sum(row[key] for row in rows)
            for key in (
                "macs",
                "mults",
                "shifts",
                "lut_reads",
                "adds",
                "compute_cycles",
                "stall_cycles",
                "cycles",
                "dram_bytes",
                "sram_bytes",
                "energy_total_pj",
                "overflow_events",
                "saturations",
            )
        }
        return {
            "target": self.hardware.name,
            "model": self.hardware.model,
            "batch": self.batch,
            "array": [self.hardware.rows, self.hardware.cols] if self.hardware.model == "systolic" else None,
            "dataflow": self.hardware.dataflow if self.hardware.model == "systolic" else None,
            "memory_model": self.hardware.memory_model if self.hardware.model == "systolic" else None,
            "clock_mhz": self.hardware.clock_mhz,
            "latency_ms": self.milliseconds,
            "memory": {
                "weight_bytes": self.weight_bytes,
                "lut_bytes": self.lut_bytes,
                "peak_activation_bytes": self.peak_activation_bytes,
                "total_bytes": self.weight_bytes + self.lut_bytes + self.peak_activation_bytes,
            },
            "totals": totals,
            "layers": rows,
        }


def conv_shape(graph: Graph, node: Node) -> ConvShape:
    """The systolic view of a conv/linear node; the input extent is what the windows touch."""
    weight = graph.weights[node.attrs["weight"]]
    out = graph.tensors[node.outputs[0]].shape
    if node.op is Op.LINEAR:
        return ConvShape(1, 1, weight.shape[1], weight.shape[0])
    stride, dilation = node.attrs["stride"], node.attrs["dilation"]
    kernel_h, kernel_w = (dilation[i] * (weight.shape[2 + i] - 1) + 1 for i in range(2))
    groups = node.attrs["groups"]
    return ConvShape(
        (out[2] - 1) * stride[0] + kernel_h,
        (out[3] - 1) * stride[1] + kernel_w,
        weight.shape[1] * groups,
        weight.shape[0],
        kernel_h,
        kernel_w,
        stride[0],
        stride[1],
        (0, 0, 0, 0),
        groups,
    )


def _operand_bits(graph: Graph, node: Node) -> tuple[int, int]:
    x_bits = graph.tensors[node.inputs[0]].dtype.bits
    weight = graph.weights[node.attrs["weight"]]
    if weight.format == "int_affine":
        return x_bits, IntType.parse(weight.attrs["dtype"]).bits
    return x_bits, 8  # shift, LUT and codebook units are costed as 8-bit operations


def _energy(hw: Hardware, graph: Graph, node: Node, counts: LayerCounts, sram: int, dram: int) -> dict[str, float]:
    e = hw.energy
    acc_bits = counts.acc_bits or 32
    if node.op in (Op.CONV2D, Op.LINEAR):
        x_bits, w_bits = _operand_bits(graph, node)
        mult_pj = e["mult_8bit_pj"] * x_bits * w_bits / 64
    else:
        mult_pj = e["mult_8bit_pj"] * 32 * 31 / 64  # requantize / add alignment multipliers
    return {
        "mult": counts.mults * mult_pj,
        "add": counts.adds * e["add_32bit_pj"] * acc_bits / 32,
        "shift": counts.shifts * e["shift_32bit_pj"] * acc_bits / 32,
        "lut": counts.lut_reads * e["lut_read_pj"],
        "sram": sram * e["sram_byte_pj"],
        "dram": dram * e["dram_byte_pj"],
    }


def _memory(hw: Hardware, shape: ConvShape, element_bytes: int, acc_bytes: int, batch: int) -> tuple[int, int]:
    """Stall cycles and DRAM bytes of a conv/linear layer under the target's memory model.

    ``scalesim``: SCALE-Sim 3.0.0's buffers in USER bandwidth mode, words of ``element_bytes``, every
    operand with its own DRAM port of ``dram_bytes_per_cycle``. ``hwsim``: one shared DRAM channel and
    ideal reuse (``hwsim.cost.systolic.memory_cost``), partial sums spilled at ``acc_bytes``.
    """
    srams = (hw.ifmap_sram_bytes, hw.filter_sram_bytes, hw.ofmap_sram_bytes)
    if hw.memory_model == "scalesim":
        rate = max(1, int(hw.dram_bytes_per_cycle // element_bytes))
        words = (max(2, size // element_bytes) for size in srams)
        sim = scalesim_memory_cost(
            shape, hw.rows, hw.cols, hw.dataflow, ScaleSimMemoryConfig(*words, rate, rate, rate), batch
        )
        traffic = sim.ifmap_dram_reads + sim.filter_dram_reads + sim.ofmap_dram_writes
        return sim.stall_cycles, traffic * element_bytes
    config = MemoryConfig(
        *srams, hw.dram_bytes_per_cycle, bytes_per_element=element_bytes, psum_bytes_per_element=acc_bytes
    )
    memory = memory_cost(shape, hw.rows, hw.cols, hw.dataflow, config, batch)
    return memory.stall_cycles, memory.dram_read_bytes + memory.dram_write_bytes


def _systolic(hw: Hardware, graph: Graph, node: Node, counts: LayerCounts, batch: int) -> LayerCost:
    cost = LayerCost(node.name, node.op.value)
    if node.op in (Op.CONV2D, Op.LINEAR):
        shape = conv_shape(graph, node)
        compute = layer_cost(shape, hw.rows, hw.cols, hw.dataflow, batch)
        x_bits, _ = _operand_bits(graph, node)
        stalls, dram = _memory(hw, shape, math.ceil(x_bits / 8), math.ceil((counts.acc_bits or 32) / 8), batch)
        cost.compute_cycles, cost.stall_cycles = compute.cycles + 1, stalls
        cost.utilization = compute.utilization
        cost.dram_bytes = dram
        cost.sram_bytes = cost.dram_bytes + counts.input_bytes + counts.weight_bytes + counts.lut_bytes
    elif node.op in (Op.ADD, Op.MAXPOOL, Op.AVGPOOL, Op.GLOBAL_AVGPOOL, Op.RELU, Op.CLIP):
        # a post-processing unit with one lane per array column
        cost.compute_cycles = math.ceil(max(counts.adds, counts.output_bytes) / hw.cols)
        cost.sram_bytes = counts.input_bytes + counts.output_bytes
    # requantize runs in the array's output pipeline; flatten/reshape/concat are addressing only
    cost.energy_pj = _energy(hw, graph, node, counts, cost.sram_bytes, cost.dram_bytes)
    return cost


def _vector(hw: Hardware, graph: Graph, node: Node, counts: LayerCounts) -> LayerCost:
    cost = LayerCost(node.name, node.op.value)
    traffic = counts.input_bytes + counts.output_bytes + counts.weight_bytes + counts.lut_bytes
    bits = max(_operand_bits(graph, node)) if node.op in (Op.CONV2D, Op.LINEAR) else 8
    elementwise = 0 if node.op in (Op.CONV2D, Op.LINEAR, Op.FLATTEN, Op.RESHAPE) else max(counts.adds, 1)
    cost.compute_cycles, cost.stall_cycles = vector_cycles(hw, counts.macs, elementwise, bits, traffic)
    cost.dram_bytes = traffic if traffic > hw.cache_bytes else 0
    cost.sram_bytes = traffic
    cost.energy_pj = _energy(hw, graph, node, counts, cost.sram_bytes, cost.dram_bytes)
    return cost


def peak_activation_bytes(graph: Graph) -> int:
    """Largest total of live buffered activations (one image) over the schedule."""
    in_array = accumulators(graph)
    remaining = {name: len(graph.consumers(name)) for name in graph.tensors}

    def size(name: str) -> int:
        info = graph.tensors[name]
        return 0 if name in in_array else math.ceil(math.prod(info.shape[1:]) * info.dtype.bits / 8)

    live = {name: size(name) for name in graph.inputs}
    peak = sum(live.values())
    for node in graph.nodes:
        live[node.outputs[0]] = size(node.outputs[0])
        peak = max(peak, sum(live.values()))
        for name in node.inputs:
            remaining[name] -= 1
            if remaining[name] == 0 and name not in graph.outputs:
                live.pop(name, None)
    return peak


def estimate(
    graph: Graph, hw: Hardware, batch: int = 1, counts: list[LayerCounts] | None = None, codebook_style: str = "lut"
) -> Estimate:
    """Analytic cost of ``graph`` on ``hw``; pass ``counts`` from a run to keep its data-dependent events."""
    counts = counts if counts is not None else layer_counts(graph, batch, codebook_style)
    if hw.model == "systolic":
        costs = [_systolic(hw, graph, node, c, batch) for node, c in zip(graph.nodes, counts, strict=True)]
    else:
        costs = [_vector(hw, graph, node, c) for node, c in zip(graph.nodes, counts, strict=True)]
    weight_bytes = sum(c.weight_bytes for c in counts)  # weights and LUTs do not depend on the batch
    return Estimate(
        hw, batch, counts, costs, weight_bytes, sum(c.lut_bytes for c in counts), peak_activation_bytes(graph)
    )
