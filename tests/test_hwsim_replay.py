"""Replayed runs (``hwsim.replay``) equal plain ones: outputs and every counter, over many runs of one engine
with changing feeds, batch sizes (more than it keeps programs for) and worker counts."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from irgen import chain_graphs
from modelgen import zoo_graph

from hwsim import native_conv
from hwsim.engine import REPLAYED_SHAPES, Engine
from qexport.quant.config import QuantConfig
from qexport.reference import run_graph


def _random_feeds(graph, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        name: rng.integers(graph.tensors[name].dtype.min, graph.tensors[name].dtype.max + 1,
                           size=(batch, *graph.tensors[name].shape[1:]))
        for name in graph.inputs
    }  # fmt: skip


def _check_runs(graph, batches: list[int], threads: int, seed: int) -> Engine:
    """Run one engine on a feed per batch size; each run equals the reference and a fresh engine's run."""
    engine = Engine(graph, threads=threads)
    rng = np.random.default_rng(seed)
    for batch in batches:
        feeds = _random_feeds(graph, batch, rng)
        outputs, counts = engine.run(feeds)
        expected = run_graph(graph, feeds)
        _, fresh_counts = Engine(graph, threads=threads).run(feeds)
        for name in graph.outputs:
            np.testing.assert_array_equal(outputs[name], expected[name])
        assert [asdict(layer) for layer in counts] == [asdict(layer) for layer in fresh_counts]
    return engine


def _replayed_nodes(engine: Engine) -> int:
    """Nodes replayed by this (the calling) thread's programs."""
    shapes = engine._local.__dict__.get("shapes", {})
    return sum(state.program.replayed for state in shapes.values() if state.program is not None)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_replayed_chains_equal_plain_runs(data) -> None:
    graph = data.draw(chain_graphs())
    batches = data.draw(st.lists(st.integers(1, 4), min_size=3, max_size=REPLAYED_SHAPES + 6))
    _check_runs(graph, batches, data.draw(st.sampled_from([1, 2])), data.draw(st.integers(0, 2**16)))


# the same size three times in a row reaches a replay; then more sizes than the engine keeps programs for
BATCHES = [4, 4, 4, 4, 2, 2, 2, 5, 3, 6, 7, 4, 2]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name,pow2", [("mobilenetv2", True), ("mobilenetv2", False), ("resnet20", False)])
def test_replayed_networks_equal_plain_runs(name: str, pow2: bool, threads: int) -> None:
    _, graph, _ = zoo_graph(name, QuantConfig(pow2_scales=pow2))
    engine = _check_runs(graph, BATCHES, threads, seed=3)
    if name == "mobilenetv2":
        if not native_conv.available():
            pytest.skip("the native kernels need AVX-512 VNNI, which this CPU lacks: nothing is replayed")
        assert _replayed_nodes(engine) > 0
