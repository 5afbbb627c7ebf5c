"""hwsim equals the IR reference bit for bit: every MAC style, both modes, layers and whole networks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from irgen import FORMAT_NAMES, chain_graphs
from modelgen import zoo_graph

from hwsim.engine import Engine, dequantize, quantize
from qexport.checkpoint import load_checkpoint
from qexport.data import digits_split, synthetic_images
from qexport.frontend.lower import lower
from qexport.quant.config import QuantConfig
from qexport.reference import quantize_input, run_graph
from qexport.reference.rounding import round_half_even_shift

ENGINES = [
    ("fast", "lut", "auto"),
    ("fast", "lut", "float"),
    ("fast", "lut", "blas"),
    ("faithful", "lut", "auto"),
    ("faithful", "per_level", "auto"),
]


def _random_feeds(graph, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in graph.inputs:
        info = graph.tensors[name]
        feeds[name] = rng.integers(info.dtype.min, info.dtype.max + 1, size=(batch, *info.shape[1:]))
    return feeds


@pytest.mark.parametrize("mode,codebook_style,conv", ENGINES)
@pytest.mark.parametrize("conv_format", FORMAT_NAMES)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_layer_chains_match_reference(conv_format: str, mode: str, codebook_style: str, conv: str, data) -> None:
    graph = data.draw(chain_graphs(conv_format=conv_format))
    feeds = _random_feeds(graph, data.draw(st.integers(1, 3)), data.draw(st.integers(0, 2**16)))
    expected = run_graph(graph, feeds, keep_all=True)
    outputs, counts = Engine(graph, mode=mode, codebook_style=codebook_style, conv=conv).run(feeds)
    for name in graph.outputs:
        np.testing.assert_array_equal(outputs[name], expected[name])
    assert all(layer.overflow_events == 0 for layer in counts)
    for node, layer in zip(graph.nodes, counts, strict=True):
        if node.op.value == "requantize":  # saturations: past clip_max, or below a clip_min that is not a ReLU's
            acc = expected[node.inputs[0]]
            channels = (1, -1) + (1,) * (acc.ndim - 2)
            multiplier = np.asarray(node.attrs["multiplier"]).reshape(channels)
            rounded = round_half_even_shift(acc * multiplier, np.asarray(node.attrs["shift"]).reshape(channels))
            zero = graph.tensors[node.outputs[0]].quant.zero_point
            low, high = node.attrs["clip_min"], node.attrs["clip_max"]
            value = rounded + zero
            assert layer.saturations == int(((value > high) | ((value < low) & (low < zero))).sum())


@pytest.mark.parametrize("mode,conv", [("fast", "auto"), ("fast", "float"), ("fast", "blas"), ("faithful", "auto")])
@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "digits_cnn"])
@pytest.mark.parametrize("pow2", [True, False])
def test_whole_networks_match_reference(name: str, pow2: bool, mode: str, conv: str) -> None:
    _, graph, calibration = zoo_graph(name, QuantConfig(pow2_scales=pow2, weight_bits=3, act_bits=5))
    inputs = synthetic_images(tuple(calibration.shape[1:]), 4, seed=11)
    feeds = {graph.inputs[0]: quantize_input(graph.tensors[graph.inputs[0]], inputs)}
    outputs, counts = Engine(graph, mode=mode, conv=conv).run(feeds)
    np.testing.assert_array_equal(outputs[graph.outputs[0]], run_graph(graph, feeds)[graph.outputs[0]])
    assert sum(layer.macs for layer in counts) > 0


def test_shipped_model_float_interface(digits_checkpoint) -> None:
    checkpoint = load_checkpoint(digits_checkpoint)
    graph = lower(checkpoint.model, checkpoint.input_shape)
    _, _, x_test, y_test = digits_split()
    name = graph.inputs[0]
    np.testing.assert_array_equal(quantize(graph, name, x_test), quantize_input(graph.tensors[name], x_test))
    outputs, _ = Engine(graph).run({name: quantize(graph, name, x_test)})
    logits = dequantize(graph, graph.outputs[0], outputs[graph.outputs[0]])
    assert logits.dtype == np.float32
    assert (logits.argmax(1) == y_test).mean() == pytest.approx(checkpoint.info["qat_accuracy"])
