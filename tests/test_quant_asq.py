"""Seed 002 ASQ: adaptive activation steps, the per-sample requantize, its hwsim kernel, export and Table 1."""

from __future__ import annotations

import copy
from fractions import Fraction

import irgen
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from modelgen import zoo_graph
from torch import nn

from hwsim.cost.model import estimate
from hwsim.cost.targets import hardware_of
from hwsim.engine import Engine
from hwsim.report import adapter_totals, summary_lines
from qexport.data import DIGITS_SHAPE, digits_split
from qexport.errors import GraphError, LoweringError, QExportError
from qexport.export.onnx_qdq import export_onnx
from qexport.frontend.lower import lower
from qexport.frontend.prepare import prepare_qat
from qexport.ir.checker import check_graph
from qexport.ir.dtypes import INT32, IntType
from qexport.ir.ops import Op
from qexport.ir.serialize import read_spec, write_spec
from qexport.quant import modules
from qexport.quant.asq import AsqActQuant, asq_overhead, overhead_counts, overhead_percent
from qexport.quant.config import QuantConfig
from qexport.quant.lsq import ActQuant
from qexport.reference import quantize_input, run_graph
from qexport.targets import load_target
from qexport.verify import verify
from qexport.zoo import build

# --- slow, obvious references --------------------------------------------------------------------------------


def ref_pow2(peak: Fraction, levels: int, floor: int | None = None) -> int:
    """Smallest e with levels * 2**e >= peak (0 for peak 0), at least ``floor``."""
    e = 0
    if peak > 0:
        while levels * Fraction(2) ** e < peak:
            e += 1
        while levels * Fraction(2) ** (e - 1) >= peak:
            e -= 1
    return e if floor is None else max(e, floor)


def clip(v: int, low: int, high: int) -> int:
    return min(max(v, low), high)


def ref_int8(w: torch.Tensor) -> tuple[list[list[int]], Fraction]:
    rows = [[Fraction(float(v)) for v in row] for row in w.detach().double()]
    step = Fraction(2) ** ref_pow2(max(abs(v) for row in rows for v in row), 127, -14)
    return [[clip(round(v / step), -128, 127) for v in row] for row in rows], step


def ref_forward(q: AsqActQuant, x: torch.Tensor) -> tuple[np.ndarray, list[int]]:
    """The eval forward of ASQ with Fractions: returns (float32 output, B per sample)."""
    s, frac = Fraction(float(q.step().detach())), q.frac_bits
    s_f, s_h = Fraction(2) ** int(q.feature_exponent), Fraction(2) ** int(q.hidden_exponent)
    low, high = (-128, 127) if q.signed else (0, 255)
    w1, st1 = ref_int8(q.fc1.weight)
    w2, st2 = ref_int8(q.fc2.weight)
    b1 = [clip(round(Fraction(float(v)) / (s_f * st1)), -(2**31), 2**31 - 1) for v in q.fc1.bias.detach().double()]
    b2 = clip(round(Fraction(float(q.fc2.bias.detach().double()[0])) / (s_h * st2)), -(2**31), 2**31 - 1)
    xs = x.double().numpy()
    out = np.zeros(xs.shape, dtype=np.float32)
    betas = []
    for n in range(xs.shape[0]):
        sample = xs[n].reshape(xs.shape[1], -1)
        g = []
        for channel in sample:
            features = [clip(round(Fraction(float(v)) / s_f), low, high) for v in channel]
            g.append(round(Fraction(sum(features), len(features))))
        acc1 = [sum(gc * wc for gc, wc in zip(g, row, strict=True)) + bias for row, bias in zip(w1, b1, strict=True)]
        hidden = [clip(round(a * s_f * st1 / s_h), 0, 255) for a in acc1]
        acc2 = sum(h * w for h, w in zip(hidden, w2[0], strict=True)) + b2
        big_b = clip(round((1 + acc2 * s_h * st2) * 2**frac), q.b_min, q.b_max)
        betas.append(big_b)
        step = s * big_b / 2**frac
        for index in np.ndindex(*xs.shape[1:]):
            value = clip(round(Fraction(float(xs[n][index])) / step), q.qmin, q.qmax)
            out[n][index] = np.float32(float(value * step))
    return out, betas


