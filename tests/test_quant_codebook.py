"""Seed 003: codebook weights (learned levels) and channel-aware activation quantizers, against brute force."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from modelgen import zoo_graph

from hwsim.engine import Engine
from qexport.data import DIGITS_SHAPE, synthetic_images
from qexport.errors import QExportError
from qexport.export.onnx_qdq import export_onnx
from qexport.formats import get_format
from qexport.frontend.lower import lower
from qexport.frontend.prepare import prepare_qat
from qexport.quant.codebook import ChannelActQuant, CodebookQuantizer, candidate_steps, make_weight_quantizer
from qexport.quant.config import QuantConfig
from qexport.quant.lsq import ActQuant, LsqQuantizer, mse_scale
from qexport.reference import quantize_input, run_graph
from qexport.training import train
from qexport.verify import verify
from qexport.zoo import build

# --- slow, obvious references ---------------------------------------------------------------------------


def ref_grid(row: np.ndarray, level_bits: int, pow2: bool) -> float:
    """Smallest power of two, or float with <= 24 - level_bits significant bits, >= max|level| / (2^(b-1) - 1)."""
    peak = Fraction(float(np.abs(row.astype(np.float64)).max()))
    if peak == 0:
        return 1.0
    raw = peak / ((1 << (level_bits - 1)) - 1)
    exponent = 0
    while Fraction(2) ** exponent > raw:
        exponent -= 1
    while Fraction(2) ** (exponent + 1) <= raw:
        exponent += 1  # 2**exponent <= raw < 2**(exponent + 1)
    if pow2:
        return float(2**exponent if Fraction(2) ** exponent == raw else 2 ** (exponent + 1))
    unit = Fraction(2) ** (exponent - (24 - level_bits - 1))  # 24 - level_bits significant bits
    return float(math.ceil(raw / unit) * unit)


def ref_integers(levels: np.ndarray, level_bits: int, pow2: bool) -> tuple[np.ndarray, np.ndarray]:
    grids = np.array([ref_grid(row, level_bits, pow2) for row in levels], dtype=np.float32)
    limit = (1 << (level_bits - 1)) - 1
    return np.clip(np.round(levels.astype(np.float32) / grids[:, None]), -limit, limit), grids


def ref_nearest(w: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the nearest value per weight: smallest distance, then smallest value, then smallest index."""
    index = np.zeros(w.shape, dtype=np.int64)
    for c in range(w.shape[0]):
        for k in range(w.shape[1]):
            best = None
            for i, value in enumerate(values[c]):
                key = (abs(float(w[c, k]) - float(value)), float(value))
                if best is None or key < best:
                    best, index[c, k] = key, i
    return index


def ref_channel_error(x: np.ndarray, step: float, qmin: int, qmax: int) -> float:
    """Mean over channels (dim 1) of MSE / mean square, zero-power channels counting 0 (float64)."""
    errors = []
    for c in range(x.shape[1]):
        xc = x[:, c].astype(np.float64).ravel()
        power = float(np.mean(xc**2))
        err = float(np.mean((np.clip(np.round(xc / step), qmin, qmax) * step - xc) ** 2))
        errors.append(err / power if power > 0 else 0.0)
    return float(np.mean(errors))


def with_levels(levels: torch.Tensor, level_bits: int, pow2: bool) -> CodebookQuantizer:
    quantizer = CodebookQuantizer(int(math.log2(levels.shape[1])), levels.shape[0], level_bits, pow2)
    with torch.no_grad():
        quantizer.levels.copy_(levels)
    quantizer.initialized.fill_(True)
    return quantizer


