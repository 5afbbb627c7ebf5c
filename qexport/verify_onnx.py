"""``--verify`` for an imported ONNX model: the IR reference vs hwsim and vs onnxruntime on the ORIGINAL file.

onnxruntime runs the file it was given with graph optimizations disabled; every integer tensor the
importer mapped (``graph.metadata["onnx_tensors"]``) is also read out, so each IR layer is checked
on onnxruntime's own inputs (layer by layer) as well as end to end. There is no torch model (that
row is "n/a"). Bounds (docs/interop.md): hwsim is always bit-exact; onnxruntime is bit-exact when
the import is exact (``exact_import``), otherwise each layer may differ by 1 LSB (float rounding
of a value within float32 error of a rounding tie) and end-to-end differences are reported.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
from rich.table import Table

from qexport.errors import QExportError
from qexport.export.onnx_qdq import weight_integers
from qexport.formats import get_format, int_affine
from qexport.frontend.requant import is_power_of_two
from qexport.ir.graph import Graph
from qexport.ir.ops import Op, float_form
from qexport.verify import (
    LAYERWISE_BOUND_LSB,
    Verification,
    _batches,
    _to_int,
    compare,
    hwsim_integers,
    layerwise_errors,
    reference_integers,
)

FLOAT_EXACT_BITS = 24  # float32 holds every integer below 2**24 exactly
ORT_PATH = "onnxruntime (original file)"


def exact_import(graph: Graph) -> bool:
    """True when onnxruntime's arithmetic is reproduced exactly by construction.

    QOperator graphs: every requantize is in a float32 form (QLinearConv/MatMul/Gemm/GlobalAveragePool,
    QLinearAdd of two tensors).
    QDQ graphs: every scale is a power of two and every partial sum (any order, bias included) is below
    2**24, so onnxruntime's float32 convolution, its division by the output scale and the IR's shift
    compute the same numbers.
    """
    requants = [node for node in graph.nodes if node.op is Op.REQUANTIZE]
    if graph.metadata.get("onnx_format") == "ort_qop":
        return all(float_form(node) for node in requants)
    if not all(get_format(weight.format).linear for weight in graph.weights.values()):
        return False  # powers of sqrt(2) have no float32-exact form
    for info in graph.tensors.values():
        if info.quant is not None and not all(is_power_of_two(float(s)) for s in np.atleast_1d(info.quant.scale)):
            return False
    return all(
        partial_sum_bound(graph, node) < 1 << FLOAT_EXACT_BITS for node in graph.nodes if node.op is not Op.REQUANTIZE
    )


def partial_sum_bound(graph: Graph, node) -> int:
    """A bound on |any partial sum, in any order, bias included| of a conv/linear/add (0 for other ops)."""
    if node.op is Op.ADD:
        return sum(
            max(abs(graph.tensors[t].dtype.min - zp), abs(graph.tensors[t].dtype.max - zp)) * abs(m)
            for t, m, zp in (
                (node.inputs[0], node.attrs["lhs_multiplier"], graph.tensors[node.inputs[0]].quant.zero_point),
                (node.inputs[1], node.attrs["rhs_multiplier"], graph.tensors[node.inputs[1]].quant.zero_point),
            )
        )
    if node.op not in (Op.CONV2D, Op.LINEAR):
        return 0
    x = graph.tensors[node.inputs[0]]
    reach = max(abs(x.dtype.min - x.quant.zero_point), abs(x.dtype.max - x.quant.zero_point))
    weight = graph.weights[node.attrs["weight"]]
    magnitude = np.abs(weight_integers(weight)[0]).reshape(weight.shape[0], -1).sum(axis=1) * reach
    if node.attrs.get("bias") is not None:
        magnitude = magnitude + np.abs(int_affine.integers(graph.weights[node.attrs["bias"]]))
    return int(magnitude.max())


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for models it cannot load
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise QExportError(f"--verify: onnxruntime cannot run the original model ({first})") from None


def onnxruntime_original(graph: Graph, model: onnx.ModelProto, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """IR tensor -> integers onnxruntime computed for it in the original model (plus the graph output)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    mapped = graph.metadata.get("onnx_tensors", {})
    present = {o.name for o in exposed.graph.output}
    for onnx_name in mapped.values():
        if onnx_name not in present:
            exposed.graph.output.append(onnx.ValueInfoProto(name=onnx_name))
            present.add(onnx_name)
    session = _session(exposed)
    names = [o.name for o in session.get_outputs()]
    feed = session.get_inputs()[0]
    fixed_batch = feed.shape[0] if isinstance(feed.shape[0], int) else None
    collected: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for part in _batches(len(inputs)):
        chunk = inputs[part]
        pieces = (
            [chunk] if fixed_batch is None else [chunk[i : i + fixed_batch] for i in range(0, len(chunk), fixed_batch)]
        )
        for piece in pieces:
            for name, value in zip(names, session.run(None, {feed.name: piece}), strict=True):
                collected[name].append(value)
    values = {name: np.concatenate(parts) for name, parts in collected.items()}
    result = {ir: values[onnx_name].astype(np.int64) for ir, onnx_name in mapped.items() if onnx_name in values}
    out = graph.outputs[0]
    result[out] = _to_int(graph, out, values[model.graph.output[0].name])
    return result


