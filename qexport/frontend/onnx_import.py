"""Import a quantized ONNX model: validate the file, detect its flavour, dispatch to its importer.

Importers register in ``IMPORTERS`` (name -> ``Importer``); ``detect`` runs in ``priority`` order
(lowest first) and the first that claims the model lowers it. A new format adds one ``register``
line to ``_register_builtin`` (its module stays import-light). Every error is one line naming
the file, and the node and op where there is one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from qexport.errors import QExportError
from qexport.ir.graph import Graph
from qexport.passes.infer_accumulator_bits import DEFAULT_MAX_ACC_BITS

MAX_ONNX_BYTES = 1 << 30  # the protobuf limit is 2 GiB; quantized models this tool targets are far smaller
OPSET_RANGE = (10, 23)  # QuantizeLinear/DequantizeLinear exist from opset 10; onnxruntime 1.32 runs up to 23
ONNX_MAGIC_SUFFIXES = (".onnx",)
CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth")
MAX_INPUT_ELEMENTS = 1 << 24  # per sample; the models this tool targets are far smaller


@dataclass(frozen=True)
class Importer:
    name: str  # e.g. "ort_qdq"; recorded as graph.metadata["onnx_format"]
    detect: Callable[[onnx.ModelProto], bool]
    load: Callable[[onnx.ModelProto, str, int], Graph]  # (model, graph name, max accumulator bits)
    priority: int = 50
    description: str = ""


IMPORTERS: dict[str, Importer] = {}


def register(importer: Importer) -> Importer:
    IMPORTERS[importer.name] = importer
    return importer


def _register_builtin() -> None:
    from qexport.frontend import onnx_brevitas_qcdq, onnx_ort_qdq, onnx_ort_qop, onnx_qonnx

    register(Importer(onnx_ort_qop.NAME, onnx_ort_qop.detect, onnx_ort_qop.load, 10, "onnxruntime QOperator"))
    register(Importer(onnx_brevitas_qcdq.NAME, onnx_brevitas_qcdq.detect, onnx_brevitas_qcdq.load, 30, "Brevitas QCDQ"))
    register(Importer(onnx_ort_qdq.NAME, onnx_ort_qdq.detect, onnx_ort_qdq.load, 40, "onnxruntime QDQ"))
    register(Importer(onnx_qonnx.NAME, onnx_qonnx.detect, onnx_qonnx.load, 20, "QONNX (Quant/BipolarQuant/Trunc)"))


def _load_modules() -> None:
    if not IMPORTERS:
        _register_builtin()


def is_onnx_path(path: Path) -> bool:
    """An .onnx suffix, or a file whose first bytes look like an ONNX ModelProto (field 1 ir_version)."""
    path = Path(path)
    if path.suffix.lower() in ONNX_MAGIC_SUFFIXES:
        return True
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        return False
    try:
        with path.open("rb") as handle:
            head = handle.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x08 and 3 <= head[1] <= 12


def read_model(path: Path) -> onnx.ModelProto:
    """Read and validate: size, protobuf, onnx.checker, opset, no external data, one float input."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_ONNX_BYTES:
            raise QExportError(f"{path}: ONNX file of {size} bytes exceeds the {MAX_ONNX_BYTES}-byte limit")
        data = path.read_bytes()
    except FileNotFoundError:
        raise QExportError(f"{path}: no such ONNX file") from None
    except IsADirectoryError:
        raise QExportError(f"{path}: is a directory, expected an .onnx file") from None
    except OSError as error:
        raise QExportError(f"{path}: cannot read ({error.strerror})") from None
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as error:
        raise QExportError(
            f"{path}: not an ONNX model (protobuf: {str(error).splitlines()[0] if str(error) else 'decode error'})"
        ) from None
    if not model.graph.node:
        raise QExportError(f"{path}: not an ONNX model (no graph nodes; truncated or not ONNX)")
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
        raise QExportError(f"{path}: ONNX models with external data are not supported")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        first = next((line for line in str(error).splitlines() if line.strip()), "invalid model")
        raise QExportError(f"{path}: onnx.checker rejects the model: {first}") from None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        raise QExportError(
            f"{path}: default-domain opset {opset} outside the supported {OPSET_RANGE[0]}..{OPSET_RANGE[1]}"
        )
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise QExportError(f"{path}: expected exactly one float32 graph input, found {len(inputs)}")
    check_input_shape(path, inputs[0])
    return model


def check_input_shape(path: Path, value: onnx.ValueInfoProto) -> None:
    """Every fixed dimension positive; one sample (all but the batch dimension) within MAX_INPUT_ELEMENTS."""
    dims = value.type.tensor_type.shape.dim
    elements = 1
    for index, dim in enumerate(dims):
        if dim.HasField("dim_value") and dim.dim_value <= 0:
            raise QExportError(f"{path}: input {value.name!r} dimension {index} is {dim.dim_value}, expected >= 1")
        if index and dim.HasField("dim_value"):
            elements *= dim.dim_value
    if elements > MAX_INPUT_ELEMENTS:
        raise QExportError(
            f"{path}: input {value.name!r} holds {elements} elements per sample (limit {MAX_INPUT_ELEMENTS})"
        )


def detect_format(model: onnx.ModelProto) -> str | None:
    """The name of the first importer (by priority) that claims the model, or None (a float model)."""
    _load_modules()
    for importer in sorted(IMPORTERS.values(), key=lambda imp: imp.priority):
        if importer.detect(model):
            return importer.name
    return None


def import_model(model: onnx.ModelProto, where: str, max_acc_bits: int = DEFAULT_MAX_ACC_BITS) -> Graph:
    flavour = detect_format(model)
    if flavour is None:
        raise QExportError(
            f"{where}: no quantized ONNX flavour recognised (a float model? use qexport --calibrate data.npy)"
        )
    name = model.graph.name or Path(where).stem
    try:
        graph = IMPORTERS[flavour].load(model, name, max_acc_bits)
    except QExportError as error:
        raise type(error)(f"{where}: {error}") from None
    graph.metadata.update(onnx_format=flavour)
    return graph


def import_onnx(path: Path, max_acc_bits: int = DEFAULT_MAX_ACC_BITS) -> Graph:
    """Validate ``path``, detect its flavour and lower it to the checked integer IR."""
    return import_model(read_model(path), str(path), max_acc_bits)


def read_graph(path: Path, max_acc_bits: int = DEFAULT_MAX_ACC_BITS) -> Graph:
    """A layer spec, or a quantized ONNX model imported on the fly (``hwsim run model.onnx``)."""
    from qexport.ir.serialize import read_spec

    return import_onnx(path, max_acc_bits) if is_onnx_path(path) else read_spec(path)