def randomize_adapter(q: AsqActQuant, generator: torch.Generator, spread: float = 0.2, out_spread=None) -> None:
    with torch.no_grad():
        for layer, scale in ((q.fc1, spread), (q.fc2, spread if out_spread is None else out_spread)):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * scale)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * spread)


# --- the quantizer --------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    bits=st.integers(2, 8),
    signed=st.booleans(),
    pow2=st.booleans(),
    spatial=st.sampled_from([None, (1, 1), (2, 3), (3, 3)]),
    channels=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_eval_forward_is_the_hard_formula(bits, signed, pow2, spatial, channels, seed) -> None:
    generator = torch.Generator().manual_seed(seed)
    shape = (3, channels) + (spatial or ())
    x = torch.randn(shape, generator=generator) * 2
    x = x if signed else torch.relu(x)
    q = AsqActQuant(bits, signed, pow2=pow2, hidden=3)
    q.train()
    q(x)  # initialise (s, feature and hidden steps) and materialise the adapter
    randomize_adapter(q, generator, spread=float(torch.rand(1, generator=generator)))
    q.eval()
    out = q(x).detach().numpy()
    expected, betas = ref_forward(q, x)
    np.testing.assert_array_equal(out, expected)
    assert q.beta_integers().tolist() == betas
    np.testing.assert_array_equal(
        q.sample_factor().detach().numpy(), np.array(betas, dtype=np.float32) / 2**q.frac_bits
    )


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_beta_is_one_at_init_and_asq_then_equals_lsq(bits: int) -> None:
    x = torch.relu(torch.randn(6, 5, 4, 4, generator=torch.Generator().manual_seed(bits)))
    asq, lsq = AsqActQuant(bits, False, pow2=True), ActQuant(bits, False, pow2=True)
    asq.train(), lsq.train()
    torch.testing.assert_close(asq(x), lsq(x), rtol=0, atol=0)
    assert asq.beta_integers().tolist() == [1 << asq.frac_bits] * 6
    assert torch.equal(asq.fc2.weight, torch.zeros(1, 4)) and float(asq.fc2.bias.detach()) == 0.0


def test_gradients_reach_the_step_and_the_adapter() -> None:
    torch.manual_seed(3)  # the lazy adapter layer initialises from the global generator: make it order-independent
    generator = torch.Generator().manual_seed(3)
    x = (torch.relu(torch.randn(4, 3, 5, 5, generator=generator)) * 3).requires_grad_()
    q = AsqActQuant(3, False, pow2=False, hidden=2)
    q.train()
    q(x.detach())
    randomize_adapter(q, generator, spread=0.3)
    upstream = torch.randn(x.shape, generator=generator)
    out = q(x)
    (out * upstream).sum().backward()
    beta = torch.from_numpy(q.beta_integers()).double() / 2**q.frac_bits
    assert len(set(beta.tolist())) > 1
    # LSQ's step gradient (Esser et al. eq. 3) times beta[n] and LSQ's gradient scale 1/sqrt(N * qmax)
    v = x.detach().double() / (q.step().detach().double() * beta.reshape(-1, 1, 1, 1))
    rounded = torch.round(v)
    inside = (rounded >= q.qmin) & (rounded <= q.qmax)
    local = torch.where(inside, rounded - v, torch.clamp(rounded, q.qmin, q.qmax))
    expected = (upstream.double() * local * beta.reshape(-1, 1, 1, 1)).sum() / np.sqrt(x.numel() * q.qmax)
    torch.testing.assert_close(float(q.step_param.grad) * float(torch.sign(q.step_param.detach())), float(expected))
    for parameter in (q.fc1.weight, q.fc1.bias, q.fc2.weight, q.fc2.bias):
        assert parameter.grad is not None and torch.count_nonzero(parameter.grad) > 0
    assert torch.isfinite(x.grad).all() and torch.count_nonzero(x.grad) > 0


