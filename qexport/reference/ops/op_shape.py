"""flatten, reshape, concat: move integers, change nothing."""

from __future__ import annotations

import numpy as np

from qexport.ir.graph import Graph, Node


def flatten(graph: Graph, node: Node, inputs: list[np.ndarray]) -> np.ndarray:
    return inputs[0].reshape(inputs[0].shape[0], -1)


def reshape(graph: Graph, node: Node, inputs: list[np.ndarray]) -> np.ndarray:
    return inputs[0].reshape(inputs[0].shape[0], *node.attrs["shape"])


def concat(graph: Graph, node: Node, inputs: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(inputs, axis=node.attrs["axis"])
