"""Shared helpers of the QONNX tests: Brevitas models exported with export_qonnx, and the qonnx executor."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx

from qexport.ir.graph import Graph
from qexport.reference.executor import quantize_input, run_graph


def export_brevitas(module, example) -> onnx.ModelProto:
    """``brevitas.export.export_qonnx`` into memory (quietly)."""
    from brevitas.export import export_qonnx

    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        buffer = io.BytesIO()
        model = export_qonnx(module, example, export_path=None)
    del buffer
    return model


def cleaned(model: onnx.ModelProto) -> onnx.ModelProto:
    """The standard QONNX cleanup (``qonnx.util.cleanup.cleanup_model``)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    return cleanup_model(ModelWrapper(model)).model


def qonnx_execute(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The qonnx executor's output for float input ``x``."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    wrapper = ModelWrapper(model)
    name = wrapper.graph.input[0].name
    out = execute_onnx(wrapper, {name: np.asarray(x, np.float32)})
    return np.asarray(out[wrapper.graph.output[0].name])


def output_integers(graph: Graph, values: np.ndarray) -> np.ndarray:
    """Float outputs of a QONNX graph in LSBs of the IR output: rint(y / scale) + zero point."""
    quant = graph.tensors[graph.outputs[0]].quant
    return np.rint(np.asarray(values, np.float64) / np.float32(quant.scale)).astype(np.int64) + quant.zero_point


def reference_integers(graph: Graph, x: np.ndarray) -> np.ndarray:
    name = graph.inputs[0]
    return run_graph(graph, {name: quantize_input(graph.tensors[name], x)})[graph.outputs[0]]
