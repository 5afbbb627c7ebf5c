"""``--verify`` of an imported QONNX model: the ``qonnx`` executor (``qonnx.core.onnx_exec.execute_onnx``) on the
ORIGINAL file, read back as integers of every mapped IR tensor (``graph.metadata["qonnx_tensors"]``).

QONNX tensors hold real values ``scale * (q - zero_point)``; ``rint(value / scale) + zero_point`` recovers ``q``
exactly (the float32 product is within half a unit of it). The executor is the reference implementation of the
QONNX ops (Quant, BipolarQuant, Trunc) and runs the standard ops in onnxruntime; onnxruntime alone cannot load
these custom-domain nodes.
"""

from __future__ import annotations

import numpy as np
import onnx

from qexport.errors import QExportError
from qexport.ir.graph import Graph

QONNX_PATH = "qonnx executor (original file)"


def _integers(graph: Graph, tensor: str, values: np.ndarray) -> np.ndarray:
    quant = graph.tensors[tensor].quant
    scale = np.asarray(quant.scale, np.float64)
    if scale.ndim:
        scale = scale.reshape((1, -1) + (1,) * (values.ndim - 2))
    return np.rint(np.asarray(values, np.float64) / scale).astype(np.int64) + quant.zero_point


def qonnx_original(graph: Graph, model: onnx.ModelProto, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """IR tensor -> integers the qonnx executor computed for it in ``model`` (plus the graph output)."""
    try:
        from qonnx.core.modelwrapper import ModelWrapper
        from qonnx.core.onnx_exec import execute_onnx
        from qonnx.transformation.infer_shapes import InferShapes
    except ImportError:
        raise QExportError("--verify of a QONNX model runs the qonnx executor: install the qonnx package") from None
    wrapper = ModelWrapper(model).transform(InferShapes())
    feed = wrapper.graph.input[0]
    first = feed.type.tensor_type.shape.dim[0]
    batch = first.dim_value if first.HasField("dim_value") and first.dim_value > 0 else len(inputs)
    if len(inputs) % batch:
        raise QExportError(f"{len(inputs)} verification samples are not a multiple of the model's batch {batch}")
    mapped = {**graph.metadata.get("qonnx_tensors", {}), graph.outputs[0]: model.graph.output[0].name}
    collected: dict[str, list[np.ndarray]] = {name: [] for name in mapped}
    for start in range(0, len(inputs), batch):
        context = execute_onnx(
            wrapper, {feed.name: np.asarray(inputs[start : start + batch], np.float32)}, return_full_exec_context=True
        )
        for ir_name, onnx_name in mapped.items():
            if context.get(onnx_name) is not None:
                collected[ir_name].append(_integers(graph, ir_name, context[onnx_name]))
    return {name: np.concatenate(parts) for name, parts in collected.items() if parts}
