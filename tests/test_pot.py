"""Power-of-two weights: levels, nearest-level rounding, gradients, edge cases, and end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from modelgen import zoo_graph

from hwsim.engine import Engine
from qexport.data import synthetic_images
from qexport.errors import QExportError
from qexport.export.onnx_qdq import export_onnx
from qexport.quant.config import QuantConfig
from qexport.quant.pot import PotQuantizer
from qexport.reference import quantize_input, run_graph
from qexport.verify import verify


def brute_force_levels(w: np.ndarray, alpha: np.ndarray, max_exponent: int) -> np.ndarray:
    """Nearest of {0, +-alpha 2^-e} (ties to the larger magnitude), by enumeration."""
    levels = np.array([0.0] + [2.0**-e for e in range(max_exponent + 1)])
    ratio = np.clip(np.abs(w) / alpha[:, None], 0, 1)
    distance = np.abs(ratio[..., None] - levels)
    best = np.zeros(ratio.shape)
    for index in range(levels.size):  # last minimum wins: levels ascend after 0, so ties go to the larger
        better = distance[..., index] <= distance.min(axis=-1)
        best = np.where(better, levels[index], best)
    return np.sign(w) * best * alpha[:, None]


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(3, 6), pow2=st.booleans(), seed=st.integers(0, 2**16), channels=st.integers(1, 5))
def test_forward_is_the_nearest_power_of_two_level(bits: int, pow2: bool, seed: int, channels: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(channels, 7, generator=generator) * torch.rand(channels, 1, generator=generator)
    quantizer = PotQuantizer(bits, channels, pow2=pow2)
    out = quantizer(w).detach().double().numpy()
    alpha = quantizer.alpha().detach().double().numpy()
    expected = brute_force_levels(w.double().numpy(), alpha, quantizer.max_exponent)
    np.testing.assert_array_equal(out, expected)
    sign, exponent = quantizer.codes(w)
    assert set(np.unique(sign.numpy())) <= {-1, 0, 1}
    assert exponent.min() >= 0 and exponent.max() <= (1 << (bits - 1)) - 2
    if pow2:
        assert np.all(np.log2(alpha) == np.round(np.log2(alpha)))


def test_gradients_pass_inside_the_range_and_train_alpha() -> None:
    quantizer = PotQuantizer(4, 2)
    w = torch.tensor([[0.3, -0.7, 2.0], [0.01, 0.0, -0.5]], requires_grad=True)
    quantizer.initialize(w.detach() * 0 + torch.tensor([[1.0], [1.0]]))
    quantizer(w).sum().backward()
    assert w.grad.tolist() == [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]  # 2.0 lies past alpha = 1: clipped
    assert quantizer.alpha_param.grad is not None and torch.all(quantizer.alpha_param.grad != 0)


def test_all_zero_channel_stays_zero_with_unit_alpha() -> None:
    quantizer = PotQuantizer(4, 2)
    w = torch.tensor([[0.0, 0.0, 0.0], [0.5, -0.25, 0.1]])
    out = quantizer(w)
    assert torch.equal(out[0], torch.zeros(3)) and quantizer.alpha()[0].item() == 1.0
    assert torch.equal(quantizer.codes(w)[0][0], torch.zeros(3))


def test_pot_needs_three_bits() -> None:
    with pytest.raises(QExportError, match="pot weights need weight_bits >= 3"):
        QuantConfig(weight_bits=2, weight_method="pot")
    with pytest.raises(QExportError, match="weight_method='nope'"):
        QuantConfig(weight_method="nope")
    legacy = QuantConfig.from_dict({"weight_format": "int_affine"})  # checkpoints written before weight_method
    assert legacy.weight_method == "lsq"


@pytest.mark.parametrize("pow2", [True, False])
def test_resnet20_with_pot_weights_end_to_end(pow2: bool) -> None:
    config = QuantConfig(weight_bits=4, act_bits=4, pow2_scales=pow2, weight_method="pot")
    model, graph, _ = zoo_graph("resnet20", config, seed=3)
    formats = [graph.weights[node.attrs["weight"]].format for node in graph.nodes if "weight" in node.attrs]
    assert formats[0] == formats[-1] == "int_affine" and set(formats[1:-1]) == {"pot"}
    inputs = synthetic_images((3, 32, 32), 8, seed=4)
    result = verify(graph, model, export_onnx(graph), inputs)
    assert result.ok and result.exact_expected == pow2
    if pow2:
        assert all(path.max_error_lsb == 0 for path in result.paths)
    feeds = {graph.inputs[0]: quantize_input(graph.tensors[graph.inputs[0]], inputs)}
    outputs, counts = Engine(graph, mode="faithful").run(feeds)  # the shift MAC itself
    np.testing.assert_array_equal(outputs[graph.outputs[0]], run_graph(graph, feeds)[graph.outputs[0]])
    assert sum(layer.shifts for layer in counts if layer.mac_kind == "shift") > 0
