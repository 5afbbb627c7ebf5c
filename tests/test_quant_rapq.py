"""Power-of-two PTQ (RAPQ, seed 004, and the RTN baseline): power-of-two steps, weights on the grid,
balancing, BN-based reconstruction, digits W2A4 accuracy, and bit-exact lowering with pure-shift requant."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from modelgen import randomize_batchnorm
from torch import nn

from hwsim.engine import Engine
from qexport.checkpoint import checkpoint_from_model, load_checkpoint, save_checkpoint
from qexport.data import DIGITS_SHAPE, digits_split
from qexport.errors import QExportError
from qexport.export.onnx_qdq import export_onnx
from qexport.formats import get_format
from qexport.frontend.lower import lower
from qexport.frontend.prepare import prepare_qat
from qexport.ir.ops import Op
from qexport.quant import rapq
from qexport.quant.config import QuantConfig
from qexport.reference import quantize_input, run_graph
from qexport.training import accuracy, calibrate, seed_everything, train
from qexport.verify import verify
from qexport.zoo import build

W2A4 = QuantConfig(weight_bits=2, act_bits=4, pow2_scales=True)


class Tiny(nn.Module):
    """conv-bn-relu, conv-bn-relu, global pool, linear: small enough for many hypothesis examples."""

    def __init__(self, channels: int = 4, classes: int = 3):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        self.gap, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.gap(x), 1))


def tiny(seed: int) -> tuple[nn.Module, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Tiny()
    with torch.no_grad():
        randomize_batchnorm(model, generator)
    return model.eval(), torch.randn(24, 1, 6, 6, generator=generator)


def assert_on_power_of_two_grid(gm) -> None:
    """Integer log2 steps (exact powers of two) and weights that are integers in range times their step."""
    for quantizer in rapq.quantizers(gm):
        exponents = quantizer.step_param.detach().double().numpy()
        np.testing.assert_array_equal(exponents, np.round(exponents))
        assert all(math.frexp(float(s))[0] == 0.5 for s in quantizer.step().detach().double().numpy())
    for module in gm.modules():
        if hasattr(module, "weight_quant"):
            step = module.weight_quant.step_for(module.weight).detach().double()
            ratio = module.weight.detach().double() / step
            assert torch.equal(ratio, torch.round(ratio))
            assert ratio.min() >= module.weight_quant.qmin and ratio.max() <= module.weight_quant.qmax
            assert torch.equal(module.weight_quant(module.weight), module.weight)  # LSQ reproduces it


@pytest.fixture(scope="module")
def digits():
    torch.set_num_threads(2)
    seed_everything(0)
    x_train, y_train, x_test, y_test = digits_split()
    float_model = train(build("digits_cnn"), x_train, y_train, epochs=4, lr=1e-2, seed=0)
    calib = x_train[:256]
    return {
        "float": float_model,
        "calib": calib,
        "test": (x_test, y_test),
        "rtn": rapq.rtn_calibrate(float_model, W2A4, calib),
        "rapq": rapq.rapq_calibrate(float_model, W2A4, calib, seed=0),
    }


def test_steps_are_powers_of_two_and_weights_lie_on_the_grid(digits) -> None:
    for name in ("rtn", "rapq"):
        assert_on_power_of_two_grid(digits[name])
    bits = [m.weight_quant.bits for m in digits["rapq"].modules() if hasattr(m, "weight_quant")]
    assert bits == [8, 2, 2, 8]  # first/last layers at first_bits/last_bits


def test_rtn_takes_the_nearest_power_of_two_of_the_mse_step(digits) -> None:
    reference = prepare_qat(digits["float"], W2A4)
    calibrate(reference, digits["calib"])  # MSE steps (log2 kept unrounded in step_param)
    for ours, theirs in zip(rapq.quantizers(digits["rtn"]), rapq.quantizers(reference), strict=True):
        log2_mse = theirs.step_param.detach().double().numpy()
        np.testing.assert_array_equal(ours.step_param.detach().double().numpy(), np.round(log2_mse))


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), weight_bits=st.integers(2, 4), act_bits=st.integers(2, 4))
def test_balancing_never_increases_its_objective(seed: int, weight_bits: int, act_bits: int) -> None:
    model, x = tiny(seed)
    config = QuantConfig(weight_bits=weight_bits, act_bits=act_bits, pow2_scales=True)
    start = rapq.make_objective(rapq.rtn_calibrate(model, config, x), model, x)()
    gm = prepare_qat(model, config)
    calibrate(gm, x.numpy())
    objective = rapq.make_objective(gm, model, x)
    initial, final = rapq.balance_exponents(objective, max_sweeps=100)
    assert initial == start and final <= initial and objective() == final
    for quantizer in rapq.quantizers(gm):  # converged: no single +-1 move of a whole quantizer helps
        base = quantizer.step_param.detach().clone()
        assert torch.equal(base, torch.round(base))
        for shift in (-1.0, 1.0):
            quantizer.step_param.data.copy_(base + shift)
            assert objective() >= final
        quantizer.step_param.data.copy_(base)


def test_objective_is_the_sum_of_relative_layer_and_output_errors() -> None:
    model, x = tiny(5)
    gm = rapq.rtn_calibrate(model, QuantConfig(weight_bits=3, act_bits=3, pow2_scales=True), x)
    expected = 0.0
    folded = prepare_qat(model, QuantConfig(weight_bits=3, act_bits=3, pow2_scales=True))  # folded float weights
    with torch.no_grad():
        h_float = torch.relu(folded.conv1._conv_forward(x, folded.conv1.weight, folded.conv1.bias))
        h_quant = torch.relu(gm.conv1(gm.x_quant(x)))
        expected += float(((h_quant - h_float) ** 2).sum() / (h_float**2).sum())
        g_float = torch.relu(folded.conv2._conv_forward(h_float, folded.conv2.weight, folded.conv2.bias))
        g_quant = torch.relu(gm.conv2(gm.relu_quant(h_quant)))
        expected += float(((g_quant - g_float) ** 2).sum() / (g_float**2).sum())
        logits = model(x)
        expected += float(((gm(x) - logits) ** 2).sum() / (logits**2).sum())
        z_quant = gm.fc(torch.flatten(gm.gap_qpool(gm.relu_1_quant(g_quant)), 1))
        expected += float(((z_quant - logits) ** 2).sum() / (logits**2).sum())
    objective = rapq.make_objective(gm, model, x)
    assert [layer.target for layer in objective.layers] == ["conv1", "conv2", "fc"]
    assert objective() == pytest.approx(expected, rel=1e-5)


def test_bn_term_is_zero_when_the_statistics_match_and_counts_otherwise() -> None:
    generator = torch.Generator().manual_seed(0)
    mean, std = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.0, 0.25, 3.0])
    noise = torch.randn(64, 3, 5, 5, generator=generator, dtype=torch.float64)
    flat = noise.transpose(0, 1).reshape(3, -1)
    noise = (noise - flat.mean(1).reshape(1, 3, 1, 1)) / flat.std(1, unbiased=False).reshape(1, 3, 1, 1)
    z = (noise * std.double().reshape(1, 3, 1, 1) + mean.double().reshape(1, 3, 1, 1)).float()
    y = z + 0.1 * torch.randn(z.shape, generator=generator)
    layer = rapq.Layer("l", nn.Conv2d(1, 3, 1), None, (mean, std))
    plain = rapq.Layer("l", layer.module, None, None)
    reconstruction = float(((z - y) ** 2).sum() / (y**2).sum())
    assert float(rapq.block_loss(plain, z, y, 1.0)) == pytest.approx(reconstruction, rel=1e-6)
    assert float(rapq.block_loss(layer, z, y, 1.0)) == pytest.approx(reconstruction, rel=1e-4, abs=1e-6)
    shifted = z + torch.tensor([1.0, 0.0, 0.0]).reshape(1, 3, 1, 1)  # channel 0 mean off by one
    bn_error = 1.0 / float((mean**2 + std**2).sum())
    expected = float(((shifted - y) ** 2).sum() / (y**2).sum()) + 0.5 * bn_error
    assert float(rapq.block_loss(layer, shifted, y, 0.5)) == pytest.approx(expected, rel=1e-4)


def test_reconstruction_lowers_the_block_loss_with_up_or_down_choices(digits) -> None:
    gm = prepare_qat(digits["float"], W2A4)
    x = torch.from_numpy(digits["calib"])
    calibrate(gm, digits["calib"])
    objective = rapq.make_objective(gm, digits["float"], x)
    for index in (1, 2):  # the 2-bit layers
        layer = objective.layers[index]
        weight = layer.module.weight.detach().clone()
        x_quant = rapq.capture(gm, layer.module, x, want_input=True)
        result = rapq.reconstruct_layer(
            layer, weight, x_quant, objective.float_outputs[index], 150, torch.Generator().manual_seed(0)
        )
        quant = layer.module.weight_quant
        step = quant.step_for(weight)
        with torch.no_grad():
            bias = layer.module.quant_bias()

            def loss(integers: torch.Tensor, layer=layer, step=step, bias=bias, x_quant=x_quant, index=index) -> float:
                z = layer.module._conv_forward(x_quant, integers * step, bias)
                return float(rapq.block_loss(layer, z, objective.float_outputs[index], 0.1))

            nearest = torch.clamp(torch.round(weight / step), quant.qmin, quant.qmax)
            assert result.loss_before == loss(nearest)
            assert result.loss_after == loss(result.integers) < result.loss_before
            up = result.integers - torch.floor(weight / step)  # AdaRound: floor or floor + 1 (then clipped)
            clipped = (result.integers == quant.qmin) | (result.integers == quant.qmax)
            assert torch.all((up == 0) | (up == 1) | clipped)


def test_rapq_w2a4_is_at_least_as_accurate_as_rtn_on_digits(digits) -> None:
    x_test, y_test = digits["test"]
    rtn, ours = accuracy(digits["rtn"], x_test, y_test), accuracy(digits["rapq"], x_test, y_test)
    print(f"digits W2A4 test accuracy: RTN {rtn:.4f}, RAPQ {ours:.4f}")
    assert ours >= rtn


def test_rapq_is_deterministic_given_the_seed() -> None:
    model, x = tiny(7)
    first, again, other = (rapq.rapq_calibrate(model, W2A4, x, iters=60, seed=s) for s in (0, 0, 1))
    for key, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    assert_on_power_of_two_grid(other)


def test_lowered_rapq_is_bit_exact_with_pure_shift_requantization(digits, tmp_path) -> None:
    model = digits["rapq"]
    graph = lower(model, DIGITS_SHAPE, name="digits_rapq")
    requants = [node for node in graph.nodes if node.op is Op.REQUANTIZE]
    assert requants and all(set(node.attrs["multiplier"]) == {1} for node in requants)
    for module_name, module in model.named_modules():
        if hasattr(module, "weight_quant"):
            weight = graph.weights[f"{module_name}.weight"]
            get_format(weight.format).check(weight)
            forward = module.weight_quant(module.weight).detach().double().numpy()
            np.testing.assert_array_equal(get_format(weight.format).real_values(weight), forward)
    x_test, _ = digits["test"]
    feeds = {graph.inputs[0]: quantize_input(graph.tensors[graph.inputs[0]], x_test[:64])}
    outputs, _ = Engine(graph).run(feeds)
    np.testing.assert_array_equal(outputs[graph.outputs[0]], run_graph(graph, feeds)[graph.outputs[0]])
    result = verify(graph, model, export_onnx(graph), x_test[:64])
    assert result.ok and result.exact_expected and all(path.max_error_lsb == 0 for path in result.paths)
    path = tmp_path / "rapq.ckpt"  # checkpoints rebuild the same structure and reproduce the model
    save_checkpoint(path, checkpoint_from_model(model, "digits_cnn", {}, W2A4))
    loaded = load_checkpoint(path).model
    with torch.no_grad():
        assert torch.equal(loaded(torch.from_numpy(x_test)), model(torch.from_numpy(x_test)))


def test_edge_cases_zero_channel_constant_input_and_two_bits_everywhere() -> None:
    model, x = tiny(3)
    with torch.no_grad():
        model.conv2.weight[1].zero_()
    constant = x[:1].repeat(len(x), 1, 1, 1)
    config = QuantConfig(weight_bits=2, act_bits=2, first_bits=2, last_bits=2, input_bits=2, pow2_scales=True)
    for calib in (x, constant):
        for gm in (rapq.rtn_calibrate(model, config, calib), rapq.rapq_calibrate(model, config, calib, iters=20)):
            assert_on_power_of_two_grid(gm)
            assert torch.all(torch.isfinite(gm(x)))
            graph = lower(gm, (1, 6, 6))
            assert all(set(n.attrs["multiplier"]) == {1} for n in graph.nodes if n.op is Op.REQUANTIZE)
    assert torch.equal(rapq.rtn_calibrate(model, config, x).conv2.weight[1], torch.zeros_like(model.conv2.weight[1]))


def test_needs_power_of_two_lsq_config() -> None:
    model, x = tiny(0)
    for config in (QuantConfig(pow2_scales=False), QuantConfig(weight_method="pot", pow2_scales=True)):
        with pytest.raises(QExportError, match="pow2_scales=True and the lsq"):
            rapq.rapq_calibrate(model, config, x)
        with pytest.raises(QExportError, match="pow2_scales=True and the lsq"):
            rapq.rtn_calibrate(model, config, x)