def verify_import(
    graph: Graph,
    model: onnx.ModelProto,
    inputs: np.ndarray,
    labels: np.ndarray | None = None,
    progress: Callable[[int], None] | None = None,
) -> Verification:
    exact = exact_import(graph)
    reference = reference_integers(graph, inputs, progress)
    result = Verification(
        exact_expected=exact,
        samples=len(inputs),
        reference_accuracy=None if labels is None else float((reference.argmax(axis=1) == labels).mean()),
    )
    result.paths.append(compare("hwsim", reference, hwsim_integers(graph, inputs), labels, 0))
    if progress:
        progress(len(inputs))
    path, run_original = ORT_PATH, onnxruntime_original
    if graph.metadata.get("onnx_format") == "qonnx":  # custom-domain ops: the qonnx executor runs the file
        from qexport.verify_qonnx import QONNX_PATH, qonnx_original

        path, run_original = QONNX_PATH, qonnx_original
    observed = run_original(graph, model, inputs)
    if progress:
        progress(len(inputs))
    result.paths.append(compare(path, reference, observed[graph.outputs[0]], labels, 0 if exact else None))
    result.layerwise[path] = layerwise_errors(graph, inputs, observed)
    return result


def import_verification_table(result: Verification, flavour: str) -> Table:
    mode = "bit-exact required" if result.exact_expected else f"<= {LAYERWISE_BOUND_LSB} LSB per layer"
    table = Table(
        title=f"Verification of the {flavour} import on {result.samples} samples vs the IR reference ({mode})"
    )
    for column in ("path", "top-1 agreement", "max |error| (LSB)", "bit-exact outputs", "accuracy", "status"):
        table.add_column(column, justify="left" if column == "path" else "right")
    accuracy = "-" if result.reference_accuracy is None else f"{result.reference_accuracy:.2%}"
    table.add_row("IR reference", "100.00%", "0", "all", accuracy, "oracle")
    table.add_row("torch fake-quant", "n/a", "n/a", "n/a", "n/a", "n/a (no torch model)")
    for path in result.paths:
        table.add_row(
            path.path,
            f"{path.top1_agreement:.2%}",
            str(path.max_error_lsb),
            f"{path.bit_exact}/{path.total}",
            "-" if path.accuracy is None else f"{path.accuracy:.2%}",
            "reported" if path.bound_lsb is None else ("ok" if path.ok else f"FAIL (bound {path.bound_lsb})"),
        )
    table.caption = "layer by layer (each layer fed onnxruntime's own integers): " + "; ".join(
        f"max {worst} LSB, mismatch rate {rate:.2e}" for worst, rate in result.layerwise.values()
    )
    return table


def verification_inputs(graph: Graph, samples: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The shipped digits test set for a (1, 8, 8) input, seeded synthetic images otherwise."""
    from qexport.data import DIGITS_SHAPE, verification_data

    shape = tuple(graph.tensors[graph.inputs[0]].shape[1:])
    return verification_data("digits" if shape == DIGITS_SHAPE else "synthetic", shape, samples)


def check_inputs_option(export, inputs_path, verifying: bool) -> None:
    """``--inputs`` only with ``--verify`` of an ONNX source."""
    if inputs_path is not None and (export.checkpoint is not None or not verifying):
        raise QExportError("--inputs applies to --verify of an ONNX model (checkpoints verify on their data set)")


def load_inputs(path, graph: Graph) -> np.ndarray:
    """``--inputs X.npy``, validated as ``hwsim run`` does; integers (already quantized) become their floats."""
    from hwsim.cli import _load_inputs
    from qexport.reference import dequantize_output

    data = _load_inputs(path, graph)
    if np.issubdtype(data.dtype, np.integer):
        return dequantize_output(graph.tensors[graph.inputs[0]], data)
    return data.astype(np.float32)


def verify_export(
    export, samples: int, progress: Callable[[int], None] | None = None, inputs_path=None
) -> Verification:
    """``--verify`` of an imported model (``Export`` with ``source_model``); records it in the report.

    Inputs: ``inputs_path`` (every sample in it), else ``verification_inputs``."""
    if inputs_path is not None:
        inputs, labels = load_inputs(inputs_path, export.graph), None
    else:
        inputs, labels = verification_inputs(export.graph, samples)
    result = verify_import(export.graph, export.source_model, inputs, labels, progress)
    export.report["verification"] = result.to_dict()
    return result
