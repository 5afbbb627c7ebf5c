"""Per-layer operation and byte counts, derived from the graph alone (no data needed)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from hwsim.weights import MacWeights, decode
from qexport.ir.dtypes import IntType
from qexport.ir.graph import Graph, Node
from qexport.ir.ops import Op, dynamic_operands

ADAPTER_MARK = ".adapter."  # ASQ adapter nodes: <quantizer>.adapter.*


@dataclass
class LayerCounts:
    name: str
    op: str
    mac_kind: str = "-"
    macs: int = 0
    mults: int = 0
    shifts: int = 0
    lut_reads: int = 0
    adds: int = 0
    divs: int = 0  # per-sample divisions of a dynamic requantize (also counted as mults)
    weight_bytes: int = 0
    lut_bytes: int = 0
    input_bytes: int = 0
    output_bytes: int = 0
    acc_bits: int = 0
    buffer_bytes: int = 0
    # data-dependent, filled by the engine
    overflow_events: int = 0
    saturations: int = 0
    adapter_of: str = ""  # the quantizer whose ASQ adapter this node is (nodes named <quantizer>.adapter.*)

    def to_dict(self) -> dict:
        return asdict(self)


def fresh_counts(layers: list[LayerCounts]) -> list[LayerCounts]:
    """Copies of ``layers`` for one run (the engine copies every layer's counters per run: copy.copy
    took 3x as long)."""
    copies = []
    for layer in layers:
        new = object.__new__(LayerCounts)
        new.__dict__.update(layer.__dict__)
        copies.append(new)
    return copies


def _elements(graph: Graph, tensor: str, batch: int) -> int:
    return batch * math.prod(graph.tensors[tensor].shape[1:])


def _tensor_bytes(graph: Graph, tensor: str, batch: int) -> int:
    return math.ceil(_elements(graph, tensor, batch) * graph.tensors[tensor].dtype.bits / 8)


def _bits_for(count: int) -> int:
    return max(1, math.ceil(math.log2(max(count, 2))))


def _activation_range(graph: Graph, tensor: str) -> tuple[int, int]:
    info = graph.tensors[tensor]
    zero = info.quant.zero_point if info.quant else 0
    return info.dtype.min - zero, info.dtype.max - zero


def weight_storage_bits(graph: Graph, node: Node, mac: MacWeights) -> tuple[int, int]:
    """(weight bits packed at their width, lookup-table bits) for one weighted node."""
    weight = graph.weights[node.attrs["weight"]]
    count = mac.rows * mac.window
    if weight.format == "int_affine":
        return count * IntType.parse(weight.attrs["dtype"]).bits, 0
    exponent_bits = _bits_for(int(weight.attrs.get("max_exponent", 1)) + 1)
    if weight.format == "pot":
        return count * (1 + exponent_bits), 0
    if weight.format == "apot":
        return count * (1 + mac.terms_per_weight * (exponent_bits + 1)), 0
    x_min, x_max = _activation_range(graph, node.inputs[0])
    values = x_max - x_min + 1
    if weight.format == "post":
        odd = (int(weight.attrs["max_exponent"]) + 1) // 2
        entry_bits = _bits_for(max(abs(x_min), x_max) << (mac.frac_bits + 1)) + 1
        return count * (1 + exponent_bits), values * odd * entry_bits
    levels = mac.levels
    level_bits = _bits_for(int(np.abs(levels).max()) + 1) + 1
    index_bits = _bits_for(levels.shape[1])
    table = levels.size * level_bits
    return count * index_bits + table, 0


def _weighted_counts(graph: Graph, node: Node, batch: int, codebook_style: str) -> LayerCounts:
    weight = graph.weights[node.attrs["weight"]]
    mac = decode(weight)
    out = graph.tensors[node.outputs[0]]
    positions = batch * (math.prod(out.shape[2:]) if len(out.shape) == 4 else 1)
    counts = LayerCounts(node.name, node.op.value, mac.kind)
    counts.macs = positions * mac.rows * mac.window
    if mac.kind == "multiply":
        counts.mults = counts.adds = counts.macs
    elif mac.kind == "shift":
        nonzero = int(np.count_nonzero(mac.sign))
        counts.shifts = positions * nonzero * mac.terms_per_weight
        counts.adds = counts.shifts
    elif mac.kind == "shift_lut":
        active = mac.sign != 0
        odd = int(np.count_nonzero(active & (mac.exponent % 2 == 1)))
        counts.shifts = positions * (int(np.count_nonzero(active)) - odd)
        counts.lut_reads = positions * odd
        counts.adds = positions * int(np.count_nonzero(active))
    elif codebook_style == "per_level":
        counts.mac_kind = "codebook_per_level"
        counts.adds = counts.macs + positions * mac.levels.size
        counts.mults = positions * mac.levels.size
    else:
        counts.mac_kind = "codebook_lut"
        counts.lut_reads = counts.adds = counts.macs
    if node.attrs.get("bias"):
        counts.adds += positions * mac.rows
    weight_bits, lut_bits = weight_storage_bits(graph, node, mac)
    if mac.kind == "codebook" and codebook_style != "per_level":
        x_min, x_max = _activation_range(graph, node.inputs[0])
        lut_bits = mac.levels.size * (x_max - x_min + 1) * out.dtype.bits
    counts.weight_bytes = math.ceil(weight_bits / 8)
    counts.lut_bytes = math.ceil(lut_bits / 8)
    counts.acc_bits = out.dtype.bits
    return counts


def accumulators(graph: Graph) -> set[str]:
    """Tensors that stay inside the MAC array (never written to a buffer)."""
    return {node.outputs[0] for node in graph.nodes if node.op in (Op.CONV2D, Op.LINEAR, Op.ADD)}


def layer_counts(graph: Graph, batch: int = 1, codebook_style: str = "lut") -> list[LayerCounts]:
    """Static counts for every node of ``graph`` at ``batch`` images.

    Byte counts cover buffered tensors only: accumulators stay in the array and are
    requantized there, so they count as neither output of their producer nor input of
    the requantize node.
    """
    in_array = accumulators(graph)
    rows = []
    for node in graph.nodes:
        if node.op in (Op.CONV2D, Op.LINEAR):
            counts = _weighted_counts(graph, node, batch, codebook_style)
        else:
            counts = LayerCounts(node.name, node.op.value)
            elements = _elements(graph, node.outputs[0], batch)
            if node.op is Op.REQUANTIZE:
                operands = dynamic_operands(node)
                counts.mults = 0 if all(m == 1 for m in node.attrs["multiplier"]) else elements
                counts.divs = elements if "den" in operands else 0
                counts.mults += (elements if "num" in operands else 0) + counts.divs
                counts.shifts = counts.adds = elements
            elif node.op is Op.ADD:
                for key in ("lhs_multiplier", "rhs_multiplier"):
                    multiplier = node.attrs[key]
                    if multiplier & (multiplier - 1):
                        counts.mults += elements
                    elif multiplier != 1:
                        counts.shifts += elements
                counts.adds = elements
                counts.acc_bits = graph.tensors[node.outputs[0]].dtype.bits
            elif node.op in (Op.MAXPOOL, Op.AVGPOOL, Op.GLOBAL_AVGPOOL):
                window = math.prod(graph.tensors[node.inputs[0]].shape[2:]) // max(
                    1, math.prod(graph.tensors[node.outputs[0]].shape[2:])
                )
                counts.adds = elements * window
        counts.input_bytes = sum(_tensor_bytes(graph, t, batch) for t in node.inputs if t not in in_array)
        counts.output_bytes = 0 if node.outputs[0] in in_array else _tensor_bytes(graph, node.outputs[0], batch)
        counts.adapter_of = node.name.split(ADAPTER_MARK)[0] if ADAPTER_MARK in node.name else ""
        counts.buffer_bytes = counts.input_bytes + counts.output_bytes + counts.weight_bytes + counts.lut_bytes
        rows.append(counts)
    return rows
