"""Brevitas ``export_onnx_qcdq`` output: QuantizeLinear -> Clip -> DequantizeLinear (sub-8-bit).

Activations are QuantizeLinear -> Clip -> DequantizeLinear, the Clip giving the true bit width
(e.g. [0, 15] for a 4-bit ReLU, [-8, 7] signed, [-7, 7] narrow range); weights are integer
constants -> Clip -> DequantizeLinear (per-tensor or per-channel along axis 0), biases int32
constants -> DequantizeLinear. The same matcher as onnxruntime's QDQ output handles both
(``onnx_qdq_match``); a Clip after QuantizeLinear narrows the IR type and requantize range.
"""

from __future__ import annotations

import onnx

from qexport.frontend.onnx_qdq_match import QdqMatcher
from qexport.ir.graph import Graph

NAME = "brevitas_qcdq"


def detect(model: onnx.ModelProto) -> bool:
    """A Clip fed by a QuantizeLinear output or an integer constant: the QCDQ signature."""
    quantized = {out for node in model.graph.node if node.op_type == "QuantizeLinear" for out in node.output}
    integer_constants = {init.name for init in model.graph.initializer if init.data_type in _INTEGER_TYPES}
    return any(
        node.op_type == "Clip" and node.input and node.input[0] in quantized | integer_constants
        for node in model.graph.node
    )


_INTEGER_TYPES = frozenset(
    {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16}
)


def load(model: onnx.ModelProto, name: str, max_acc_bits: int) -> Graph:
    return QdqMatcher(model, name).run(max_acc_bits)
