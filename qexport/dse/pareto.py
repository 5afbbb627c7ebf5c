"""Non-dominated fronts (all objectives minimised; negate the ones to maximise).

``front`` sorts the points lexicographically and checks each one only against the front found so far:
a point's dominators all come before it in that order, and any dominated dominator is itself dominated
by an earlier front member. ``front_reference`` is the obvious all-pairs check the tests compare it to.
Equal points do not dominate each other: both stay on the front.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

OBJECTIVES = {"accuracy": -1.0, "latency_ms": 1.0, "energy_nj": 1.0, "size_bytes": 1.0}  # sign: 1 minimise


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def front_reference(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates (O(n^2), plain Python)."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


def front(points: Sequence[Sequence[float]] | np.ndarray) -> list[int]:
    """Indices (ascending) of the non-dominated points."""
    values = np.asarray(points, dtype=np.float64)
    if values.size == 0:
        return []
    order = np.lexsort(values.T[::-1])
    kept: list[int] = []
    for index in order:
        if kept:
            members = values[kept]
            candidate = values[index]
            if np.any(np.all(members <= candidate, axis=1) & np.any(members < candidate, axis=1)):
                continue
        kept.append(int(index))
    return sorted(kept)


def objective_matrix(rows: Sequence[dict], names: Sequence[str]) -> np.ndarray:
    """Rows' objectives as a minimisation matrix (accuracy negated)."""
    return np.array([[OBJECTIVES.get(name, 1.0) * float(row[name]) for name in names] for row in rows])
