"""The export job behind the CLI: checkpoint -> IR -> files in an output directory, atomically."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnx

from qexport import __version__
from qexport.checkpoint import Checkpoint, load_checkpoint
from qexport.errors import QExportError
from qexport.export.onnx_qdq import export_onnx
from qexport.frontend.lower import lower
from qexport.ir.graph import Graph
from qexport.ir.ops import Op
from qexport.ir.serialize import write_spec
from qexport.targets import Target

Step = Callable[[str], None]


@contextmanager
def atomic_directory(destination: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; move it to ``destination`` only if the block succeeds."""
    destination = Path(destination)
    if destination.exists() and not destination.is_dir():
        raise QExportError(f"{destination}: output path exists and is not a directory")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if destination.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old.", dir=destination.parent))
        destination.rename(retired / "old")
        staging.rename(destination)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(destination)


def check_against_target(graph: Graph, target: Target) -> None:
    for node in graph.nodes:
        if node.op in (Op.CONV2D, Op.LINEAR):
            weight = graph.weights[node.attrs["weight"]]
            if weight.format not in target.weight_formats:
                raise QExportError(
                    f"layer {node.name!r}: weight format {weight.format!r} is not offered by target {target.name!r}"
                )


def layer_table(graph: Graph) -> list[dict[str, Any]]:
    """One row per node: op, types, weight format and bits, accumulator width."""
    rows = []
    for node in graph.nodes:
        row: dict[str, Any] = {
            "name": node.name,
            "op": node.op.value,
            "input": graph.tensors[node.inputs[0]].dtype.name,
            "output": graph.tensors[node.outputs[0]].dtype.name,
            "shape": list(graph.tensors[node.outputs[0]].shape[1:]),
        }
        if node.op in (Op.CONV2D, Op.LINEAR):
            weight = graph.weights[node.attrs["weight"]]
            row.update(
                weight_format=weight.format, weight_type=weight.attrs.get("dtype"), acc_bits=node.attrs.get("acc_bits")
            )
            row["parameters"] = math.prod(weight.shape)
        if node.op is Op.REQUANTIZE:
            row["pure_shift"] = all(m == 1 for m in node.attrs["multiplier"])
        rows.append(row)
    return rows


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_export(
    source: Path, target: Target, out_dir: Path, step: Step = lambda _: None
) -> tuple[Checkpoint, Graph, onnx.ModelProto, dict[str, Any]]:
    """Load, lower, export; write model.onnx, layer_spec.json, weights.bin and report.json atomically."""
    started = time.perf_counter()
    step("load checkpoint")
    checkpoint = load_checkpoint(source)
    step("lower to integer IR")
    graph = lower(
        checkpoint.model,
        checkpoint.input_shape,
        name=checkpoint.architecture,
        max_acc_bits=target.max_acc_bits,
        post_mac=target.post_mac,
    )
    graph.metadata.update(source=Path(source).name, target=target.name, qexport_version=__version__)
    check_against_target(graph, target)
    step("export ONNX")
    model = export_onnx(graph, target.onnx_native_bits)
    report: dict[str, Any] = {
        "qexport_version": __version__,
        "source": str(source),
        "target": target.name,
        "architecture": checkpoint.architecture,
        "quant_config": checkpoint.config.to_dict(),
        "onnx_opset": model.opset_import[0].version,
        "layers": layer_table(graph),
    }
    with atomic_directory(out_dir) as staging:
        onnx.save_model(model, str(staging / "model.onnx"))
        step("write layer spec")
        write_spec(graph, staging)
        report["files"] = {p.name: _sha256(p) for p in sorted(staging.iterdir())}
        report["export_seconds"] = round(time.perf_counter() - started, 3)
        (staging / "report.json").write_text(json.dumps(report, indent=1))
    return checkpoint, graph, model, report


def add_verification(out_dir: Path, report: dict[str, Any], verification: dict[str, Any]) -> None:
    report["verification"] = verification
    path = Path(out_dir) / "report.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(path)