def test_clamped_beta_stops_adapter_gradients() -> None:
    x = torch.relu(torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(5)))
    q = AsqActQuant(4, False, beta_max=2.0)
    q.train()
    q(x)
    with torch.no_grad():
        q.fc2.bias.fill_(5.0)  # 1 + out = 6 > beta_max for every sample
    q(x).sum().backward()
    assert q.beta_integers().tolist() == [q.b_max] * 3 == [2 << q.frac_bits] * 3
    assert torch.count_nonzero(q.fc2.bias.grad) == 0 and torch.count_nonzero(q.fc1.weight.grad) == 0
    assert q.step_param.grad is not None and float(q.step_param.grad) != 0


@pytest.mark.parametrize("value", [0.0, 0.7])
def test_constant_and_all_zero_inputs(value: float) -> None:
    x = torch.full((2, 3, 4, 4), value)
    q = AsqActQuant(2, False, pow2=True)
    q.train()
    out = q(x)
    assert torch.isfinite(out).all() and q.beta_integers().tolist() == [1 << q.frac_bits] * 2
    step = float(q.step().detach())
    assert torch.equal(out, torch.full_like(x, min(round(value / step), 3) * step))
    q.eval()
    expected, _ = ref_forward(q, x)
    np.testing.assert_array_equal(q(x).detach().numpy(), expected)


def test_bad_beta_range_is_refused() -> None:
    with pytest.raises(ValueError, match="beta_min <= 1 <= beta_max"):
        AsqActQuant(4, False, beta_min=1.5)


def test_state_dict_reloads_into_a_fresh_lazy_model() -> None:
    config = QuantConfig(act_method="asq", weight_bits=4, act_bits=4, options={"asq_hidden": 3})
    x = torch.randn(8, *DIGITS_SHAPE, generator=torch.Generator().manual_seed(0))
    trained = prepare_qat(build("digits_cnn"), config)
    trained.train()
    trained(x)
    for module in trained.modules():
        if isinstance(module, AsqActQuant):
            randomize_adapter(module, torch.Generator().manual_seed(1))
    fresh = prepare_qat(build("digits_cnn"), config)
    assert set(fresh.state_dict()) == set(trained.state_dict())
    fresh.load_state_dict(trained.state_dict())
    trained.eval(), fresh.eval()
    assert torch.equal(fresh(x), trained(x))
    assert [m.fc1.weight.shape for m in fresh.modules() if isinstance(m, AsqActQuant)] == [(3, 16), (3, 32), (3, 32)]
    copy.deepcopy(trained)  # the last batch's beta (with its autograd graph) is not part of the model


# --- Table 1 ------------------------------------------------------------------------------------------------


def test_overhead_counts_and_table1_shape() -> None:
    width, hidden = 4, 5
    config = QuantConfig(act_method="asq", options={"asq_hidden": hidden})
    model = prepare_qat(build("resnet18", width=width, image_size=16, num_classes=10), config)
    model.train()
    model(torch.randn(2, 3, 16, 16))
    adapter, adapter_ops, weights, ops = overhead_counts(model, (3, 16, 16))
    channels = width + 4 * width * (1 + 2 + 4 + 8)  # the stem's ReLU and four per stage
    assert adapter == channels * hidden + 17 * hidden and adapter_ops == 2 * adapter
    assert weights == sum(
        m.weight.numel() for m in model.modules() if isinstance(m, (modules.QConv2d, modules.QLinear))
    )
    counts = (adapter, adapter_ops, weights, ops)
    fp32 = {bits: overhead_percent(counts, bits, 32) for bits in (8, 4, 3, 2)}
    for bits, (params, compute) in fp32.items():  # Table 1's shape: the overhead grows as 1/bits
        assert params * bits == pytest.approx(fp32[8][0] * 8) and compute * bits == pytest.approx(fp32[8][1] * 8)
        assert overhead_percent(counts, bits, 8) == pytest.approx((params / 4, compute / 4))
    assert fp32[8][0] == pytest.approx(100 * adapter * 32 / (weights * 8))
    assert asq_overhead(model, 2, 32, (3, 16, 16)) == fp32[2]


