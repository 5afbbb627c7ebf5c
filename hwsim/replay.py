"""Replays of a run's native kernel calls: one C call for each chain of native layers (``hwsim.engine``).

Between two native layers the engine spends ~20 us in Python, holding the interpreter lock that the other
worker thread needs to start its next kernel (docs/hwsim.md#performance: with each thread's kernel counts
on their own cache line, the two workers then lose little beside that). So the second run of a batch
shape on a thread records
each node's kernel calls (``native_conv.recording``), and from the third on a node whose work was only
kernel calls, reading tensors that live in the run's slot arrays, is not run again in Python: its recorded
calls are (``qc_run``), consecutive ones in one call, and its outputs and counters are set from them.

Why the recorded pointers stay right: every array a call points into is kept alive by its recording; the
tensors a node reads and writes live in the slot arrays of its batch shape, which keep their addresses
once the first run has sized them (``Engine._output``); every other pointer goes to a layer's constant or
work arrays. A node that reads a tensor from anywhere else (a graph input, a Python op's new array), or
did numpy work besides its kernel calls, runs in Python as before, every time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hwsim.counters import LayerCounts
from hwsim.native_conv import Tape, run_calls

Counter = tuple[int, str, int]  # (layer index, LayerCounts field, index in the kernel's counts array)


@dataclass
class ReplayedNode:
    """One node's recorded kernel calls, the tensors it wrote and the counters its counts array fills."""

    tape: Tape
    written: dict[str, np.ndarray]
    counters: list[Counter]


@dataclass
class Chain:
    """Consecutive replayed nodes: their calls as one qc_run table."""

    nodes: list[ReplayedNode]
    rows: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.rows = np.array([row for node in self.nodes for row in node.tape.rows], dtype=np.int64)

    def run(self, values: dict[str, np.ndarray], counts: list[LayerCounts]) -> None:
        run_calls(self.rows)
        for node in self.nodes:
            values.update(node.written)
            found = node.tape.counts[-1].tolist()
            for layer, name, index in node.counters:
                setattr(counts[layer], name, found[index])


@dataclass
class Program:
    """A run as replayed chains and node indices run in Python, in graph order."""

    items: list[Chain | int]

    @classmethod
    def of(cls, steps: list[int | ReplayedNode]) -> Program:
        items: list[list[ReplayedNode] | int] = []
        for step in steps:
            if isinstance(step, int):
                items.append(step)
            elif items and isinstance(items[-1], list):
                items[-1].append(step)
            else:
                items.append([step])
        return cls([item if isinstance(item, int) else Chain(item) for item in items])

    @property
    def replayed(self) -> int:
        """How many nodes are replayed."""
        return sum(len(item.nodes) for item in self.items if isinstance(item, Chain))


def rooted_in(array: np.ndarray, owners: set[int]) -> bool:
    """True when ``array``'s memory belongs to one of the arrays whose ids are ``owners`` (it is a view)."""
    while isinstance(array, np.ndarray):
        if id(array) in owners:
            return True
        array = array.base
    return False
