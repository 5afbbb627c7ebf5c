"""The Pareto front against the obvious all-pairs reference, and the objective signs."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from qexport.dse.pareto import dominates, front, front_reference, objective_matrix

# few distinct values so ties, duplicates and partial orders are common
points = st.integers(1, 4).flatmap(
    lambda dims: st.lists(st.lists(st.integers(0, 4).map(float), min_size=dims, max_size=dims), max_size=40)
)


@given(points)
def test_front_matches_the_reference(values: list[list[float]]) -> None:
    assert front(values) == front_reference(values)


@given(points)
def test_front_members_are_not_dominated_and_others_are(values: list[list[float]]) -> None:
    kept = set(front(values))
    for i, p in enumerate(values):
        dominated = any(dominates(q, p) for q in values)
        assert (i in kept) == (not dominated)


def test_duplicates_stay_and_a_dominated_point_goes() -> None:
    assert front([[1.0, 2.0], [1.0, 2.0], [2.0, 2.0], [0.0, 3.0]]) == [0, 1, 3]
    assert front([]) == []


def test_accuracy_is_maximised() -> None:
    rows = [
        {"accuracy": 0.9, "energy_nj": 1.0},
        {"accuracy": 0.8, "energy_nj": 1.0},
        {"accuracy": 0.95, "energy_nj": 2.0},
    ]
    matrix = objective_matrix(rows, ["accuracy", "energy_nj"])
    assert np.array_equal(matrix, [[-0.9, 1.0], [-0.8, 1.0], [-0.95, 2.0]])
    assert front(matrix) == [0, 2]
