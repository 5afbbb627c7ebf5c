"""Shared helpers of the QONNX tests: Brevitas models exported with export_qonnx, and the qonnx executor."""

from __future__ import annotations

import warnings

import numpy as np
import onnx

from qexport.ir.graph import Graph
from qexport.reference.executor import quantize_input, run_graph


def export_brevitas(module, example, dynamo: bool | None = None) -> onnx.ModelProto:
    """``brevitas.export.export_qonnx`` into memory (quietly); ``dynamo=False`` takes the TorchScript exporter."""
    from brevitas.export import export_qonnx

    module.eval()
    kwargs = {} if dynamo is None else {"dynamo": dynamo}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_qonnx(module, example, export_path=None, **kwargs)


def cleaned(model: onnx.ModelProto) -> onnx.ModelProto:
    """The standard QONNX cleanup (``qonnx.util.cleanup.cleanup_model``)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    return cleanup_model(ModelWrapper(model)).model


def qonnx_execute(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The qonnx executor's output for float input ``x``."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    wrapper = ModelWrapper(model).transform(InferShapes())
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


QONNX_DOMAIN = "qonnx.custom_op.general"


class GraphBuilder:
    """A small QONNX graph written by hand with onnx.helper (for hypothesis tests of single Quant nodes)."""

    def __init__(self, input_shape: tuple[int, ...]):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.input_shape = input_shape
        self.count = 0

    def constant(self, value) -> str:
        from onnx import numpy_helper

        self.count += 1
        name = f"c{self.count}"
        self.initializers.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def node(self, op_type: str, inputs: list[str], name: str, domain: str = "", **attrs) -> str:
        self.nodes.append(onnx.helper.make_node(op_type, inputs, [f"{name}_out"], name=name, domain=domain, **attrs))
        return f"{name}_out"

    def quant(self, x: str, scale, zero_point, bits: int, name: str, signed=1, narrow=0, mode="ROUND") -> str:
        inputs = [x, self.constant(scale), self.constant(zero_point), self.constant(bits)]
        return self.node("Quant", inputs, name, QONNX_DOMAIN, signed=signed, narrow=narrow, rounding_mode=mode)

    def bipolar(self, x: str, scale, name: str) -> str:
        return self.node("BipolarQuant", [x, self.constant(scale)], name, QONNX_DOMAIN)

    def model(self, output: str, output_shape: list[int] | None = None) -> onnx.ModelProto:
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            self.nodes,
            "hand_built",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(self.input_shape))],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, output_shape)],
            self.initializers,
        )
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid(QONNX_DOMAIN, 1)]
        return helper.make_model(graph, opset_imports=opsets)
