"""PQDE (seed 000): MDE steps against brute force, ASR properties, bit changes, edge cases, IR round trip, and a
progressive digits run lowered and simulated bit-exactly."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hwsim.engine import Engine
from qexport.checkpoint import checkpoint_from_model, load_checkpoint, save_checkpoint
from qexport.data import DIGITS_SHAPE, digits_split
from qexport.errors import QExportError
from qexport.export.onnx_qdq import export_onnx
from qexport.formats import get_format
from qexport.frontend.lower import lower
from qexport.ir.dtypes import IntType
from qexport.quant import pqde
from qexport.quant.config import QuantConfig
from qexport.quant.pqde import MdeActQuantizer, MdeWeightQuantizer, asr
from qexport.reference import quantize_input, run_graph
from qexport.training import accuracy, seed_everything, train
from qexport.verify import verify
from qexport.zoo import build

# ---------------------------------------------------------------- slow, obvious references (numpy)


def ref_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def ref_snap(value: float, bits: int) -> np.float32:
    """``value`` rounded (half to even) to 24 - bits significant bits."""
    mantissa, exponent = np.frexp(np.float64(value))
    digits = 24 - bits
    return np.float32(np.ldexp(np.round(np.ldexp(mantissa, digits)), exponent - digits))


def ref_error(x: np.ndarray, step: float, qmin: int, qmax: int) -> float:
    """sum (clamp(round(x / s)) * s - x)**2: float32 division and rounding (as the forward), float64 error."""
    step32 = np.float32(step)
    q = np.clip(np.round(x.astype(np.float32) / step32), qmin, qmax)
    return float(((q.astype(np.float64) * np.float64(step32) - x.astype(np.float64)) ** 2).sum())


def ref_grid(x: np.ndarray, qmin: int, qmax: int, bits: int) -> list[np.float32]:
    """The candidate steps of docs/methods/pqde.md: snap(base * 2**(e/16)), e = 4 .. -80."""
    base = max(x.clip(0).max() / qmax, (-x).clip(0).max() / -qmin if qmin < 0 else 0.0)
    return [ref_snap(np.float64(np.float32(base)) * 2.0 ** (e / 16), bits) for e in range(4, -81, -1)]


def ref_best_power_of_two(x: np.ndarray, qmin: int, qmax: int) -> tuple[float, float]:
    """(step, error) of the best power of two in 2**-80 .. 2**20 (ties: the larger step)."""
    best = None
    for exponent in range(20, -81, -1):
        error = ref_error(x, 2.0**exponent, qmin, qmax)
        if best is None or error < best[1]:
            best = (2.0**exponent, error)
    return best


def ref_lloyd_step(x: np.ndarray, step: float, qmin: int, qmax: int, bits: int) -> np.float32 | None:
    q = np.clip(np.round(x.astype(np.float32) / np.float32(step)), qmin, qmax).astype(np.float64)
    den = (q * q).sum()
    return ref_snap((q * x.astype(np.float64)).sum() / den, bits) if den > 0 else None


def random_rows(seed: int, rows: int, size: int, signed: bool) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scale = torch.exp(torch.randn(rows, 1, generator=generator))
    heavy = torch.randn(rows, size, generator=generator) / torch.rand(rows, size, generator=generator).clamp_min(0.05)
    x = torch.where(torch.rand(rows, 1, generator=generator) < 0.5, heavy, torch.randn(rows, size, generator=generator))
    x = x * scale
    return x if signed else x.relu()


def check_step(x: np.ndarray, step: float, bits: int, signed: bool, pow2: bool) -> None:
    """``step`` minimises the discretization error of ``x`` as documented (brute force)."""
    qmin, qmax = ref_range(bits, signed)
    mine = ref_error(x, step, qmin, qmax)
    if pow2:
        best_step, best_error = ref_best_power_of_two(x, qmin, qmax)
        assert mine == best_error and step == best_step
        return
    assert mine <= min(ref_error(x, s, qmin, qmax) for s in ref_grid(x, qmin, qmax, bits))
    lloyd = ref_lloyd_step(x, step, qmin, qmax, bits)
    assert lloyd is None or ref_error(x, lloyd, qmin, qmax) >= mine  # a Lloyd fixed point: no further gain
    assert step == ref_snap(step, bits)  # 24 - bits significant bits: q * step is exact in float32


# ---------------------------------------------------------------- MDE steps


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(2, 8),
    pow2=st.booleans(),
    seed=st.integers(0, 2**16),
    channels=st.integers(1, 4),
    size=st.integers(1, 40),
)
def test_weight_step_minimises_the_discretization_error(bits: int, pow2: bool, seed: int, channels: int, size: int):
    w = random_rows(seed, channels, size, signed=True).reshape(channels, size, 1, 1)
    quantizer = MdeWeightQuantizer(bits, channels, pow2=pow2).eval()
    out = quantizer(w).double().numpy()
    steps = quantizer.step().numpy()
    qmin, qmax = ref_range(bits, True)
    for c in range(channels):
        row = w[c].reshape(-1).numpy()
        check_step(row, float(steps[c]), bits, True, pow2)
        expected = np.clip(np.round(row / steps[c]), qmin, qmax) * np.float64(steps[c])
        np.testing.assert_array_equal(out[c].reshape(-1), expected)


@settings(max_examples=30, deadline=None)
@given(bits=st.integers(2, 8), pow2=st.booleans(), seed=st.integers(0, 2**16))
def test_activation_step_is_the_mde_step_of_the_batch(bits: int, pow2: bool, seed: int) -> None:
    x = random_rows(seed, 1, 600, signed=False).reshape(6, 10, 10)
    quantizer = MdeActQuantizer(bits, False, pow2=pow2).train()
    quantizer(x)  # the first batch sets the running step
    check_step(x.reshape(-1).numpy(), float(quantizer.step()), bits, False, pow2)


def test_large_activations_use_a_fixed_seeded_sample() -> None:
    x = random_rows(5, 1, 9000, signed=False).reshape(9, 1000)
    quantizer = MdeActQuantizer(4, False, samples=512).train()
    sample = quantizer.sample(x)
    assert sample.shape == (1, 512) and torch.equal(sample, quantizer.sample(x))
    assert torch.isin(sample, x).all()
    quantizer(x)
    check_step(sample.reshape(-1).numpy(), float(quantizer.step()), 4, False, False)


def test_activation_running_step_and_deterministic_eval() -> None:
    batches = [random_rows(seed, 1, 300, signed=False).reshape(3, 100) * (1 + seed) for seed in range(4)]
    quantizer = MdeActQuantizer(4, False, momentum=0.25).train()
    expected = None
    for batch in batches:
        quantizer(batch)
        solved = torch.log2(pqde.mde_step(batch.reshape(1, -1), 0, 15, 4, False))
        expected = solved if expected is None else expected + 0.25 * (solved - expected)
        assert torch.equal(quantizer.log2_step, expected)
    quantizer.eval()
    step = quantizer.step()
    probe = torch.linspace(-1.0, 40.0, 997)
    out = quantizer(probe)
    assert torch.equal(out, torch.clamp(torch.round(probe / step), 0, 15) * step)
    quantizer(batches[0] * 100)  # eval never moves the step
    assert torch.equal(quantizer.step(), step) and torch.equal(quantizer(probe), out)


# ---------------------------------------------------------------- ASR


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), t=st.floats(0.05, 500.0))
def test_asr_is_exact_at_integers_and_half_integers_and_monotone(seed: int, t: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    k = torch.randint(-300, 300, (50,), generator=generator).double()
    assert torch.equal(asr(k, t), k) and torch.equal(asr(k + 0.5, t), k + 0.5)
    v = torch.sort(torch.rand(400, generator=generator, dtype=torch.float64) * 12 - 6).values
    soft = asr(v, t)
    assert torch.all(soft[1:] >= soft[:-1])
    assert torch.all(torch.floor(v) <= soft) and torch.all(soft <= torch.floor(v) + 1)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), t=st.floats(0.05, 500.0))
def test_asr_gradient_is_the_analytic_one(seed: int, t: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    v = (torch.rand(200, generator=generator, dtype=torch.float64) * 10 - 5).requires_grad_()
    asr(v, t).sum().backward()
    u = v.detach() - torch.floor(v.detach()) - 0.5
    analytic = t / (1 + t * t * u * u) / (2 * math.atan(t / 2))
    torch.testing.assert_close(v.grad, analytic)
    assert torch.all(torch.isfinite(v.grad)) and torch.all(v.grad > 0)


def test_asr_tends_to_round_as_t_grows_and_to_identity_as_t_vanishes() -> None:
    v = torch.rand(2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 20 - 10
    distance = (v - torch.floor(v) - 0.5).abs()  # d: distance of frac(v) from 1/2
    errors = []
    for t in (4.0, 16.0, 64.0, 256.0, 4096.0):
        error = (asr(v, t) - torch.round(v)).abs()
        assert torch.all(error <= 1 / (t * distance))  # 0.5 - atan(t d) / (2 atan(t/2)) <= 1 / (t d) for t >= 4
        errors.append(error)
    assert all(torch.all(later <= earlier) for earlier, later in zip(errors, errors[1:], strict=False))
    assert torch.all((asr(v, 1e-3) - v).abs() <= 1e-6)  # |asr - v| <= t**2 / 24 for small t


# ---------------------------------------------------------------- quantizer behaviour


def test_training_forward_uses_asr_with_its_gradient_and_eval_is_hard() -> None:
    w = random_rows(3, 3, 30, signed=True).reshape(3, 30).requires_grad_()
    quantizer = MdeWeightQuantizer(3, 3)
    quantizer.temperature.fill_(5.0)
    out = quantizer(w)
    out.sum().backward()
    step = quantizer.step().reshape(3, 1)
    v = (w.detach() / step).double()
    u = v - torch.floor(v) - 0.5
    soft = torch.floor(v) + 0.5 + torch.atan(5.0 * u) / (2 * math.atan(2.5))
    inside = (soft >= -4) & (soft <= 3)
    expected_grad = torch.where(inside, 5.0 / (1 + 25.0 * u * u) / (2 * math.atan(2.5)), torch.zeros_like(v))
    torch.testing.assert_close(w.grad, expected_grad.float())
    hard = torch.clamp(torch.round(w.detach() / step), -4, 3) * step
    assert not torch.equal(out, hard)
    gaps = []
    for t in (5.0, 50.0, 500.0):
        quantizer.temperature.fill_(t)
        gaps.append(float((quantizer(w).detach() - hard).abs().max()))
    assert gaps[0] > gaps[1] > gaps[2]
    assert torch.equal(quantizer.eval()(w), hard)


def test_set_bits_changes_levels_not_shapes() -> None:
    w = random_rows(7, 4, 36, signed=True).reshape(4, 4, 3, 3)
    quantizer = MdeWeightQuantizer(4, 4).eval()
    four = quantizer(w)
    quantizer.set_bits(2)
    two = quantizer(w)
    integers = quantizer.integers(w)
    assert quantizer.qmin == -2 and quantizer.qmax == 1 and integers.min() >= -2 and integers.max() <= 1
    assert (integers != 0).any() and not torch.equal(two, four)
    for c in range(4):
        check_step(w[c].reshape(-1).numpy(), float(quantizer.step()[c]), 2, True, False)
    quantizer.set_bits(4)
    assert torch.equal(quantizer(w), four)
    wide = MdeWeightQuantizer(8, 4)
    assert {k: v.shape for k, v in wide.state_dict().items()} == {k: v.shape for k, v in quantizer.state_dict().items()}
    act = MdeActQuantizer(8, False).train()
    x = random_rows(8, 1, 500, signed=False)
    act(x)
    eight = act.step().clone()
    act.set_bits(3)
    assert not bool(act.initialized)
    act(x)
    assert torch.equal(act.step(), pqde.mde_step(x, 0, 7, 3, False)) and not torch.equal(act.step(), eight)
    assert act.state_dict()["log2_step"].shape == MdeActQuantizer(2, False).state_dict()["log2_step"].shape
    with pytest.raises(QExportError, match="bits 1"):
        act.set_bits(1)


def test_all_zero_channel_and_all_zero_activations() -> None:
    w = torch.zeros(3, 5)
    w[1] = torch.tensor([0.5, -0.25, 0.1, 0.0, 0.3])
    quantizer = MdeWeightQuantizer(2, 3).eval()
    out = quantizer(w)
    assert torch.equal(out[0], torch.zeros(5)) and torch.equal(out[2], torch.zeros(5))
    assert quantizer.step()[0] == 1.0 and quantizer.step()[2] == 1.0
    check_step(w[1].numpy(), float(quantizer.step()[1]), 2, True, False)
    ir = quantizer.to_ir_weight("w", w)
    assert not ir.arrays["values"][[0, 2]].any()
    act = MdeActQuantizer(4, False).train()
    x = -torch.rand(4, 8)  # nothing survives an unsigned quantizer
    assert torch.equal(act(x), torch.zeros(4, 8)) and not bool(act.initialized) and act.step().item() == 1.0
    act(torch.zeros(4, 8))
    assert not bool(act.initialized)


@settings(max_examples=30, deadline=None)
@given(bits=st.integers(2, 8), pow2=st.booleans(), per_channel=st.booleans(), seed=st.integers(0, 2**16))
def test_to_ir_weight_round_trips_through_int_affine(bits: int, pow2: bool, per_channel: bool, seed: int) -> None:
    config = QuantConfig(weight_bits=bits, weight_method="mde", pow2_scales=pow2, per_channel_weights=per_channel)
    w = random_rows(seed, 6, 18, signed=True).reshape(6, 2, 3, 3)
    quantizer = pqde.make_weight_quantizer(bits, 6, config).eval()
    out = quantizer(w)
    ir = quantizer.to_ir_weight("layer.weight", w)
    fmt = get_format(ir.format)
    fmt.check(ir)
    assert ir.format == "int_affine" and ir.attrs["dtype"] == IntType(True, bits).name
    np.testing.assert_array_equal(fmt.real_values(ir), out.double().numpy())
    steps = np.broadcast_to(quantizer.step().double().numpy(), (6,))
    np.testing.assert_array_equal(fmt.grid_scale(ir), steps)
    if pow2:
        assert np.all(np.log2(steps) == np.round(np.log2(steps)))


# ---------------------------------------------------------------- progressive schedule


def test_stage_plan_and_temperature_schedule() -> None:
    w4a4, w4a8 = QuantConfig(weight_bits=4, act_bits=4), QuantConfig(weight_bits=4, act_bits=8)
    assert pqde.stage_bits(w4a4, (8, 6, 4)) == [(8, 8), (6, 6), (4, 4)]
    assert pqde.stage_bits(w4a8, (8, 6, 4)) == [(8, 8), (6, 8), (4, 8)]
    assert pqde.stage_bits(w4a4, (8, 6)) == [(8, 8), (6, 6), (4, 4)]  # the target stage is always last
    for bad in ((), (8, 1), (9,)):
        with pytest.raises(QExportError, match="stages"):
            pqde.stage_bits(w4a4, bad)
    temps = [pqde.asr_temperature(e, 5, 1.0, 32.0) for e in range(5)]
    assert (
        all(b > a for a, b in zip(temps, temps[1:], strict=False))
        and temps[0] > 1.0
        and temps[-1] == pytest.approx(32.0)
    )
    assert pqde.asr_temperature(0, 1, 2.0, 20.0) == pytest.approx(20.0)
    with pytest.raises(QExportError, match="needs weight_method or act_method 'mde'"):
        pqde.train_progressive(
            build("digits_cnn"), w4a4, np.zeros((1, 1, 8, 8), np.float32), np.zeros(1), (8,), 1, 1e-3, 0
        )


def test_progressive_digits_lowers_and_simulates_bit_exactly(tmp_path: Path) -> None:
    x_train, y_train, x_test, y_test = digits_split()
    seed_everything(0)
    float_model = train(build("digits_cnn"), x_train[:512], y_train[:512], epochs=3, lr=1e-2, seed=0)
    config = QuantConfig(weight_bits=4, act_bits=4, pow2_scales=True, weight_method="mde", act_method="mde")
    messages: list[str] = []
    seed_everything(1)
    model = pqde.train_progressive(
        float_model, config, x_train[:256], y_train[:256], (8, 6, 4), 1, 2e-3, 1, log=messages.append
    )
    assert [m for m in messages if m.startswith("pqde stage")] == [
        f"pqde stage {i}/3: weights {b} bits, activations {b} bits" for i, b in ((1, 8), (2, 6), (3, 4))
    ]
    quantizers = pqde.mde_quantizers(model)
    assert len(quantizers) == 5 and all(q.bits == 4 and float(q.temperature) == 32.0 for q in quantizers)
    assert accuracy(model, x_test, y_test) > 0.5
    graph = lower(model, DIGITS_SHAPE, name="digits_pqde")
    dtypes = [graph.weights[n.attrs["weight"]].attrs["dtype"] for n in graph.nodes if "weight" in n.attrs]
    assert dtypes == ["INT8", "INT4", "INT4", "INT8"]
    inputs = x_test[:64]
    feeds = {graph.inputs[0]: quantize_input(graph.tensors[graph.inputs[0]], inputs)}
    outputs, _ = Engine(graph).run(feeds)
    np.testing.assert_array_equal(outputs[graph.outputs[0]], run_graph(graph, feeds)[graph.outputs[0]])
    result = verify(graph, model, export_onnx(graph), inputs)
    assert result.ok and result.exact_expected and all(path.max_error_lsb == 0 for path in result.paths)
    path = tmp_path / "pqde.ckpt"  # checkpoints rebuild the model at the final bits and load its state
    save_checkpoint(path, checkpoint_from_model(model, "digits_cnn", {}, config))
    loaded = load_checkpoint(path).model
    with torch.no_grad():
        assert torch.equal(loaded(torch.from_numpy(inputs)), model(torch.from_numpy(inputs)))
