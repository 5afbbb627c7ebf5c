"""hwsim.buffer_slots: fused steps share output arrays only when their tensors are never live together.

The oracle recomputes each tensor's life by brute force (every tensor that is a view of it, followed
forward through flatten/reshape chains, and every node that reads any of them); the engine's outputs on
these graphs are checked bit for bit against the reference in tests/test_differential.py."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from irgen import cnn_graphs

from hwsim.buffer_slots import VIEW_OPS
from hwsim.engine import Engine


def life_end(graph, tensor: str) -> int:
    position = {node.name: index for index, node in enumerate(graph.nodes)}
    views, frontier = {tensor}, [tensor]
    while frontier:
        current = frontier.pop()
        for node in graph.consumers(current):
            if node.op in VIEW_OPS:
                views.update(node.outputs)
                frontier.extend(node.outputs)
    if views & set(graph.outputs):
        return len(graph.nodes)
    return max((position[node.name] for view in views for node in graph.consumers(view)), default=-1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=cnn_graphs())
def test_buffers_sharing_a_slot_never_hold_live_tensors_together(graph) -> None:
    engine = Engine(graph)
    position = {node.name: index for index, node in enumerate(graph.nodes)}
    lives = {}
    for name in engine.channels_last:
        lives[name] = (position[name], life_end(graph, engine.fused[name].outputs[0]))
    for conv, (_, _, add, add_requant) in engine.residuals.items():
        lives[add.name] = (min(position[conv], lives[add.name][0]), life_end(graph, add_requant.outputs[0]))
    assert set(engine._slots) == set(lives)
    for first, second in itertools.combinations(lives, 2):
        if engine._slots[first] == engine._slots[second]:
            (start_a, end_a), (start_b, end_b) = sorted((lives[first], lives[second]))
            assert max(end_a, start_a) < start_b, (first, second, lives[first], lives[second])
