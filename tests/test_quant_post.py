"""Powers-of-sqrt(2) weights: levels, gradients, edge cases, the IR round trip, the LUT, and end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from modelgen import zoo_graph
from quant_checks import check_straight_through_gradients, check_zero_channel_stays_zero

from hwsim.engine import Engine
from hwsim.weights import sqrt2_lut
from qexport.data import synthetic_images
from qexport.errors import QExportError
from qexport.formats import get_format
from qexport.formats.post import product_table
from qexport.frontend.lower import lower
from qexport.quant.config import QuantConfig
from qexport.quant.post import PostQuantizer, make_weight_quantizer, post_lut_table
from qexport.reference import quantize_input, run_graph

F32_EPS = 2.0**-24  # unit roundoff of float32


def brute_force_levels(w: np.ndarray, alpha: np.ndarray, bits: int) -> np.ndarray:
    """Nearest of {0, +-alpha sqrt(2)^-k}, k = 0 .. 2^(bits-1) - 2 (ties to the larger), by enumeration, in float32."""
    levels = np.array([0.0] + [math.sqrt(2.0) ** -k for k in range((1 << (bits - 1)) - 2, -1, -1)], dtype=np.float32)
    ratio = np.minimum(np.abs(w).astype(np.float32) / alpha[:, None].astype(np.float32), np.float32(1.0))
    distance = np.abs(ratio.astype(np.float64)[..., None] - levels.astype(np.float64))
    best = np.zeros(ratio.shape, dtype=np.float32)
    for index in range(levels.size):  # ascending levels: the last minimum wins, so ties go to the larger
        best = np.where(distance[..., index] <= distance.min(axis=-1), levels[index], best)
    return alpha[:, None].astype(np.float32) * (np.sign(w).astype(np.float32) * best)


def random_weights(seed: int, channels: int, width: int = 9) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(channels, width, generator=generator) * torch.rand(channels, 1, generator=generator)


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(3, 6),
    pow2=st.booleans(),
    seed=st.integers(0, 2**16),
    channels=st.integers(1, 5),
    clip=st.floats(0.3, 1.0),
)
def test_forward_is_the_nearest_post_level(bits: int, pow2: bool, seed: int, channels: int, clip: float) -> None:
    w = random_weights(seed, channels)
    quantizer = PostQuantizer(bits, channels, pow2=pow2)
    quantizer.initialize(w * clip)  # alpha below max |w|: some weights clip
    out = quantizer(w).detach().numpy()
    alpha = quantizer.alpha().detach().numpy()
    np.testing.assert_array_equal(out, brute_force_levels(w.numpy(), alpha, bits))
    sign, index = quantizer.codes(w)
    exponent = quantizer.exponents(index)
    assert set(np.unique(sign.numpy())) <= {-1, 0, 1}
    assert exponent.min() >= 0 and exponent.max() <= (1 << (bits - 1)) - 2
    if pow2:
        assert np.all(np.log2(alpha) == np.round(np.log2(alpha)))


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(3, 6), pow2=st.booleans(), seed=st.integers(0, 2**16), extra=st.integers(0, 6))
def test_ir_weight_round_trips(bits: int, pow2: bool, seed: int, extra: int) -> None:
    max_exponent = (1 << (bits - 1)) - 2
    frac_bits = (max_exponent + 1) // 2 + extra
    options = {"post_lut_frac_bits": frac_bits}
    quantizer = make_weight_quantizer(bits, 4, QuantConfig(weight_bits=bits, pow2_scales=pow2, options=options))
    w = random_weights(seed, 4, 12)
    out = quantizer(w).detach().double().numpy()
    weight = quantizer.to_ir_weight("w", w)
    fmt = get_format(weight.format)
    fmt.check(weight)
    assert weight.format == "post" and weight.attrs["lut_frac_bits"] == frac_bits
    np.testing.assert_array_equal(fmt.grid_scale(weight), quantizer.step().detach().double().numpy())
    real = fmt.real_values(weight)  # float64 sqrt(2.0) ** -k: itself within a few float64 ulps of the exact level
    sign, exponent = weight.arrays["sign"], weight.arrays["exponent"]
    even = exponent % 2 == 0
    if pow2:  # even levels are exact dyadics; odd ones carry one float32 rounding of sqrt(2)^-k
        exact_even = sign * np.ldexp(np.asarray(weight.attrs["scale"])[:, None], -(exponent // 2))
        np.testing.assert_array_equal(out[even], exact_even[even])
        np.testing.assert_allclose(out, real, rtol=F32_EPS, atol=0)
    else:  # level and alpha * level: two float32 roundings
        np.testing.assert_allclose(out, real, rtol=2 * F32_EPS + F32_EPS**2, atol=0)
    assert np.all(weight.arrays["exponent"][weight.arrays["sign"] == 0] == 0)


@pytest.mark.parametrize("bits", [3, 4, 5, 6])
@pytest.mark.parametrize("signed", [False, True])
def test_lut_products_are_within_half_a_unit(bits: int, signed: bool) -> None:
    max_exponent = (1 << (bits - 1)) - 2
    act_bits = 4
    for frac_bits in ((max_exponent + 1) // 2, (max_exponent + 1) // 2 + 4):
        table = post_lut_table(bits, act_bits, frac_bits, signed=signed)
        x_min = -(1 << (act_bits - 1)) if signed else 0
        x_max = x_min + (1 << act_bits) - 1
        odd = list(range(1, max_exponent + 1, 2))
        assert table.shape == (1 << act_bits, len(odd))
        np.testing.assert_array_equal(table, sqrt2_lut(frac_bits, max_exponent, x_min, x_max))
        for column, k in enumerate(odd):
            np.testing.assert_array_equal(table[:, column], product_table(k, frac_bits, x_min, x_max))
            for row, n in enumerate(table[:, column].tolist()):
                x = x_min + row
                # |n - x 2^(F - k/2)| < 1/2  <=>  (2|n| - 1)^2 < 4 x^2 2^(2F - k) < (2|n| + 1)^2, exactly in integers
                four_exact = 4 * x * x << (2 * frac_bits - k)
                assert (2 * abs(n) - 1) ** 2 < four_exact < (2 * abs(n) + 1) ** 2 or x == n == 0
                assert n * x >= 0
                assert abs(n - x * math.sqrt(2.0) ** -k * 2.0**frac_bits) < 0.5 + 1e-9


def test_lut_shapes_for_three_and_four_bits() -> None:
    assert post_lut_table(3, 3, 5).shape == (8, 1)  # odd exponent 1 only
    assert post_lut_table(4, 4, 7).shape == (16, 3)  # odd exponents 1, 3, 5
    assert make_weight_quantizer(4, 1, QuantConfig(weight_method="post")).lut_frac_bits == 3 + 4  # the default
    assert post_lut_table(3, 3, 1)[:, 0].tolist() == [round(x * math.sqrt(2.0) / 2**0) for x in range(8)]


@pytest.mark.parametrize("pow2", [False, True])
def test_gradients_pass_inside_the_range_and_train_alpha(pow2: bool) -> None:
    quantizer = PostQuantizer(4, 2, pow2=pow2)
    quantizer.initialize(torch.ones(2, 4))  # alpha = 1
    w = torch.tensor([[0.3, -0.7, 2.0, 1.0], [0.01, 0.0, -0.5, -0.95]])  # only 2.0 lies past alpha
    check_straight_through_gradients(quantizer, w, 1.0, pow2)


def test_all_zero_channel_stays_zero_with_unit_alpha() -> None:
    check_zero_channel_stays_zero(PostQuantizer(3, 2), "post")


def test_constant_channel_is_reproduced_and_smallest_width_levels() -> None:
    quantizer = PostQuantizer(3, 1)
    w = torch.full((1, 5), -0.37)
    assert torch.equal(quantizer(w), w)  # alpha = |c|: every weight sits on the top level
    levels = torch.tensor([[0.0, 0.25, 0.5, 0.61, 0.8, 1.0]])  # 3 bits: {0, 1/2, 1/sqrt(2), 1}; 0.25 is a tie
    quantizer = PostQuantizer(3, 1)
    quantizer.initialize(torch.ones(1, 1))
    expected = [0.0, 0.5, 0.5, 1 / math.sqrt(2.0), 1 / math.sqrt(2.0), 1.0]
    assert quantizer(levels)[0].tolist() == torch.tensor(expected, dtype=torch.float32).tolist()


def test_bad_widths_and_options_are_refused() -> None:
    with pytest.raises(QExportError, match="post weights need weight_bits >= 3"):
        QuantConfig(weight_bits=2, weight_method="post")
    with pytest.raises(QExportError, match="3 <= weight_bits <= 6"):
        make_weight_quantizer(7, 4, QuantConfig(weight_bits=7, weight_method="post"))
    with pytest.raises(QExportError, match="post_lut_frac_bits=2 out of range 3..24"):
        make_weight_quantizer(4, 4, QuantConfig(weight_method="post", options={"post_lut_frac_bits": 2}))


def test_state_dict_shapes_depend_only_on_the_config() -> None:
    config = QuantConfig(weight_method="post", pow2_scales=True)
    trained, fresh = make_weight_quantizer(4, 3, config), make_weight_quantizer(4, 3, config)
    w = random_weights(5, 3)
    trained(w)
    assert set(trained.state_dict()) == {"alpha_param", "initialized"}
    fresh.load_state_dict(trained.state_dict())
    assert torch.equal(fresh(w), trained(w))


def test_post_weights_end_to_end() -> None:  # digits_cnn: resnet20 passes too but takes ~25 s to build
    config = QuantConfig(weight_bits=4, act_bits=4, pow2_scales=True, weight_method="post")
    model, graph, _ = zoo_graph("digits_cnn", config, seed=3)
    formats = [graph.weights[node.attrs["weight"]].format for node in graph.nodes if "weight" in node.attrs]
    assert formats[0] == formats[-1] == "int_affine" and set(formats[1:-1]) == {"post"}
    inputs = synthetic_images((1, 8, 8), 8, seed=4)
    for split in (False, True):
        if split:  # the two-shift-accumulator lowering of the same model
            graph = lower(model, (1, 8, 8), "digits_cnn", post_mac="split")
        feeds = {graph.inputs[0]: quantize_input(graph.tensors[graph.inputs[0]], inputs)}
        outputs, counts = Engine(graph, mode="faithful").run(feeds)
        np.testing.assert_array_equal(outputs[graph.outputs[0]], run_graph(graph, feeds)[graph.outputs[0]])
        kinds = {layer.mac_kind for layer in counts}
        assert ("shift" in kinds and "shift_lut" not in kinds) if split else "shift_lut" in kinds
        if not split:
            assert sum(layer.lut_reads for layer in counts if layer.mac_kind == "shift_lut") > 0
