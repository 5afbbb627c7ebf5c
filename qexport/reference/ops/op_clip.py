"""clip: integer clamp to [clip_min, clip_max]."""

from __future__ import annotations

import numpy as np

from qexport.ir.graph import Graph, Node


def run(graph: Graph, node: Node, inputs: list[np.ndarray]) -> np.ndarray:
    return np.clip(inputs[0], node.attrs["clip_min"], node.attrs["clip_max"])
