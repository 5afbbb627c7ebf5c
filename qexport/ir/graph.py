"""Integer IR graph: typed integer tensors, nodes in topological order, weights in number formats."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qexport.ir.dtypes import IntType
from qexport.ir.ops import Op


@dataclass
class QuantInfo:
    """How an integer tensor maps to real numbers: real = scale * (q - zero_point).

    ``scale`` is a float32-exact number per tensor, or a list per channel along ``axis``.
    ``dynamic`` marks a tensor whose scale is multiplied per sample by a dynamic
    requantization operand (input-adaptive step size).
    """

    scale: float | list[float]
    zero_point: int = 0
    axis: int = 1
    dynamic: bool = False

    def scale_array(self, channels: int | None = None) -> np.ndarray:
        scale = np.asarray(self.scale, dtype=np.float64)
        if scale.ndim == 0 and channels is not None:
            scale = np.full(channels, float(scale))
        return scale


@dataclass
class TensorInfo:
    """An integer tensor of the IR. Shapes are NCHW / NC with the batch dimension as -1."""

    name: str
    dtype: IntType
    shape: tuple[int, ...]
    quant: QuantInfo | None = None


@dataclass
class Weight:
    """A weight tensor in a number format (see ``qexport.formats``).

    ``arrays`` holds the integer fields of the format (e.g. ``values``, ``sign`` and
    ``exponent``, ``indices`` and ``levels``); ``attrs`` holds its scalar settings.
    """

    name: str
    format: str
    shape: tuple[int, ...]
    arrays: dict[str, np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Node:
    op: Op
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Graph:
    """A whole integer network. ``inputs`` are quantized with their QuantInfo at the boundary."""

    name: str
    inputs: list[str]
    outputs: list[str]
    tensors: dict[str, TensorInfo]
    nodes: list[Node]
    weights: dict[str, Weight]
    metadata: dict[str, Any] = field(default_factory=dict)

    def producer(self) -> dict[str, Node]:
        return {out: node for node in self.nodes for out in node.outputs}

    def consumers(self, tensor: str) -> list[Node]:
        return [node for node in self.nodes if tensor in node.inputs]

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)
