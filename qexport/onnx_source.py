"""The export job for an ONNX source: import (or calibrate and quantize a float model), then as for checkpoints.

``lower_onnx`` returns the same ``Export`` as ``pipeline.lower_checkpoint`` (no checkpoint; the
original ONNX model kept for ``--verify``). A float model needs ``--calibrate data.npy``:
onnxruntime's ``quantize_static`` (QDQ, int8 activations and per-channel int8 weights, MinMax
calibration on the given samples; round to nearest) quantizes it, and the result is imported.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from qexport import __version__
from qexport.errors import QExportError
from qexport.export.onnx_qdq import export_onnx
from qexport.frontend.onnx_import import detect_format, import_model, read_model
from qexport.ir.graph import Graph
from qexport.ir.ops import float_form
from qexport.targets import Target

MAX_CALIBRATION_SAMPLES = 100_000
BOARD_CODE_REFUSAL = "the graph requantizes in float32 (onnxruntime QOperator import): no integer C/HLS form"


def load_calibration(path: Path, model: onnx.ModelProto) -> np.ndarray:
    """The calibration batch, validated: a float .npy of shape (N, *input shape), finite, N >= 1."""
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise QExportError(f"{path}: no such calibration file") from None
    except IsADirectoryError:
        raise QExportError(f"{path}: is a directory, expected a .npy file") from None
    except (ValueError, OSError, EOFError) as error:
        raise QExportError(
            f"{path}: not a .npy array ({str(error).splitlines()[0] if str(error) else 'corrupt'})"
        ) from None
    if not isinstance(data, np.ndarray) or data.dtype.kind != "f":
        raise QExportError(f"{path}: calibration data of dtype {getattr(data, 'dtype', type(data))} (expected float)")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    expected = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)[1:]
    if data.ndim == len(expected):
        data = data[None]
    if data.ndim != len(expected) + 1 or any(e not in (-1, s) for e, s in zip(expected, data.shape[1:], strict=True)):
        raise QExportError(
            f"{path}: calibration data of shape {data.shape} does not match the model input (N, {expected})"
        )
    if not 1 <= len(data) <= MAX_CALIBRATION_SAMPLES:
        raise QExportError(f"{path}: {len(data)} calibration samples (expected 1..{MAX_CALIBRATION_SAMPLES})")
    bad = np.flatnonzero(~np.isfinite(data))
    if bad.size:
        raise QExportError(f"{path}: {bad.size} NaN or infinite calibration values (first at flat index {bad[0]})")
    return data.astype(np.float32)


def calibrate(model: onnx.ModelProto, data: np.ndarray) -> onnx.ModelProto:
    """onnxruntime quantize_static (QDQ, s8s8, per-channel weights, MinMax) on ``data``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    name = model.graph.input[0].name
    fixed = model.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")

    class Reader(CalibrationDataReader):
        def __init__(self):
            step = 1 if fixed else 64
            self.batches = iter([{name: data[i : i + step]} for i in range(0, len(data), step)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "quantized.onnx"
        onnx.save_model(model, str(source))
        try:
            quantize_static(
                str(source),
                str(target),
                Reader(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
            )
        except Exception as error:  # onnxruntime raises plain exceptions for models it cannot quantize
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise QExportError(f"onnxruntime quantize_static failed: {first}") from None
        return onnx.load_model(str(target))


def has_float_requant(graph: Graph) -> bool:
    return any(float_form(node) for node in graph.nodes)


def lower_onnx(source: Path, target: Target, step=lambda _: None, calibrate_data: Path | None = None):
    """Import (calibrating a float model first) and convert to ONNX; nothing is written."""
    from qexport.pipeline import Export, check_against_target, layer_table

    started = time.perf_counter()
    step("load ONNX")
    model = read_model(source)
    calibrated = False
    if detect_format(model) is None:
        if calibrate_data is None:
            raise QExportError(f"{source}: a float ONNX model: pass --calibrate data.npy to quantize it")
        model = calibrate(model, load_calibration(calibrate_data, model))
        calibrated = True
    elif calibrate_data is not None:
        raise QExportError(f"{source}: --calibrate is for float models; this one is already quantized")
    step("import to integer IR")
    graph = import_model(model, str(source), target.max_acc_bits)
    try:
        graph.metadata.update(source=Path(source).name, target=target.name, qexport_version=__version__)
        check_against_target(graph, target)
        step("export ONNX")
        exported = export_onnx(graph, target.onnx_native_bits)
    except QExportError as error:
        raise type(error)(f"{source}: {error}") from None
    board_code = tuple(target.raw["export"].get("board_code", ()))
    report: dict[str, Any] = {
        "qexport_version": __version__,
        "source": str(source),
        "target": target.name,
        "onnx_format": graph.metadata["onnx_format"],
        "calibrated": calibrated,
        "input_shape": list(graph.tensors[graph.inputs[0]].shape[1:]),
        "onnx_opset": exported.opset_import[0].version,
        "layers": layer_table(graph),
        "parameters": sum(math.prod(w.shape) for w in graph.weights.values()),
    }
    if board_code and has_float_requant(graph):
        report["board_code_skipped"] = f"{', '.join(board_code)}: {BOARD_CODE_REFUSAL}"
        board_code = ()
    report["lower_seconds"] = round(time.perf_counter() - started, 3)
    return Export(None, graph, exported, report, board_code, source_model=model)
