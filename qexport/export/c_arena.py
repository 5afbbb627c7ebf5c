"""Storage of the C runtime's tensors: the smallest container per IR type, placed in one static byte arena.

Outputs of conv2d, linear and add (accumulators) are always int32 (the kernels write them as int32).
Offsets come from a lifetime-based first-fit allocation, every tensor aligned to ``ALIGN`` bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qexport.export.c_pack import CExportError
from qexport.ir.graph import Graph
from qexport.ir.ops import Op

ALIGN = 16
# name in qx_runtime.h, bytes, lowest and highest value
CONTAINERS = {
    "QX_I8": (1, -(2**7), 2**7 - 1),
    "QX_U8": (1, 0, 2**8 - 1),
    "QX_I16": (2, -(2**15), 2**15 - 1),
    "QX_U16": (2, 0, 2**16 - 1),
    "QX_I32": (4, -(2**31), 2**31 - 1),
}
ACCUMULATING = (Op.CONV2D, Op.LINEAR, Op.ADD)


def containers(graph: Graph) -> dict[str, str]:
    """Tensor name -> its container: the first that holds its IR range (int32 for accumulators)."""
    accumulators = {node.outputs[0] for node in graph.nodes if node.op in ACCUMULATING}
    result = {}
    for name, info in graph.tensors.items():
        low, high = info.dtype.min, info.dtype.max
        fitting = [key for key, (_, lo, hi) in CONTAINERS.items() if lo <= low and high <= hi]
        if not fitting:
            raise CExportError(f"tensor {name!r}: {info.dtype.name} does not fit the C runtime's 32-bit storage")
        result[name] = "QX_I32" if name in accumulators else fitting[0]
    return result


@dataclass
class Arena:
    offsets: dict[str, int]  # bytes
    size: int  # bytes, a multiple of ALIGN


def elements(graph: Graph, name: str) -> int:
    return math.prod(graph.tensors[name].shape[1:])


def plan_arena(graph: Graph, types: dict[str, str]) -> Arena:
    """First-fit placement of every tensor by lifetime [producer, last consumer] (inputs -1, outputs to the end)."""
    end = len(graph.nodes)
    start = {name: -1 for name in graph.inputs}
    last = {name: -1 for name in graph.inputs}
    for index, node in enumerate(graph.nodes):
        for name in node.inputs:
            last[name] = index
        start[node.outputs[0]] = index
        last.setdefault(node.outputs[0], index)
    for name in graph.outputs:
        last[name] = end
    placed: list[tuple[int, int, int, int]] = []  # offset, size, start, last
    offsets: dict[str, int] = {}
    for name in sorted(start, key=lambda n: (start[n], n not in graph.inputs)):
        if name in offsets:
            continue
        size = max(1, elements(graph, name)) * CONTAINERS[types[name]][0]
        size = -(-size // ALIGN) * ALIGN
        busy = sorted((o, o + s) for o, s, a, b in placed if a <= last[name] and start[name] <= b)
        offset = 0
        for low, high in busy:
            if offset + size <= low:
                break
            offset = max(offset, high)
        offsets[name] = offset
        placed.append((offset, size, start[name], last[name]))
    return Arena(offsets, max((o + s for o, s, _, _ in placed), default=ALIGN))