def test_graph_and_model_overheads_agree() -> None:
    model, graph = asq_digits(True)
    assert overhead_counts(graph) == overhead_counts(model, DIGITS_SHAPE)


# --- the extended requantize: reference, hwsim, checker ----------------------------------------------------------


@st.composite
def dynamic_requantize_graphs(draw):
    """A random requantize node with per-sample num and/or den, inside the checker's 62-bit rules."""
    channels = draw(st.integers(1, 3))
    shape = draw(st.sampled_from([(-1, channels), (-1, channels, 2, 3)]))
    mode = draw(st.sampled_from(["mul", "div", "muldiv", None]))
    acc_bits = draw(st.integers(2, 32))
    num_type = draw(irgen.int_types(2, 16)) if mode in ("mul", "muldiv") else None
    den_type = IntType(draw(st.booleans()), draw(st.integers(2, 16))) if mode in ("div", "muldiv") else None
    num_bits = 0 if num_type is None else num_type.bits - num_type.signed
    den_bits = 0 if den_type is None else den_type.bits - den_type.signed
    count = draw(st.sampled_from([1, channels]))
    mult_bits = draw(st.integers(1, max(1, min(31, 62 - (acc_bits - 1) - num_bits))))
    multipliers = [draw(st.integers(0, (1 << mult_bits) - 1)) for _ in range(count)]
    left_room = 62 - (acc_bits - 1) - mult_bits - num_bits
    shifts = [draw(st.integers(-max(0, min(left_room, 62)), 62 - den_bits)) for _ in range(count)]
    out_dtype, out_zp = draw(irgen.quantized_types(1, 16))
    clip_min = draw(st.integers(out_dtype.min, out_dtype.max))
    clip_max = draw(st.integers(clip_min, out_dtype.max))
    inputs = [irgen.tensor("acc", IntType(True, acc_bits), shape)]
    if num_type is not None:
        inputs.append(irgen.tensor("num", num_type, (-1,)))
    if den_type is not None:
        inputs.append(irgen.tensor("den", den_type, (-1,)))
    attrs = {"multiplier": multipliers, "shift": shifts, "clip_min": clip_min, "clip_max": clip_max}
    if mode is not None:
        attrs["dynamic"] = mode
    out = irgen.tensor("y", out_dtype, shape, out_zp)
    return irgen.single_node_graph(Op.REQUANTIZE, inputs, out, attrs)


def _feeds(draw, graph, batch: int) -> dict[str, np.ndarray]:
    feeds = {}
    for name in graph.inputs:
        info = graph.tensors[name]
        low = 1 if name == "den" else info.dtype.min
        small = name == "den" and draw(st.booleans())  # small divisors make exact ties likely
        high = min(info.dtype.max, 6) if small else info.dtype.max
        feeds[name] = irgen.int_arrays(draw, (batch, *info.shape[1:]), low, high, dtype=np.int64)
    return feeds


