"""JSON layer spec + binary weight blob: a lossless, versioned serialization of the IR."""

from __future__ import annotations

import hashlib
import json
import math
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

from qexport.errors import GraphError, QExportError
from qexport.ir.checker import check_graph
from qexport.ir.dtypes import IntType
from qexport.ir.graph import Graph, Node, QuantInfo, TensorInfo, Weight
from qexport.ir.ops import Op, float_form

SPEC_FORMAT = "qexport.layer_spec"
SPEC_VERSION = "1.0"
FLOAT_SCALE_VERSION = "2.0"  # a 1.x reader would run such a requantize's integer multiplier instead
WEIGHTS_FILE = "weights.bin"
ALIGNMENT = 16


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    return json.loads(resources.files("qexport.ir").joinpath("layer_spec.schema.json").read_text())


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    schema = load_schema()
    return jsonschema.validators.validator_for(schema)(schema)


def _storage_dtype(array: np.ndarray) -> np.dtype:
    """The smallest little-endian numpy integer type that holds every value."""
    low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
    for candidate in ("<i1", "<u1", "<i2", "<u2", "<i4", "<u4", "<i8"):
        info = np.iinfo(candidate)
        if info.min <= low and high <= info.max:
            return np.dtype(candidate)
    raise GraphError(f"weight values [{low}, {high}] do not fit 64 bits")


def _quant_to_json(quant: QuantInfo | None) -> dict[str, Any] | None:
    if quant is None:
        return None
    return {"scale": quant.scale, "zero_point": quant.zero_point, "axis": quant.axis, "dynamic": quant.dynamic}


def _json_scalar(value: Any) -> Any:
    """numpy scalars and arrays in attributes become plain JSON numbers and lists."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"attribute value {value!r} is not JSON-serializable")


def graph_to_spec(graph: Graph) -> tuple[dict[str, Any], bytes]:
    """Return (spec dict, weight blob)."""
    blob = bytearray()
    weights_json: dict[str, Any] = {}
    for name, weight in graph.weights.items():
        arrays_json = {}
        for field, array in weight.arrays.items():
            data = np.ascontiguousarray(array.astype(_storage_dtype(array))).tobytes()
            blob.extend(b"\0" * (-len(blob) % ALIGNMENT))
            arrays_json[field] = {
                "dtype": _storage_dtype(array).str,
                "shape": list(array.shape),
                "offset": len(blob),
                "nbytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
            blob.extend(data)
        weights_json[name] = {
            "format": weight.format,
            "shape": list(weight.shape),
            "attrs": weight.attrs,
            "arrays": arrays_json,
        }
    spec = {
        "format": SPEC_FORMAT,
        "version": FLOAT_SCALE_VERSION if any(float_form(n) for n in graph.nodes) else SPEC_VERSION,
        "name": graph.name,
        "metadata": graph.metadata,
        "inputs": graph.inputs,
        "outputs": graph.outputs,
        "tensors": {
            name: {"dtype": info.dtype.name, "shape": list(info.shape), "quant": _quant_to_json(info.quant)}
            for name, info in graph.tensors.items()
        },
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": hashlib.sha256(bytes(blob)).hexdigest(),
        "weights": weights_json,
        "layers": [
            {"name": n.name, "op": n.op.value, "inputs": n.inputs, "outputs": n.outputs, "attrs": n.attrs}
            for n in graph.nodes
        ],
    }
    return json.loads(json.dumps(spec, default=_json_scalar)), bytes(blob)


def validate_spec(spec: dict[str, Any], where: str = "layer spec") -> None:
    try:
        _validator().validate(spec)
    except jsonschema.ValidationError as error:
        path = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise QExportError(f"{where}: field {path}: {error.message}") from None
    except RecursionError:
        raise QExportError(f"{where}: nested too deeply") from None


def spec_to_graph(spec: dict[str, Any], blob: bytes, where: str = "layer spec") -> Graph:
    """Rebuild and check the graph; verifies every array's checksum."""
    validate_spec(spec, where)
    weights = {}
    for name, entry in spec["weights"].items():
        arrays = {}
        for field, meta in entry["arrays"].items():
            dtype = np.dtype(meta["dtype"])
            if meta["nbytes"] != math.prod(meta["shape"]) * dtype.itemsize:
                raise QExportError(
                    f"{where}: weight {name!r} array {field!r}: shape {meta['shape']} of {meta['dtype']} "
                    f"does not fill {meta['nbytes']} bytes"
                )
            data = blob[meta["offset"] : meta["offset"] + meta["nbytes"]]
            if len(data) != meta["nbytes"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
                raise QExportError(f"{where}: weight {name!r} array {field!r}: checksum mismatch or truncated blob")
            arrays[field] = np.frombuffer(data, dtype=np.dtype(meta["dtype"])).reshape(meta["shape"]).astype(np.int64)
        weights[name] = Weight(name, entry["format"], tuple(entry["shape"]), arrays, dict(entry["attrs"]))
    if hashlib.sha256(blob).hexdigest() != spec["weights_sha256"]:  # catches bytes between the arrays
        raise QExportError(f"{where}: weight file checksum mismatch (weights_sha256): corrupt or foreign blob")
    tensors = {}
    for name, entry in spec["tensors"].items():
        quant = entry["quant"]
        tensors[name] = TensorInfo(
            name, IntType.parse(entry["dtype"]), tuple(entry["shape"]), QuantInfo(**quant) if quant else None
        )
    nodes = []
    for layer in spec["layers"]:
        try:
            op = Op(layer["op"])
        except ValueError:
            raise GraphError(f"{where}: layer {layer['name']!r}: unknown op {layer['op']!r}") from None
        nodes.append(Node(op, layer["name"], list(layer["inputs"]), list(layer["outputs"]), dict(layer["attrs"])))
    graph = Graph(spec["name"], list(spec["inputs"]), list(spec["outputs"]), tensors, nodes, weights, spec["metadata"])
    return check_graph(graph)


def write_spec(graph: Graph, directory: Path) -> tuple[Path, Path]:
    spec, blob = graph_to_spec(graph)
    validate_spec(spec)
    spec_path, blob_path = directory / "layer_spec.json", directory / WEIGHTS_FILE
    spec_path.write_text(json.dumps(spec, indent=1, default=_json_scalar))
    blob_path.write_bytes(blob)
    return spec_path, blob_path


def read_spec(spec_path: Path) -> Graph:
    spec_path = Path(spec_path)
    try:
        spec = json.loads(spec_path.read_text())
    except OSError as error:
        raise QExportError(f"{spec_path}: cannot read layer spec ({error.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise QExportError(f"{spec_path}: cannot read layer spec ({error})") from None
    except RecursionError:
        raise QExportError(f"{spec_path}: layer spec nested too deeply") from None
    if not isinstance(spec, dict):
        raise QExportError(f"{spec_path}: not a layer spec (top level is not an object)")
    blob_path = spec_path.parent / spec.get("weights_file", WEIGHTS_FILE)
    try:
        blob = blob_path.read_bytes()
    except OSError as error:
        raise QExportError(f"{blob_path}: cannot read weight file ({error.strerror})") from None
    return spec_to_graph(spec, blob, where=str(spec_path))