def random_case(seed: int, channels: int, bits: int, lattice: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(levels [C, 2^bits], w [C, 9]); on a lattice: duplicate levels and weights exactly between two levels."""
    generator = torch.Generator().manual_seed(seed)
    scale = 2.0 ** float(torch.randint(-12, 6, (), generator=generator))
    if lattice:
        levels = torch.randint(-3, 4, (channels, 1 << bits), generator=generator) * scale
        w = torch.randint(-9, 10, (channels, 9), generator=generator) * (scale / 2)
    else:
        levels = torch.randn(channels, 1 << bits, generator=generator) * scale
        w = torch.randn(channels, 9, generator=generator) * scale
    return levels.float(), w.float()


# --- codebook weights -----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(2, 5),
    level_bits=st.integers(2, 10),
    pow2=st.booleans(),
    lattice=st.booleans(),
    seed=st.integers(0, 2**16),
    channels=st.integers(1, 4),
)
def test_forward_is_the_nearest_snapped_level(
    bits: int, level_bits: int, pow2: bool, lattice: bool, seed: int, channels: int
) -> None:
    levels, w = random_case(seed, channels, bits, lattice)
    quantizer = with_levels(levels, level_bits, pow2)
    integers, grids = ref_integers(levels.numpy(), level_bits, pow2)
    np.testing.assert_array_equal(quantizer.step().numpy(), grids)
    values = integers * grids[:, None]
    index = ref_nearest(w.numpy(), values)
    out = quantizer(w).detach().numpy()
    np.testing.assert_array_equal(out, np.take_along_axis(values, index, axis=1))
    np.testing.assert_array_equal(quantizer.codes(w)[0].numpy(), index)
    if pow2:
        assert np.all(np.log2(grids) == np.round(np.log2(grids)))


@settings(max_examples=30, deadline=None)
@given(bits=st.integers(2, 4), lattice=st.booleans(), seed=st.integers(0, 2**16), channels=st.integers(1, 4))
def test_level_gradients_are_the_summed_gradients_of_assigned_weights(
    bits: int, lattice: bool, seed: int, channels: int
) -> None:
    levels, w = random_case(seed, channels, bits, lattice)
    quantizer = with_levels(levels, 8, False)
    w.requires_grad_(True)
    upstream = torch.randint(-8, 9, w.shape, generator=torch.Generator().manual_seed(seed)).float()  # exact sums
    (quantizer(w) * upstream).sum().backward()
    integers, grids = ref_integers(levels.numpy(), 8, False)
    index = ref_nearest(w.detach().numpy(), integers * grids[:, None])
    expected = np.zeros(levels.shape, dtype=np.float32)
    for c in range(channels):
        for k in range(w.shape[1]):
            expected[c, index[c, k]] += upstream[c, k].item()
    np.testing.assert_array_equal(quantizer.levels.grad.numpy(), expected)
    np.testing.assert_array_equal(w.grad.numpy(), upstream.numpy())  # straight through to the latent weights


@settings(max_examples=40, deadline=None)
@given(
    bits=st.integers(2, 4),
    level_bits=st.sampled_from([2, 3, 4, 8, 12, 16]),
    pow2=st.booleans(),
    seed=st.integers(0, 2**16),
    log_scale=st.integers(-20, 10),
)
def test_to_ir_weight_holds_the_forward_exactly(bits: int, level_bits: int, pow2: bool, seed: int, log_scale: int):
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(3, 2, 3, 3, generator=generator) * 2.0**log_scale * torch.rand(3, 1, 1, 1, generator=generator)
    quantizer = CodebookQuantizer(bits, 3, level_bits, pow2)
    out = quantizer(w).detach().numpy().astype(np.float64)
    weight = quantizer.to_ir_weight("w", w)
    fmt = get_format(weight.format)
    fmt.check(weight)
    assert weight.format == "codebook" and weight.shape == (3, 2, 3, 3)
    np.testing.assert_array_equal(fmt.real_values(weight), out)
    np.testing.assert_array_equal(fmt.grid_scale(weight), quantizer.step().numpy().astype(np.float64))
    assert weight.arrays["indices"].dtype == np.uint8
    assert weight.arrays["levels"].dtype == (np.int8 if level_bits <= 8 else np.int16)
    assert weight.arrays["levels"].shape == (3, 1 << bits)
    assert np.abs(weight.arrays["levels"]).max() <= (1 << (level_bits - 1)) - 1
    if pow2:
        assert all(math.frexp(s)[0] == 0.5 for s in fmt.grid_scale(weight))


def test_init_is_quantiles_then_lloyd_iterations() -> None:
    generator = torch.Generator().manual_seed(5)
    w = torch.randn(3, 40, generator=generator) ** 3
    quantizer = CodebookQuantizer(3, 3, kmeans_iters=6)
    quantizer.initialize(w)
    data = w.double().numpy()
    expected = np.quantile(data, (np.arange(8) + 0.5) / 8, axis=1).T
    start = expected.copy()
    for _ in range(6):
        index = ref_nearest(data, expected)
        for c in range(3):
            for i in range(8):
                if np.any(index[c] == i):
                    expected[c, i] = data[c][index[c] == i].mean()
    # float64 reductions in another order, rounded to float32: equal up to a few float32 ulps
    np.testing.assert_allclose(quantizer.levels.detach().numpy(), expected, rtol=1e-6, atol=0)

    def mse(levels: np.ndarray) -> float:
        return float(np.mean((np.take_along_axis(levels, ref_nearest(data, levels), axis=1) - data) ** 2))

    assert mse(expected) < mse(start)  # Lloyd reduces the error of the quantile init


def test_all_zero_and_constant_channels() -> None:
    w = torch.tensor([[0.0] * 6, [0.3] * 6, [0.5, -0.25, 0.1, 0.0, 0.7, -0.9]], requires_grad=True)
    quantizer = CodebookQuantizer(2, 3, pow2=True)
    out = quantizer(w)
    assert torch.equal(out[0], torch.zeros(6)) and quantizer.step()[0].item() == 1.0
    grid = quantizer.step()[1].item()
    assert torch.all(torch.abs(out[1] - 0.3) <= grid / 2)
    out.sum().backward()
    assert quantizer.levels.grad[0].sum().item() == 6.0  # the zero channel's level still learns
    weight = quantizer.to_ir_weight("w", w.detach())
    get_format("codebook").check(weight)
    assert np.all(weight.arrays["levels"][0] == 0)
    np.testing.assert_array_equal(get_format("codebook").real_values(weight), out.detach().double().numpy())


def test_two_bit_weights_with_two_bit_levels() -> None:
    config = QuantConfig(weight_bits=2, weight_method="codebook", options={"codebook_level_bits": 2})
    quantizer = make_weight_quantizer(2, 4, config)
    w = torch.randn(4, 50, generator=torch.Generator().manual_seed(2))
    out = quantizer(w)
    weight = quantizer.to_ir_weight("w", w)
    assert quantizer.levels.shape == (4, 4) and set(np.unique(weight.arrays["levels"])) <= {-1, 0, 1}
    np.testing.assert_array_equal(get_format("codebook").real_values(weight), out.detach().double().numpy())
    assert all(len(np.unique(row)) <= 3 for row in out.detach().numpy())
    with pytest.raises(QExportError, match="codebook_level_bits"):
        make_weight_quantizer(2, 4, QuantConfig(options={"codebook_level_bits": 1}))


# --- channel-aware activation quantizer -----------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), factor=st.sampled_from([30.0, 100.0, 1000.0]), pow2=st.booleans())
def test_channel_init_beats_global_mse_on_a_huge_variance_channel(seed: int, factor: float, pow2: bool) -> None:
    generator = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(8, 6, 5, 5, generator=generator))
    x[:, int(torch.randint(0, 6, (), generator=generator))] *= factor
    quantizer = ChannelActQuant(4, False, pow2=pow2)
    quantizer(x)
    chosen = quantizer.step().item()
    data = x.numpy()
    candidates = [float(s) for s in candidate_steps(x, 0, 15, pow2)]
    errors = [ref_channel_error(data, s, 0, 15) for s in candidates]
    assert ref_channel_error(data, chosen, 0, 15) <= min(errors) * (1 + 1e-5)  # float32 vs float64 objective
    flat = data.astype(np.float64).ravel()
    global_mse = [float(np.mean((np.clip(np.round(flat / s), 0, 15) * s - flat) ** 2)) for s in candidates]
    global_step = candidates[int(np.argmin(global_mse))]
    lsq_step = float(mse_scale(x, 0, 15, None)[0])
    lsq_step = 2.0 ** round(math.log2(lsq_step)) if pow2 else lsq_step
    for other in (global_step, lsq_step):
        assert ref_channel_error(data, chosen, 0, 15) < 0.5 * ref_channel_error(data, other, 0, 15)


def test_channel_init_equals_global_on_equal_channels_and_handles_zeros() -> None:
    x = torch.relu(torch.randn(16, 1, 6, 6, generator=torch.Generator().manual_seed(0)))
    quantizer = ChannelActQuant(4, False)
    quantizer(x)
    data = x.numpy()
    errors = [ref_channel_error(data, float(s), 0, 15) for s in candidate_steps(x, 0, 15, False)]
    assert ref_channel_error(data, quantizer.step().item(), 0, 15) <= min(errors) * (1 + 1e-5)
    zeros = ChannelActQuant(4, False)
    assert torch.equal(zeros(torch.zeros(2, 3, 4, 4)), torch.zeros(2, 3, 4, 4)) and zeros.step().item() > 0


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(2, 8), signed=st.booleans(), pow2=st.booleans(), seed=st.integers(0, 2**16))
def test_channel_quantizer_in_eval_mode_is_exact(bits: int, signed: bool, pow2: bool, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 5, 3, 3, generator=generator) * torch.rand(1, 5, 1, 1, generator=generator) * 10
    quantizer = ChannelActQuant(bits, signed, pow2=pow2)
    assert isinstance(quantizer, LsqQuantizer)
    quantizer(x)
    quantizer.eval()
    step = quantizer.step().detach().numpy()
    assert step.shape == (1,) and step.dtype == np.float32
    expected = np.clip(np.round(x.numpy() / step[0]), quantizer.qmin, quantizer.qmax) * step[0]
    np.testing.assert_array_equal(quantizer(x).detach().numpy(), expected)
    quantizer.train()
    np.testing.assert_array_equal(quantizer(x).detach().numpy(), expected)  # the auxiliary term is backward only


@pytest.mark.parametrize("pow2", [False, True])
def test_auxiliary_gradient_is_the_channel_error_gradient(pow2: bool) -> None:
    generator = torch.Generator().manual_seed(3)
    x = torch.relu(torch.randn(4, 3, 4, 4, generator=generator))
    x[:, 0] *= 20
    upstream = torch.randn(x.shape, generator=generator)

    def step_grad(quantizer: LsqQuantizer) -> float:
        quantizer.step_param.data.fill_(-3.0 if pow2 else 0.3)
        quantizer.initialized.fill_(True)
        (quantizer(x) * upstream).sum().backward()
        return quantizer.step_param.grad.item()

    plain = step_grad(ActQuant(4, False, pow2=pow2))
    assert step_grad(ChannelActQuant(4, False, pow2=pow2, aux_weight=0.0)) == plain
    with_aux = step_grad(ChannelActQuant(4, False, pow2=pow2, aux_weight=2.0))
    # analytic d/ds of the channel error with LSQ's straight-through rounding, float64
    s = 0.125 if pow2 else 0.3
    data = x.numpy().astype(np.float64).transpose(1, 0, 2, 3).reshape(3, -1)
    v = data / s
    q = np.clip(np.round(v), 0, 15)
    dq = np.where(v < 0, 0.0, np.where(v > 15, 15.0, q - v))
    grads = [np.mean(2 * (q[c] * s - data[c]) * dq[c]) / np.mean(data[c] ** 2) for c in range(3)]
    expected = 2.0 * float(np.mean(grads)) * (s * math.log(2) if pow2 else 1.0)  # d step / d log2 step
    np.testing.assert_allclose(with_aux - plain, expected, rtol=1e-4)  # float32 sums of 48 terms per channel
    assert abs(expected) > 1e-3


# --- end to end -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["digits_cnn", "resnet20"])
def test_codebook_and_channel_quantizers_end_to_end(name: str) -> None:
    config = QuantConfig(weight_bits=4, act_bits=4, pow2_scales=True, weight_method="codebook", act_method="channel")
    model, graph, _ = zoo_graph(name, config, seed=3)
    formats = [graph.weights[node.attrs["weight"]].format for node in graph.nodes if "weight" in node.attrs]
    assert formats[0] == formats[-1] == "int_affine" and set(formats[1:-1]) == {"codebook"}
    shape = graph.tensors[graph.inputs[0]].shape[1:]
    inputs = synthetic_images(shape, 8, seed=4)
    result = verify(graph, model, export_onnx(graph), inputs)
    assert result.ok and result.exact_expected and all(path.max_error_lsb == 0 for path in result.paths)
    feeds = {graph.inputs[0]: quantize_input(graph.tensors[graph.inputs[0]], inputs)}
    expected = run_graph(graph, feeds)[graph.outputs[0]]
    for style in ("lut", "per_level"):
        mode = "faithful" if name == "digits_cnn" else "fast"
        outputs, counts = Engine(graph, mode=mode, codebook_style=style).run(feeds)
        np.testing.assert_array_equal(outputs[graph.outputs[0]], expected)
        assert any(layer.mac_kind == f"codebook_{style}" for layer in counts)


def test_training_moves_the_levels_and_stays_exact() -> None:
    config = QuantConfig(weight_bits=3, act_bits=4, weight_method="codebook", act_method="channel")
    model, _, _ = zoo_graph("digits_cnn", config, seed=1)
    before = model.conv2.weight_quant.levels.detach().clone()
    act_step = model.relu2_quant.step().item()
    x = synthetic_images(DIGITS_SHAPE, 128, seed=2)
    y = np.arange(128) % 10
    train(model, x, y, epochs=1, lr=1e-2, seed=0)
    assert not torch.equal(model.conv2.weight_quant.levels, before) and model.relu2_quant.step().item() != act_step
    graph = lower(model, DIGITS_SHAPE, "digits_codebook")
    feeds = {graph.inputs[0]: quantize_input(graph.tensors[graph.inputs[0]], x[:16])}
    outputs, _ = Engine(graph, mode="faithful", codebook_style="per_level").run(feeds)
    np.testing.assert_array_equal(outputs[graph.outputs[0]], run_graph(graph, feeds)[graph.outputs[0]])
    rebuilt = prepare_qat(build("digits_cnn"), config)  # checkpoints: shapes depend on the config only
    rebuilt.load_state_dict(model.state_dict())
    again = lower(rebuilt.eval(), DIGITS_SHAPE, "digits_codebook").weights["conv2.weight"]
    for key, array in graph.weights["conv2.weight"].arrays.items():
        np.testing.assert_array_equal(again.arrays[key], array)
    assert again.attrs == graph.weights["conv2.weight"].attrs
