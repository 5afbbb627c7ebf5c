"""Hypothesis: one Conv between QONNX Quant nodes of random bit width, signedness, narrow range, zero point
and rounding mode (weights: every qonnx mode; activations: ROUND/HALF_EVEN/FLOOR/CEIL) imports to an IR that
equals the qonnx executor bit for bit; modes the IR cannot express are refused naming the node."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("qonnx", reason="the qonnx executor is the oracle")

from qonnx_support import GraphBuilder, output_integers, qonnx_execute, reference_integers  # noqa: E402

from hwsim.engine import Engine  # noqa: E402
from qexport.errors import QExportError  # noqa: E402
from qexport.frontend.onnx_qonnx import import_qonnx  # noqa: E402
from qexport.reference.executor import quantize_input  # noqa: E402

ALL_MODES = ("ROUND", "HALF_EVEN", "CEIL", "FLOOR", "UP", "DOWN", "HALF_UP", "HALF_DOWN")
IR_MODES = ("ROUND", "HALF_EVEN", "FLOOR", "CEIL")
BATCH, CHANNELS, SIZE = 8, 3, 5


@st.composite
def conv_case(draw, activation_modes=IR_MODES):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    out_channels = draw(st.integers(1, 4))
    case = {
        "in_exp": draw(st.integers(2, 6)),
        "w_bits": draw(st.integers(2, 8)),
        "w_narrow": draw(st.integers(0, 1)),
        "w_mode": draw(st.sampled_from(ALL_MODES)),
        "w_exps": rng.integers(1, 6, out_channels),
        "out_bits": draw(st.integers(2, 8)),
        "out_signed": draw(st.integers(0, 1)),
        "out_narrow": draw(st.integers(0, 1)),
        "out_mode": draw(st.sampled_from(activation_modes)),
        "out_exp": draw(st.integers(-2, 6)),
        "relu": draw(st.booleans()),
        "bipolar": draw(st.integers(0, 5)) == 0,
        "kernel": draw(st.sampled_from([1, 3])),
        "weights": rng.normal(0, 1, (out_channels, CHANNELS, 3, 3)).astype(np.float32),
        "bias": rng.normal(0, 1, out_channels).astype(np.float32),
        "x": rng.normal(0, 2, (BATCH, CHANNELS, SIZE, SIZE)).astype(np.float32),
    }
    low = -(1 << (case["out_bits"] - 1)) if case["out_signed"] else 0
    high = (1 << (case["out_bits"] - 1)) - 1 if case["out_signed"] else (1 << case["out_bits"]) - 1
    case["out_zp"] = (
        draw(st.integers(low + case["out_narrow"], high - case["out_narrow"])) if draw(st.booleans()) else 0
    )
    case["weights"] = case["weights"][:, :, : case["kernel"], : case["kernel"]]
    return case


def build(case) -> tuple:
    b = GraphBuilder((BATCH, CHANNELS, SIZE, SIZE))
    in_scale = 2.0 ** -case["in_exp"]
    x = b.quant("x", in_scale, 0, 8, "quant_in")
    w_scale = (2.0 ** -case["w_exps"]).reshape(-1, 1, 1, 1)
    w = b.quant(b.constant(case["weights"]), w_scale, 0, case["w_bits"], "quant_w", 1, case["w_narrow"], case["w_mode"])
    bias = b.quant(b.constant(case["bias"]), in_scale * w_scale.reshape(-1), 0, 32, "quant_b")
    pad = case["kernel"] // 2
    acc = b.node("Conv", [x, w, bias], "conv", pads=[pad] * 4, kernel_shape=[case["kernel"]] * 2)
    if case["relu"] and not case["bipolar"]:
        acc = b.node("Relu", [acc], "relu")
    if case["bipolar"]:
        out = b.bipolar(acc, 2.0 ** -case["out_exp"], "act_bipolar")
    else:
        out = b.quant(
            acc,
            2.0 ** -case["out_exp"],
            case["out_zp"],
            case["out_bits"],
            "act_quant",
            case["out_signed"],
            case["out_narrow"],
            case["out_mode"],
        )
    return b.model(out), case["x"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_case())
def test_quant_attributes_equal_qonnx_executor(case):
    model, x = build(case)
    ratio_is_integral = case["out_exp"] >= case["in_exp"] + case["w_exps"].max()
    if (
        case["out_zp"] % 2
        and case["out_mode"] in ("ROUND", "HALF_EVEN")
        and not ratio_is_integral
        and not case["bipolar"]
    ):
        with pytest.raises(QExportError, match=r"node 'act_quant' \(Quant\): odd zero point"):
            import_qonnx(model, "hand_built.onnx")
        return
    graph = import_qonnx(model, "hand_built.onnx")
    expected = output_integers(graph, qonnx_execute(model, x))
    reference = reference_integers(graph, x)
    np.testing.assert_array_equal(reference, expected)
    name = graph.inputs[0]
    simulated = Engine(graph).run({name: quantize_input(graph.tensors[name], x)})[0][graph.outputs[0]]
    np.testing.assert_array_equal(simulated, reference)


@settings(max_examples=15, deadline=None)
@given(conv_case(activation_modes=("UP", "DOWN", "HALF_UP", "HALF_DOWN")))
def test_inexpressible_rounding_modes_are_refused_or_exact(case):
    """UP/DOWN/HALF_UP/HALF_DOWN after a right shift are refused naming the node; after an integer ratio
    (nothing to round) they import and still equal the executor."""
    case["bipolar"] = False
    model, x = build(case)
    ratio_is_integral = case["out_exp"] >= case["in_exp"] + case["w_exps"].max()
    if ratio_is_integral:
        graph = import_qonnx(model, "hand_built.onnx")
        np.testing.assert_array_equal(reference_integers(graph, x), output_integers(graph, qonnx_execute(model, x)))
        return
    with pytest.raises(QExportError, match=rf"node 'act_quant' \(Quant\): rounding_mode {case['out_mode']}"):
        import_qonnx(model, "hand_built.onnx")
