"""Torch fake-quant == IR reference == onnxruntime: exact with power-of-two scales, bounded otherwise."""

from __future__ import annotations

import numpy as np
import pytest
from modelgen import zoo_graph
from onnx import TensorProto

from qexport.checkpoint import load_checkpoint
from qexport.data import digits_split, synthetic_images
from qexport.export.onnx_qdq import export_onnx
from qexport.frontend.lower import lower
from qexport.quant.config import QuantConfig
from qexport.reference import run_float
from qexport.verify import LAYERWISE_BOUND_LSB, all_scales_power_of_two, onnxruntime_session, verify


def _check(result, exact: bool) -> None:
    assert result.exact_expected == exact
    assert result.ok, result.to_dict()
    if exact:
        for path in result.paths:
            assert path.max_error_lsb == 0 and path.bit_exact == path.total, path
        assert all(worst == 0 for worst, _ in result.layerwise.values())
    else:
        assert all(worst <= LAYERWISE_BOUND_LSB for worst, _ in result.layerwise.values())


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "digits_cnn"])
@pytest.mark.parametrize("pow2", [True, False])
def test_zoo_paths_agree(name: str, pow2: bool) -> None:
    model, graph, calibration = zoo_graph(name, QuantConfig(pow2_scales=pow2))
    inputs = synthetic_images(tuple(calibration.shape[1:]), 24, seed=3)
    assert all_scales_power_of_two(graph) == pow2
    _check(verify(graph, model, export_onnx(graph), inputs), exact=pow2)


@pytest.mark.parametrize("bits", [2, 3, 5, 8])
def test_resnet20_every_bit_width_is_exact_with_pow2(bits: int) -> None:
    config = QuantConfig(weight_bits=bits, act_bits=bits, pow2_scales=True)
    model, graph, calibration = zoo_graph("resnet20", config, seed=bits)
    inputs = synthetic_images(tuple(calibration.shape[1:]), 8, seed=bits)
    onnx_model = export_onnx(graph, native_bits=(2, 4, 8, 16))  # native INT2 where a layer is 2-bit
    if bits == 2:
        assert any(t.data_type == TensorProto.INT2 for t in onnx_model.graph.initializer)
        assert onnx_model.opset_import[0].version == 25
    _check(verify(graph, model, onnx_model, inputs), exact=True)


@pytest.mark.parametrize("name", ["digits_cnn", "resnet20", "mobilenetv2"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_default_export_runs_with_default_onnxruntime_optimizations(name: str, bits: int) -> None:
    """Exports must load in a default session (onnxruntime fuses QDQ there, into QLinearConv at 8 bits);
    pow2 keeps them exact, and the default native bits never produce INT2."""
    _, graph, calibration = zoo_graph(name, QuantConfig(weight_bits=bits, act_bits=bits, pow2_scales=True))
    inputs = synthetic_images(tuple(calibration.shape[1:]), 4, seed=5)
    model = export_onnx(graph)
    two_bit = {TensorProto.INT2, TensorProto.UINT2}
    assert not any(t.data_type in two_bit for t in model.graph.initializer)
    session = onnxruntime_session(model, optimize=True)
    outputs = session.run(None, {session.get_inputs()[0].name: inputs})[0]
    np.testing.assert_array_equal(outputs, run_float(graph, {graph.inputs[0]: inputs})[graph.outputs[0]])


@pytest.mark.parametrize("fixture", ["digits_checkpoint", "digits_lsq_checkpoint", "digits_pot_checkpoint"])
def test_shipped_models(fixture: str, request: pytest.FixtureRequest) -> None:
    checkpoint = load_checkpoint(request.getfixturevalue(fixture))
    graph = lower(checkpoint.model, checkpoint.input_shape)
    _, _, x_test, y_test = digits_split()
    result = verify(graph, checkpoint.model, export_onnx(graph), x_test, y_test)
    _check(result, exact=checkpoint.config.pow2_scales)
    assert result.reference_accuracy > 0.95
    assert np.isclose(result.reference_accuracy, checkpoint.info["qat_accuracy"], atol=0.01)
