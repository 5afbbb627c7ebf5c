"""DDQ (seed 001): the hard forward is the uniform quantizer at the chosen bits, gate/step/range gradients,
edge cases, the IR round trip, the budget penalty moving the chosen bits, hwsim cost tables, and end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from modelgen import ZOO_CASES, calibrated
from torch import nn

from hwsim.cost.model import estimate
from hwsim.cost.targets import hardware_of
from hwsim.engine import Engine
from qexport.data import digits_split, synthetic_images
from qexport.errors import QExportError
from qexport.export.onnx_qdq import export_onnx
from qexport.formats import get_format
from qexport.frontend.lower import lower
from qexport.frontend.prepare import prepare_qat
from qexport.ir.ops import Op
from qexport.quant import ddq
from qexport.quant.config import QuantConfig
from qexport.reference import quantize_input, run_graph
from qexport.targets import load_target
from qexport.training import calibrate, seed_everything, train
from qexport.verify import verify
from qexport.zoo import build


def config(pow2: bool = True, low: int = 2, high: int = 8, **kw) -> QuantConfig:
    return QuantConfig(
        weight_method="ddq",
        act_method="ddq",
        pow2_scales=pow2,
        options={"ddq_min_bits": low, "ddq_max_bits": high},
        **kw,
    )


def nearest_level(ratio: np.ndarray, qmin: int, qmax: int) -> np.ndarray:
    """The integer level in qmin..qmax nearest to each ratio (ties to the even one), by enumeration."""
    levels = np.arange(qmin, qmax + 1)
    distance = np.abs(ratio[..., None].astype(np.float64) - levels)
    nearest = distance == distance.min(axis=-1, keepdims=True)
    even = nearest & (levels % 2 == 0)
    pick = np.where(even.any(axis=-1, keepdims=True), even, nearest)
    return levels[pick.argmax(axis=-1)]


def reference_weights(w: np.ndarray, s_max: np.ndarray, alpha: np.ndarray, bits: int, max_bits: int) -> np.ndarray:
    """float32 values of the b-bit symmetric quantizer on the max grid: clip to +-alpha, nearest level, times s_b."""
    shape = (-1,) + (1,) * (w.ndim - 1)
    step = (s_max * np.float32(2.0 ** (max_bits - bits))).reshape(shape)
    clipped = np.clip(w, -alpha.reshape(shape), alpha.reshape(shape))
    q = nearest_level(clipped / step, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    return (q.astype(np.float32) * step).astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(
    pow2=st.booleans(),
    low=st.integers(2, 4),
    span=st.integers(0, 5),
    offset=st.integers(0, 5),
    seed=st.integers(0, 2**16),
    channels=st.integers(1, 4),
    training=st.booleans(),
)
def test_weight_forward_is_the_uniform_quantizer_at_the_chosen_bits(
    pow2: bool, low: int, span: int, offset: int, seed: int, channels: int, training: bool
) -> None:
    high = low + span
    bits = low + offset % (span + 1)
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(channels, 3, 2, 2, generator=generator) * torch.rand(channels, 1, 1, 1, generator=generator) * 3
    quantizer = ddq.make_weight_quantizer(bits, channels, config(pow2, low, high))
    quantizer(w)  # initialise at the initial bits
    with torch.no_grad():  # a clipping range that bites in some channels
        quantizer.range_param.mul_(torch.rand(channels, generator=generator) + 0.3)
    chosen = low + (seed % (span + 1))
    quantizer.set_bits(chosen)
    assert quantizer.bits == chosen
    quantizer.train(training)
    out = quantizer(w).detach().numpy()
    s_max = quantizer.max_step().detach().numpy()
    expected = reference_weights(w.numpy(), s_max, quantizer.alpha().detach().numpy(), chosen, high)
    np.testing.assert_array_equal(out, expected)
    # the b-bit levels are a subset of the max-precision grid: step ratio 2**(high - b)
    assert np.array_equal(quantizer.step().detach().numpy(), s_max * np.float32(2.0 ** (high - chosen)))
    if pow2:
        assert np.all(np.log2(s_max) == np.round(np.log2(s_max)))


@settings(max_examples=60, deadline=None)
@given(pow2=st.booleans(), bits=st.integers(2, 8), chosen=st.integers(2, 8), seed=st.integers(0, 2**16))
def test_activation_forward_is_the_unsigned_uniform_quantizer(pow2: bool, bits: int, chosen: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(4, 3, 5, generator=generator)) * (torch.rand(1, generator=generator) * 10)
    quantizer = ddq.make_act_quantizer(bits, False, config(pow2))
    quantizer.train()
    quantizer(x)
    quantizer.set_bits(chosen)
    quantizer.eval()
    step = quantizer.step().detach()
    assert step.shape == (1,) and step.dtype == torch.float32
    assert (quantizer.bits, quantizer.qmin, quantizer.qmax, quantizer.signed) == (chosen, 0, (1 << chosen) - 1, False)
    ratio = (x.numpy() / step.numpy()).astype(np.float32)
    expected = (nearest_level(ratio, 0, (1 << chosen) - 1).astype(np.float32) * step.numpy()).astype(np.float32)
    np.testing.assert_array_equal(quantizer(x).detach().numpy(), expected)


def test_gate_step_and_range_gradients() -> None:
    torch.manual_seed(0)
    quantizer = ddq.make_weight_quantizer(4, 2, config(True, 2, 6))
    w = (torch.randn(2, 40) * 0.5).requires_grad_()
    quantizer(w.detach())
    with torch.no_grad():
        quantizer.range_param[0] = quantizer.step()[0] * quantizer.qmax * 0.5  # channel 0 clips at alpha
    quantizer.set_bits(3)
    quantizer.train()
    target = torch.randn(2, 40)
    out = quantizer(w)
    (out * target).sum().backward()
    # brute-force gate gradient: d/dtheta_j of sum_k g_k <target, Q_k - Q_{k-1}>, g_k = prod_{i<=k} h_i
    s_max, alpha = quantizer.max_step().detach().numpy(), quantizer.alpha().detach().numpy()
    levels = [reference_weights(w.detach().numpy(), s_max, alpha, b, 6) for b in range(2, 7)]
    gains = [float((target.numpy() * (hi - lo)).sum()) for lo, hi in zip(levels[:-1], levels[1:], strict=True)]
    theta = quantizer.logits().detach().numpy().astype(np.float64)
    h, sig = (theta > 0).astype(float), 1 / (1 + np.exp(-theta))
    expected = [
        sig[j] * (1 - sig[j]) * sum(gains[k] * np.prod(np.delete(h[: k + 1], j)) for k in range(j, len(h)))
        for j in range(len(h))
    ]
    np.testing.assert_allclose(quantizer.gate_param.grad.numpy(), np.array(expected) * quantizer.gate_scale, rtol=1e-5)
    assert np.count_nonzero(quantizer.gate_param.grad.numpy()) >= 2
    assert torch.all(quantizer.step_param.grad != 0)
    assert quantizer.range_param.grad[0] != 0  # channel 0 clips: alpha learns
    clipped = w.detach().abs() > quantizer.alpha().reshape(-1, 1)
    assert clipped[0].any() and torch.all(w.grad[clipped] == 0)
    inside = w.detach().abs() < 0.5 * quantizer.step().reshape(-1, 1) * quantizer.qmax
    assert torch.equal(w.grad[inside & ~clipped], target[inside & ~clipped])  # straight through
    act = ddq.make_act_quantizer(4, False, config(True))
    x = torch.rand(8, 16) * 3
    act(x)
    act.train()
    (act(x) * torch.randn(8, 16)).sum().backward()
    assert act.step_param.grad.abs().sum() > 0 and act.gate_param.grad.abs().sum() > 0


def test_eval_forward_needs_no_gates() -> None:
    quantizer = ddq.make_act_quantizer(4, False, config())
    x = torch.rand(3, 7) * 2
    quantizer(x)
    quantizer.eval()
    out = quantizer(x)
    assert out.grad_fn is not None  # step still learns
    quantizer.train()
    assert torch.equal(quantizer(x), out)  # train and eval forwards agree: the bits are always hard


def test_all_zero_channel_and_constant_input() -> None:
    quantizer = ddq.make_weight_quantizer(3, 2, config())
    w = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.5, -0.25, 0.1, 0.7]])
    out = quantizer(w)
    assert torch.equal(out[0], torch.zeros(4)) and torch.isfinite(quantizer.step()).all()
    ir = quantizer.to_ir_weight("w", w)
    get_format("int_affine").check(ir)
    assert np.all(ir.arrays["values"][0] == 0)
    act = ddq.make_act_quantizer(2, False, config())
    x = torch.full((4, 5), 1.5)
    out = act(x)
    assert torch.isfinite(act.step()).all() and torch.unique(out).numel() == 1
    assert torch.equal(out, torch.clamp(torch.round(x / act.step()), 0, 3) * act.step())


def test_min_max_and_fixed_bits() -> None:
    quantizer = ddq.make_weight_quantizer(2, 1, config(True, 2, 8))
    w = torch.linspace(-1, 1, 21).reshape(1, -1)
    quantizer(w)
    assert quantizer.bits == 2 and set(quantizer.integers(w).unique().tolist()) <= {-2, -1, 0, 1}
    quantizer.set_bits(8)
    assert quantizer.bits == 8 and quantizer.qmax == 127 and torch.equal(quantizer.step(), quantizer.max_step())
    fixed = ddq.make_weight_quantizer(5, 1, config(True, 5, 5))  # min == max: no gates, a plain 5-bit quantizer
    assert fixed.gate_param.numel() == 0 and fixed.bits == 5 and fixed.bit_probs().tolist() == [1.0]
    probs = quantizer.bit_probs()
    assert probs.shape == (7,) and torch.all(probs >= 0) and abs(float(probs.sum()) - 1) < 1e-6
    for bad in ((1, 2, 8), (9, 2, 8), (4, 5, 8), (4, 2, 17)):
        with pytest.raises(QExportError, match="ddq"):
            ddq.make_weight_quantizer(bad[0], 1, config(True, bad[1], bad[2]))
    with pytest.raises(QExportError, match="outside"):
        quantizer.set_bits(9)


@pytest.mark.parametrize("pow2", [True, False])
@pytest.mark.parametrize("bits", [2, 3, 5, 8])
def test_to_ir_weight_round_trip(pow2: bool, bits: int) -> None:
    generator = torch.Generator().manual_seed(bits)
    w = torch.randn(6, 4, 3, 3, generator=generator) * torch.rand(6, 1, 1, 1, generator=generator)
    quantizer = ddq.make_weight_quantizer(4, 6, config(pow2))
    quantizer(w)
    quantizer.set_bits(bits)
    quantizer.eval()
    ir = quantizer.to_ir_weight("layer.weight", w)
    fmt = get_format(ir.format)
    fmt.check(ir)
    assert ir.format == "int_affine" and ir.attrs["dtype"] == f"INT{bits}"
    forward = quantizer(w).detach().numpy()
    real = fmt.real_values(ir)
    if pow2:  # every value is exact in float32
        np.testing.assert_array_equal(real, forward.astype(np.float64))
    else:  # integers * a float32 step: the float32 forward is the rounded exact product
        np.testing.assert_array_equal(real.astype(np.float32), forward)
    np.testing.assert_array_equal(fmt.grid_scale(ir), quantizer.step().detach().numpy().astype(np.float64))


def _digits_model(data, seed: int = 0):
    seed_everything(seed)
    x, _, _, _ = data
    model = prepare_qat(build("digits_cnn"), config(True, weight_bits=4, act_bits=4))
    calibrate(model, x[:64])
    return model


@pytest.fixture(scope="module")
def digits():
    return digits_split()


def test_size_cost_and_penalty(digits) -> None:
    model = _digits_model(digits)
    expected = sum(
        m.weight.numel() * (4 if name in ("conv2", "conv3") else 8) / 8
        for name, m in model.named_modules()
        if name in ("conv1", "conv2", "conv3", "fc")
    )
    assert float(ddq.ddq_cost(model, "size", hard=True)) == expected
    soft = ddq.ddq_cost(model, "size")
    assert float(ddq.ddq_penalty(model, float(soft) * 2)) == 0.0
    penalty = ddq.ddq_penalty(model, float(soft) / 2)
    assert abs(float(penalty) - 1.0) < 1e-6
    penalty.backward()
    gates = model.get_submodule("conv3.weight_quant").gate_param.grad
    assert torch.all(gates > 0)  # descent closes gates: fewer bits
    with pytest.raises(QExportError, match="no 'arm' cost table"):
        ddq.ddq_penalty(model, 1.0, kind="latency", target="arm")


def test_tight_size_budget_lowers_the_chosen_bits() -> None:
    """A toy MLP (student of a random teacher): its DDQ middle layer drops below the initial 4 bits under a
    tight size budget within 8 steps, and does not under a generous one (there the task loss adds bits)."""
    seed_everything(0)
    teacher = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(512, 16)
    with torch.no_grad():
        y = teacher(x).argmax(1).numpy()
    x = x.numpy()
    student = train(
        nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)), x, y, 10, 1e-2, 0
    )
    chosen = {}
    for factor in (0.6, 10.0):
        seed_everything(0)
        model = prepare_qat(student, config(True, weight_bits=4, act_bits=4))
        calibrate(model, x[:256])
        start = float(ddq.ddq_cost(model, "size", hard=True))
        budget = factor * float(ddq.ddq_cost(model, "size").detach())
        ddq.train_ddq(model, x[:256], y[:256], epochs=2, lr=1e-2, seed=0, budget=budget)
        bits = ddq.bit_widths(model)
        assert bits["0.weight_quant"] == bits["4.weight_quant"] == 8  # first/last layers stay LSQ
        chosen[factor] = bits["2.weight_quant"]
        assert (float(ddq.ddq_cost(model, "size", hard=True)) < start) == (factor < 1)
    assert chosen[0.6] < 4 <= chosen[10.0]


@pytest.mark.parametrize("target", ["fpga", "arm", "asic"])
def test_cost_table_is_hwsim_estimate_of_the_lowered_layers(digits, target: str) -> None:
    model = _digits_model(digits)
    model.get_submodule("conv2.weight_quant").set_bits(3)
    model.get_submodule("relu1_quant").set_bits(6)
    tables = ddq.ddq_cost_table(model, (1, 8, 8), target)
    graph = lower(model, (1, 8, 8), "digits")
    costs = estimate(graph, hardware_of(load_target(target))).costs
    lowered = {n.name: c.cycles for n, c in zip(graph.nodes, costs, strict=True) if n.op in (Op.CONV2D, Op.LINEAR)}
    assert set(lowered) == set(tables)
    for name, table in tables.items():
        layer = model.get_submodule(name)
        i = ddq._candidates(layer.input_quant).index(layer.input_quant.bits)
        j = ddq._candidates(layer.weight_quant).index(layer.weight_quant.bits)
        assert table[i, j, 0] == lowered[name]
    energy = tables["conv3"][..., 1]  # operands of more bits cost more energy (multiplier energy ~ bits^2)
    assert torch.all(energy[1:] > energy[:-1]) and torch.all(energy[:, 1:] > energy[:, :-1])
    hard = float(ddq.ddq_cost(model, "latency", target, hard=True))
    assert hard == sum(lowered.values())


def test_mixed_precision_resnet20_end_to_end() -> None:
    cfg = config(True, weight_bits=4, act_bits=4)
    kwargs, shape = ZOO_CASES["resnet20"]
    model, _ = calibrated(build("resnet20", **kwargs), cfg, shape, seed=3, batch=4)
    quantizers = [(n, m) for n, m in model.named_modules() if isinstance(m, ddq.DdqBits)]
    assert len(quantizers) > 20
    for index, (_, quantizer) in enumerate(quantizers):
        quantizer.set_bits(2 + index % 7)
    graph = lower(model, shape, "resnet20_ddq")
    for name, quantizer in quantizers:  # the IR carries every layer's chosen bits
        if isinstance(quantizer, ddq.DdqWeightQuantizer):
            assert graph.weights[f"{name.rsplit('.', 1)[0]}.weight"].attrs["dtype"] == f"INT{quantizer.bits}"
        else:
            assert graph.tensors[name].dtype.name == f"UINT{quantizer.bits}"
    weight_bits = {graph.weights[n.attrs["weight"]].attrs["dtype"] for n in graph.nodes if "weight" in n.attrs}
    assert len(weight_bits) >= 6
    inputs = synthetic_images(shape, 6, seed=4)
    feeds = {graph.inputs[0]: quantize_input(graph.tensors[graph.inputs[0]], inputs)}
    outputs, _ = Engine(graph).run(feeds)
    np.testing.assert_array_equal(outputs[graph.outputs[0]], run_graph(graph, feeds)[graph.outputs[0]])
    result = verify(graph, model, export_onnx(graph), inputs)  # torch fake-quant and onnxruntime too
    assert result.ok and result.exact_expected and all(path.max_error_lsb == 0 for path in result.paths)
    # checkpoints rebuild with prepare_qat(build(arch), config) + load_state_dict: the chosen bits come back
    rebuilt = prepare_qat(build("resnet20", **kwargs), cfg)
    rebuilt.load_state_dict(model.state_dict())
    assert ddq.bit_widths(rebuilt) == ddq.bit_widths(model)
