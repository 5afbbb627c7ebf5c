"""Additive powers-of-two weights: the level set, nearest-level rounding, gradients, edge cases, IR, end to end."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from modelgen import zoo_graph
from quant_checks import check_straight_through_gradients, check_zero_channel_stays_zero

from hwsim.engine import Engine
from qexport.data import synthetic_images
from qexport.errors import QExportError
from qexport.formats import get_format
from qexport.quant.apot import ApotQuantizer, apot_levels, make_weight_quantizer
from qexport.quant.config import QuantConfig
from qexport.reference import quantize_input, run_graph

F32_EPS = 2.0**-24  # unit roundoff of float32


def paper_levels(bits: int) -> list[Fraction]:
    """Sorted {p1 + p2}: p1 in {0, 1, 1/4, 1/16, ...} (2^ceil(m/2) values), p2 in {0, 1/2, 1/8, ...} (2^floor(m/2))."""
    m = bits - 1
    first = [Fraction(0)] + [Fraction(1, 4**i) for i in range(2 ** ((m + 1) // 2) - 1)]
    second = [Fraction(0)] + [Fraction(1, 2 * 4**i) for i in range(2 ** (m // 2) - 1)]
    return sorted({a + b for a in first for b in second})


@pytest.mark.parametrize("bits", [3, 4, 5, 6, 7])
def test_level_set_is_the_papers_two_term_construction(bits: int) -> None:
    expected = paper_levels(bits)
    assert len(expected) == 2 ** (bits - 1)  # all sums distinct: the code budget of one sign bit is used exactly
    magnitudes, pairs = apot_levels(bits)
    assert [Fraction(float(v)) for v in magnitudes] == expected
    quantizer = ApotQuantizer(bits, 1)
    assert quantizer.magnitudes.double().tolist() == [float(v) for v in expected]  # exact in float32
    for value, (e1, e2) in zip(expected, pairs.tolist(), strict=True):
        assert (e1 == -1 or e1 % 2 == 0) and (e2 == -1 or e2 % 2 == 1)
        assert value == sum((Fraction(1, 2**e) for e in (e1, e2) if e >= 0), Fraction(0))
        assert (value * 2**quantizer.max_exponent).denominator == 1  # an integer on the grid
    assert quantizer.max_exponent == max(max(pair) for pair in pairs.tolist())


def brute_force_levels(w: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    """Nearest of {+-scale (p1 + p2)} (ties to the larger), clipped at the largest, by enumeration, in float32."""
    levels = np.array([float(v) for v in paper_levels(bits)], dtype=np.float32)
    ratio = np.minimum(np.abs(w).astype(np.float32) / scale[:, None].astype(np.float32), levels[-1])
    distance = np.abs(ratio.astype(np.float64)[..., None] - levels.astype(np.float64))
    best = np.zeros(ratio.shape, dtype=np.float32)
    for index in range(levels.size):  # ascending levels: the last minimum wins, so ties go to the larger
        best = np.where(distance[..., index] <= distance.min(axis=-1), levels[index], best)
    return scale[:, None].astype(np.float32) * (np.sign(w).astype(np.float32) * best)


def random_weights(seed: int, channels: int, width: int = 9) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(channels, width, generator=generator) * torch.rand(channels, 1, generator=generator)


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(3, 7),
    pow2=st.booleans(),
    seed=st.integers(0, 2**16),
    channels=st.integers(1, 5),
    clip=st.floats(0.3, 1.0),
)
def test_forward_is_the_nearest_apot_level(bits: int, pow2: bool, seed: int, channels: int, clip: float) -> None:
    w = random_weights(seed, channels)
    quantizer = ApotQuantizer(bits, channels, pow2=pow2)
    quantizer.initialize(w * clip)  # the largest level below max |w|: some weights clip
    out = quantizer(w).detach().numpy()
    scale = quantizer.alpha().detach().numpy()
    np.testing.assert_array_equal(out, brute_force_levels(w.numpy(), scale, bits))
    if pow2:
        assert np.all(np.log2(scale) == np.round(np.log2(scale)))


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(3, 7), pow2=st.booleans(), seed=st.integers(0, 2**16))
def test_ir_weight_round_trips(bits: int, pow2: bool, seed: int) -> None:
    quantizer = make_weight_quantizer(bits, 4, QuantConfig(weight_bits=bits, weight_method="apot", pow2_scales=pow2))
    w = random_weights(seed, 4, 12)
    out = quantizer(w).detach().double().numpy()
    weight = quantizer.to_ir_weight("w", w)
    fmt = get_format(weight.format)
    fmt.check(weight)
    assert weight.format == "apot" and weight.arrays["exponent"].shape == (4, 12, 2)
    np.testing.assert_array_equal(fmt.grid_scale(weight), quantizer.step().detach().double().numpy())
    if pow2:  # scale * level is exact in float32
        np.testing.assert_array_equal(out, fmt.real_values(weight))
    else:  # one float32 rounding of scale * level
        np.testing.assert_allclose(out, fmt.real_values(weight), rtol=F32_EPS, atol=0)
    zero = weight.arrays["sign"] == 0
    assert np.all(weight.arrays["exponent"][zero] == -1) and np.all(weight.arrays["exponent"][~zero].max(-1) >= 0)


@pytest.mark.parametrize("pow2", [False, True])
def test_gradients_pass_inside_the_range_and_train_the_scale(pow2: bool) -> None:
    quantizer = ApotQuantizer(4, 2, pow2=pow2)
    quantizer.initialize(torch.full((2, 4), 1.5))  # scale = 1, clipping threshold alpha = 1.5
    w = torch.tensor([[0.3, -1.2, 2.0, 1.5], [0.01, 0.0, -0.5, -1.45]])  # only 2.0 lies past alpha
    check_straight_through_gradients(quantizer, w, 1.5, pow2)


def test_all_zero_channel_stays_zero() -> None:
    check_zero_channel_stays_zero(ApotQuantizer(3, 2), "apot")


def test_constant_channel_and_smallest_width_levels() -> None:
    quantizer = ApotQuantizer(3, 1)
    w = torch.full((1, 5), -0.375)  # 0.375 / 1.5 = 0.25 exactly: the largest level reproduces it
    assert torch.equal(quantizer(w), w)
    quantizer = ApotQuantizer(3, 1)
    quantizer.initialize(torch.full((1, 1), 1.5))  # 3 bits: {0, 1/2, 1, 3/2} (uniform)
    ties = torch.tensor([[0.25, 0.3, 0.75, 1.2, 1.25, 9.0]])  # 0.25, 0.75 and 1.25 are ties
    assert quantizer(ties)[0].tolist() == [0.5, 0.5, 1.0, 1.0, 1.5, 1.5]


def test_bad_widths_are_refused_and_state_dict_depends_on_config_only() -> None:
    with pytest.raises(QExportError, match="apot weights need weight_bits >= 3"):
        QuantConfig(weight_bits=2, weight_method="apot")
    with pytest.raises(QExportError, match="3 <= weight_bits <= 7"):
        make_weight_quantizer(8, 4, QuantConfig(weight_bits=8, weight_method="apot"))
    config = QuantConfig(weight_method="apot", pow2_scales=True)
    trained, fresh = make_weight_quantizer(4, 3, config), make_weight_quantizer(4, 3, config)
    w = random_weights(5, 3)
    trained(w)
    assert set(trained.state_dict()) == {"alpha_param", "initialized"}
    fresh.load_state_dict(trained.state_dict())
    assert torch.equal(fresh(w), trained(w))


def test_apot_weights_end_to_end() -> None:
    config = QuantConfig(weight_bits=4, act_bits=4, pow2_scales=True, weight_method="apot")
    _, graph, _ = zoo_graph("digits_cnn", config, seed=3)
    formats = [graph.weights[node.attrs["weight"]].format for node in graph.nodes if "weight" in node.attrs]
    assert formats[0] == formats[-1] == "int_affine" and set(formats[1:-1]) == {"apot"}
    feeds = {graph.inputs[0]: quantize_input(graph.tensors[graph.inputs[0]], synthetic_images((1, 8, 8), 8, seed=4))}
    outputs, counts = Engine(graph, mode="faithful").run(feeds)  # two shifts + an add per MAC
    np.testing.assert_array_equal(outputs[graph.outputs[0]], run_graph(graph, feeds)[graph.outputs[0]])
    assert sum(layer.shifts for layer in counts if layer.mac_kind == "shift") > 0
