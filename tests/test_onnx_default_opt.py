"""Every export with a shipped target's native bits loads and runs in onnxruntime with default SessionOptions
(which fuse QDQ groups into QLinearConv, QGemm, QLinearAdd, ...); with optimizations disabled it equals the
IR reference bit for bit when all scales are powers of two. Default-optimization results are not asserted
equal: the fused kernels round differently (measured in docs/onnx.md)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from irgen import chain_graphs
from modelgen import calibrated
from test_random_networks import RandomNet, networks

from qexport.errors import QExportError
from qexport.export.onnx_qdq import export_onnx
from qexport.formats import get_format
from qexport.frontend.lower import lower
from qexport.frontend.requant import multiplier_and_shift
from qexport.ir.graph import Graph, QuantInfo
from qexport.ir.ops import Op
from qexport.passes.infer_accumulator_bits import value_range
from qexport.reference import quantize_input, run_graph
from qexport.targets import available_targets, load_target
from qexport.verify import all_scales_power_of_two, has_dynamic_requant, onnxruntime_session

TARGET_BITS = sorted({load_target(name).onnx_native_bits for name in available_targets()})
FLOAT32_EXACT = 1 << 24  # float32 sums of grid integers are exact below this (docs/verification.md)


def _pow2(scale: float) -> float:
    return float(2.0 ** min(3, max(-14, round(math.log2(scale)))))


def _make_consistent(graph: Graph, pow2: bool) -> Graph:
    """Give a random chain graph requantization constants and bias scales that follow from its scales
    (irgen draws them independently), so that the QDQ graph computes what the IR does."""
    if pow2:
        for info in graph.tensors.values():
            info.quant.scale = _pow2(info.quant.scale) if not isinstance(info.quant.scale, list) else 1.0
        for weight in graph.weights.values():
            scale = weight.attrs["scale"]
            weight.attrs["scale"] = [_pow2(s) for s in scale] if isinstance(scale, list) else _pow2(scale)
    acc_scales: dict[str, np.ndarray] = {}
    for node in graph.nodes:
        out = graph.tensors[node.outputs[0]]
        if node.op in (Op.CONV2D, Op.LINEAR):
            weight = graph.weights[node.attrs["weight"]]
            grid = get_format(weight.format).grid_scale(weight)
            acc = float(graph.tensors[node.inputs[0]].quant.scale) * np.broadcast_to(grid, (weight.shape[0],))
            if node.attrs.get("bias"):
                graph.weights[node.attrs["bias"]].attrs["scale"] = acc.tolist()
        elif node.op is Op.ADD:
            multiplier = 1 << (node.attrs["lhs_multiplier"].bit_length() - 1)  # 1, 2 or 4: operands are equal
            node.attrs["lhs_multiplier"] = node.attrs["rhs_multiplier"] = multiplier
            acc = np.full(out.shape[1], float(graph.tensors[node.inputs[0]].quant.scale) / multiplier)
        elif node.op is Op.REQUANTIZE:
            pairs = [multiplier_and_shift(float(s) / float(out.quant.scale)) for s in acc_scales[node.inputs[0]]]
            node.attrs["multiplier"], node.attrs["shift"] = [p[0] for p in pairs], [p[1] for p in pairs]
            continue
        else:
            continue
        acc_scales[node.outputs[0]] = acc
        out.quant = QuantInfo(acc.tolist(), 0)
    return graph


def _float32_exact(graph: Graph) -> bool:
    accumulating = (n for n in graph.nodes if n.op in (Op.CONV2D, Op.LINEAR, Op.ADD))
    return all(max(abs(v) for v in value_range(graph, node)) < FLOAT32_EXACT for node in accumulating)


def _run(model, inputs: np.ndarray, optimize: bool) -> np.ndarray:
    session = onnxruntime_session(model, optimize=optimize)
    assert session.get_session_options().graph_optimization_level == (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    (outputs,) = session.run(None, {session.get_inputs()[0].name: inputs})
    assert np.isfinite(outputs).all()
    return outputs


def _integers(graph: Graph, outputs: np.ndarray) -> np.ndarray:
    quant = graph.tensors[graph.outputs[0]].quant
    return np.rint(outputs / np.float32(quant.scale)).astype(np.int64) + quant.zero_point


def _check(graph: Graph, native_bits: tuple[int, ...], inputs: np.ndarray) -> None:
    model = export_onnx(graph, native_bits)
    _run(model, inputs, optimize=True)  # loads and runs with default SessionOptions
    reference = run_graph(graph, {graph.inputs[0]: quantize_input(graph.tensors[graph.inputs[0]], inputs)})
    disabled = _integers(graph, _run(model, inputs, optimize=False))
    exact = all_scales_power_of_two(graph) and not has_dynamic_requant(graph)
    event("pow2: bit-exact checked" if exact else "free scales: load and run only")
    if exact:
        np.testing.assert_array_equal(disabled, reference[graph.outputs[0]])


def test_default_session_options_are_the_defaults() -> None:
    assert ort.SessionOptions().graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert TARGET_BITS and all(min(bits) >= 4 for bits in TARGET_BITS)  # INT2 stays opt-in


@pytest.mark.parametrize("native_bits", TARGET_BITS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=chain_graphs(), pow2=st.sampled_from([True, True, False]), seed=st.integers(0, 2**32 - 1))
def test_random_ir_graphs_load_with_default_optimizations(native_bits, graph, pow2, seed) -> None:
    """Signed/unsigned 2-8 bit tensors with zero points, every weight format (per-channel scales), adds,
    max/avg/global pools (global over any count, e.g. 6), concat, linear, clips."""
    graph = _make_consistent(graph, pow2)
    assume(_float32_exact(graph))
    info = graph.tensors[graph.inputs[0]]
    span = float(info.quant.scale) * (info.dtype.max - info.dtype.min + 2)
    inputs = np.random.default_rng(seed).uniform(-span, span, (5, *info.shape[1:])).astype(np.float32)
    _check(graph, native_bits, inputs)


WEIGHT_METHODS = ("lsq", "pot", "post", "apot", "codebook", "ddq", "mde")
BIT_LIMITS = {"pot": (3, 8), "post": (3, 6), "apot": (3, 7)}


@pytest.mark.parametrize("native_bits", TARGET_BITS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=networks(),
    weight_method=st.sampled_from(WEIGHT_METHODS),
    act_method=st.sampled_from(["lsq", "lsq", "lsq", "asq"]),
    pow2=st.sampled_from([True, True, False]),
)
def test_random_torch_networks_load_with_default_optimizations(native_bits, case, weight_method, act_method, pow2):
    """Lowered QAT nets: residual adds, relu/relu6, BN, depthwise and dilated convs, max/avg pools."""
    in_channels, blocks, config, classes, seed, size = case
    low, high = BIT_LIMITS.get(weight_method, (2, 8))
    bits = min(max(config.weight_bits, low), high)
    config = dataclasses.replace(
        config, weight_bits=bits, weight_method=weight_method, act_method=act_method, pow2_scales=pow2
    )
    shape = (in_channels, size, size)
    qat, _ = calibrated(RandomNet(in_channels, blocks, classes), config, shape, seed)
    try:
        graph = lower(qat, shape, "random")
    except QExportError as error:  # front-end limits (tested with the front end), not the exporter's
        event(f"lowering refused: {type(error).__name__}")
        assume(False)
    inputs = np.random.default_rng(seed).standard_normal((6, *shape)).astype(np.float32)
    _check(graph, native_bits, inputs)
