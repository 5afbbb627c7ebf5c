"""Shared output buffers for the engine's fused steps, assigned from tensor lifetimes (an arena plan).

Each fused step writes its output into a reused work array. One array per layer makes a run touch every
layer's output memory once, so each write lands on lines evicted since the last run. Tensors whose
lifetimes do not overlap can share one array instead: the next step then writes where a recent one
wrote, which is still in cache. Lifetimes are measured in node positions of the graph (a fused step runs
at its first node's position; a use counts at the reading node's own position, which is never earlier),
views (flatten, reshape) extend the life of the tensor they view, and graph outputs live to the end.
"""

from __future__ import annotations

from qexport.ir.graph import Graph
from qexport.ir.ops import Op

VIEW_OPS = (Op.FLATTEN, Op.RESHAPE)  # the engine returns these as views of their input


def last_uses(graph: Graph) -> dict[str, int]:
    """Node output -> the position of the last node reading it or a view of it (graph outputs: past the end)."""
    position = {node.name: index for index, node in enumerate(graph.nodes)}
    end = len(graph.nodes)
    last: dict[str, int] = {}
    for node in reversed(graph.nodes):  # views are produced after the tensor they view
        for tensor in node.outputs:
            last.setdefault(tensor, end if tensor in graph.outputs else -1)
            for consumer in graph.consumers(tensor):
                last[tensor] = max(last[tensor], position[consumer.name])
        if node.op in VIEW_OPS:
            source = node.inputs[0]
            last[source] = max(last.get(source, -1), *(last[t] for t in node.outputs))
    return last


def assign_slots(graph: Graph, steps: dict[str, tuple[int, str]]) -> dict[str, int]:
    """``steps``: buffer name -> (position where the step writes it, tensor it holds). Returns buffer name ->
    slot: two buffers share a slot only if the first one's tensor is dead before the second is written."""
    last = last_uses(graph)
    slots: dict[str, int] = {}
    free_after: list[int] = []  # per slot: the last use of its current tensor
    for name, (written, tensor) in sorted(steps.items(), key=lambda item: item[1][0]):
        slot = next((s for s, end in enumerate(free_after) if end < written), None)
        if slot is None:
            slot = len(free_after)
            free_after.append(-1)
        free_after[slot] = max(last.get(tensor, len(graph.nodes)), written)
        slots[name] = slot
    return slots


__all__ = ["assign_slots", "last_uses"]
