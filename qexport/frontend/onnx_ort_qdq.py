"""onnxruntime ``quantize_static`` output in QDQ format (s8s8, u8s8; per-tensor or per-channel weights).

The graph is DequantizeLinear -> float op -> QuantizeLinear around every Conv, Gemm, MatMul, Add,
average pool; onnxruntime may drop a Relu whose effect the output's zero point carries. The shared
matcher (``onnx_qdq_match``) turns each group into exact integer accumulators and one integer
requantize. onnxruntime (optimizations disabled) computes the float op in float32 instead, so
results agree to within the bound measured in docs/interop.md (exact for power-of-two scales).
"""

from __future__ import annotations

import onnx

from qexport.frontend.onnx_qdq_match import QdqMatcher
from qexport.ir.graph import Graph

NAME = "ort_qdq"
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def detect(model: onnx.ModelProto) -> bool:
    return any(node.op_type in QDQ_OPS for node in model.graph.node)


def load(model: onnx.ModelProto, name: str, max_acc_bits: int) -> Graph:
    return QdqMatcher(model, name).run(max_acc_bits)