def plain_requantize(graph, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """clip(round_half_even(acc * M[c] * num[n] / (den[n] * 2**shift[c])) + zp), one element at a time."""
    (node,) = graph.nodes
    acc = feeds["acc"]
    zero = graph.tensors["y"].quant.zero_point
    out = np.zeros(acc.shape, dtype=np.int64)
    multipliers, shifts = node.attrs["multiplier"], node.attrs["shift"]
    for index in np.ndindex(*acc.shape):
        multiplier = multipliers[0 if len(multipliers) == 1 else index[1]]
        shift = shifts[0 if len(shifts) == 1 else index[1]]
        num = int(feeds["num"][index[0]]) if "num" in feeds else 1
        den = int(feeds["den"][index[0]]) if "den" in feeds else 1
        value = Fraction(int(acc[index]) * multiplier * num, den) / Fraction(2) ** shift
        out[index] = clip(round(value) + zero, node.attrs["clip_min"], node.attrs["clip_max"])
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_dynamic_requantize_reference_and_hwsim_match_plain_python(data) -> None:
    graph = check_graph(data.draw(dynamic_requantize_graphs()))
    feeds = _feeds(data.draw, graph, data.draw(st.integers(1, 3)))
    expected = plain_requantize(graph, feeds)
    np.testing.assert_array_equal(run_graph(graph, feeds)["y"], expected)
    outputs, counts = Engine(graph).run(feeds)
    np.testing.assert_array_equal(outputs["y"], expected)
    node = graph.nodes[0]
    assert counts[0].divs == (expected.size if node.attrs.get("dynamic") in ("div", "muldiv") else 0)


def _requant_graph(mode: str | None, inputs: list, shift: int = 0, multiplier: int = 1):
    attrs = {"multiplier": [multiplier], "shift": [shift], "clip_min": -128, "clip_max": 127}
    if mode is not None:
        attrs["dynamic"] = mode
    return irgen.single_node_graph(Op.REQUANTIZE, inputs, irgen.tensor("y", IntType(True, 8), (-1, 2)), attrs)


ACC = irgen.tensor("acc", INT32, (-1, 2))
B16 = irgen.tensor("b", IntType(False, 16), (-1,))


@pytest.mark.parametrize(
    ("mode", "inputs", "shift", "message"),
    [
        ("triple", [ACC, B16], 0, "dynamic='triple' with 2 inputs"),
        ("muldiv", [ACC, B16], 0, "dynamic='muldiv' with 2 inputs"),
        ("div", [ACC], 0, "dynamic='div' with 1 inputs"),
        ("div", [ACC, irgen.tensor("b", IntType(False, 16), (-1, 1))], 0, "must be one value per sample"),
        ("div", [ACC, irgen.tensor("b", IntType(False, 16), (-1,), zero_point=3)], 0, "zero point 0"),
        ("div", [ACC, B16], 47, "dynamic divisor << 47 can exceed 64 bits"),
        ("mul", [ACC, B16], -16, "can exceed 64 bits"),
    ],
)
def test_checker_rejects_malformed_dynamic_requantize(mode, inputs, shift, message) -> None:
    with pytest.raises(GraphError, match=message):
        check_graph(_requant_graph(mode, inputs, shift))


def test_non_positive_divisor_is_a_clear_runtime_error() -> None:
    graph = check_graph(_requant_graph("div", [ACC, irgen.tensor("b", IntType(True, 8), (-1,))]))
    feeds = {"acc": np.ones((2, 2), dtype=np.int64), "b": np.array([3, 0])}
    with pytest.raises(QExportError, match="dynamic divisor 'b' must be positive, got 0"):
        run_graph(graph, feeds)
    with pytest.raises(QExportError, match="dynamic divisor must be positive, got 0"):
        Engine(graph).run(feeds)
    # the legacy two-input form still means "mul"
    legacy = check_graph(_requant_graph(None, [ACC, irgen.tensor("b", IntType(False, 4), (-1,))]))
    assert run_graph(legacy, {"acc": np.array([[3, -5]]), "b": np.array([7])})["y"].tolist() == [[21, -35]]


# --- end to end ---------------------------------------------------------------------------------------------


def asq_digits(pow2: bool, seed: int = 0):
    config = QuantConfig(act_method="asq", pow2_scales=pow2, weight_bits=4, act_bits=4)
    model, _, calibration = zoo_graph("digits_cnn", config, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, AsqActQuant):
            randomize_adapter(module, generator, spread=0.1, out_spread=1.0)
            module.initialized.fill_(False)  # recalibrate the steps for the new adapter weights
    model.train()
    with torch.no_grad():
        model(calibration)
    model.eval()
    return model, lower(model, DIGITS_SHAPE, "digits_asq")


@pytest.fixture(scope="module")
def digits_inputs() -> np.ndarray:
    return digits_split()[2][:96]


@pytest.mark.parametrize("pow2", [True, False])
def test_digits_end_to_end(pow2: bool, digits_inputs: np.ndarray) -> None:
    model, graph = asq_digits(pow2)
    adapters = [n for n in graph.nodes if ".adapter." in n.name]
    assert {n.op for n in adapters} == {Op.REQUANTIZE, Op.GLOBAL_AVGPOOL, Op.FLATTEN, Op.LINEAR, Op.RESHAPE}
    dynamic = {n.name: n.attrs.get("dynamic") for n in graph.nodes if len(n.inputs) > 1 and n.op is Op.REQUANTIZE}
    assert dynamic == {
        "relu1_quant": "div",
        "relu2_quant.adapter.features": "mul",
        "relu2_quant": "muldiv",
        "relu3_quant.adapter.features": "mul",
        "relu3_quant": "muldiv",
        "fc_quant": "mul",
    }
    feeds = {graph.inputs[0]: quantize_input(graph.tensors[graph.inputs[0]], digits_inputs)}
    values = run_graph(graph, feeds, keep_all=True)
    distinct = [np.unique(values[f"relu{i}_quant.adapter.beta"]).size for i in (1, 2, 3)]
    assert min(distinct) > 1 and sum(distinct) > 20, "the adapters must actually vary the step per sample"
    for mode in ("fast", "faithful"):
        outputs, _ = Engine(graph, mode=mode).run(feeds)
        np.testing.assert_array_equal(outputs[graph.outputs[0]], values[graph.outputs[0]])
    result = verify(graph, model, export_onnx(graph), digits_inputs)
    assert result.ok and not result.exact_expected
    paths = {path.path: path for path in result.paths}
    assert paths["hwsim"].max_error_lsb == 0 and paths["hwsim"].bound_lsb == 0
    assert set(result.layerwise) == {"torch fake-quant", "onnxruntime"}
    assert all(worst <= 1 for worst, _ in result.layerwise.values())
    if pow2:  # every step a power of two: in practice the float paths agree exactly too
        assert all(path.max_error_lsb == 0 for path in result.paths)


def test_spec_round_trip_and_hwsim_counters(tmp_path, digits_inputs: np.ndarray) -> None:
    _, graph = asq_digits(True, seed=2)
    write_spec(graph, tmp_path)
    loaded = read_spec(tmp_path / "layer_spec.json")
    feeds = {graph.inputs[0]: quantize_input(graph.tensors[graph.inputs[0]], digits_inputs[:16])}
    np.testing.assert_array_equal(
        run_graph(loaded, feeds)[loaded.outputs[0]], run_graph(graph, feeds)[graph.outputs[0]]
    )
    _, counts = Engine(loaded).run(feeds)
    owners = {c.adapter_of for c in counts if c.adapter_of}
    assert owners == {"relu1_quant", "relu2_quant", "relu3_quant"}
    by_name = {c.name: c for c in counts}
    assert by_name["relu2_quant"].divs == 16 * 32 * 8 * 8 and by_name["relu2_quant"].adapter_of == ""
    assert by_name["relu2_quant.adapter.fc1"].macs == 16 * 32 * 4
    result = estimate(loaded, hardware_of(load_target("fpga")), batch=16, counts=counts)
    totals = adapter_totals(result)
    assert set(totals["quantizers"]) == owners
    assert totals["total"]["macs"] == sum(c.macs for c in counts if c.adapter_of)
    assert 0 < totals["percent_of_network"]["macs"] < 5
    assert any(line.startswith("ASQ adapters (3)") for line in summary_lines(result))


def test_relu6_and_uncalibrated_quantizers_are_refused() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU6(), nn.Flatten(), nn.Linear(144, 3))
    qat = prepare_qat(model, QuantConfig(act_method="asq"))
    with pytest.raises(LoweringError, match="never run"):
        lower(qat, (1, 8, 8))
    qat.train()
    qat(torch.randn(4, 1, 8, 8))
    with pytest.raises(LoweringError, match="ReLU6"):
        lower(qat, (1, 8, 8))
