"""The export job behind the CLI: checkpoint -> IR -> ONNX and layer spec, then files written atomically."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from qexport import __version__
from qexport.checkpoint import Checkpoint, load_checkpoint
from qexport.errors import QExportError
from qexport.export.c_code import write_c
from qexport.export.hls_code import write_hls
from qexport.export.onnx_qdq import export_onnx
from qexport.export.rtl_export import write_rtl
from qexport.frontend.lower import lower
from qexport.ir.graph import Graph
from qexport.ir.ops import Op
from qexport.ir.serialize import write_spec
from qexport.outputs import REPORT_FILE, export_directory, file_manifest
from qexport.targets import Target

Step = Callable[[str], None]
BOARD_WRITERS: dict[str, Callable[[Graph, Path], list[Path]]] = {"c": write_c, "hls": write_hls}


def check_against_target(graph: Graph, target: Target) -> None:
    for node in graph.nodes:
        if node.op in (Op.CONV2D, Op.LINEAR):
            weight = graph.weights[node.attrs["weight"]]
            if weight.format not in target.weight_formats:
                where = target.source or f"target {target.name!r}"
                raise QExportError(f"layer {node.name!r}: weight format {weight.format!r} is not offered by {where}")


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


@dataclass
class Export:
    """Everything one export produces before it is written: the files' contents and the report."""

    checkpoint: Checkpoint | None  # None for an imported ONNX model (qexport.onnx_source)
    graph: Graph
    model: onnx.ModelProto
    report: dict[str, Any]
    board_code: tuple[str, ...] = ()  # the target's export.board_code: "c", "hls"
    source_model: onnx.ModelProto | None = None  # the imported ONNX model (what --verify runs)
    rtl_array: tuple[int, int] | None = None  # qexport --rtl: write rtl/ for this rows x cols array
    qonnx_model: onnx.ModelProto | None = None  # qexport --qonnx: written as model.qonnx.onnx


def lower_checkpoint(source: Path, target: Target, step: Step = lambda _: None) -> Export:
    """Load, lower and convert to ONNX (nothing is written)."""
    started = time.perf_counter()
    step("load checkpoint")
    checkpoint = load_checkpoint(source)
    step("lower to integer IR")
    try:
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
    except QExportError as error:
        raise type(error)(f"{source}: {error}") from None
    report: dict[str, Any] = {
        "qexport_version": __version__,
        "source": str(source),
        "target": target.name,
        "architecture": checkpoint.architecture,
        "quant_config": checkpoint.config.to_dict(),
        "onnx_opset": model.opset_import[0].version,
        "layers": layer_table(graph),
        "lower_seconds": round(time.perf_counter() - started, 3),
    }
    return Export(checkpoint, graph, model, report, tuple(target.raw["export"].get("board_code", ())))


def lower_source(source: Path, target: Target, step: Step = lambda _: None, calibrate: Path | None = None) -> Export:
    """A checkpoint, or an ONNX model (by suffix or content: ``qexport.onnx_source``)."""
    from qexport.frontend.onnx_import import is_onnx_path
    from qexport.onnx_source import lower_onnx

    if is_onnx_path(source):
        return lower_onnx(source, target, step, calibrate)
    if calibrate is not None:
        raise QExportError(f"{source}: --calibrate applies to float ONNX models only")
    return lower_checkpoint(source, target, step)


def write_export(export: Export, out_dir: Path, force: bool = False, step: Step = lambda _: None) -> None:
    """Write model.onnx, layer_spec.json, weights.bin and report.json into ``out_dir``, all or nothing.

    ``report.json`` lists every file written with its sha256: that list is what a later export with
    ``force`` may replace (see ``qexport.outputs.export_directory``).
    """
    started = time.perf_counter()
    with export_directory(out_dir, force) as staging:
        step("write ONNX")
        onnx.save_model(export.model, str(staging / "model.onnx"))
        step("write layer spec")
        write_spec(export.graph, staging)
        if export.qonnx_model is not None:
            onnx.save_model(export.qonnx_model, str(staging / "model.qonnx.onnx"))
        for code in export.board_code:
            writer = BOARD_WRITERS.get(code)
            if writer is not None:
                step(f"write {code} board code")
                writer(export.graph, staging)
        if export.rtl_array is not None:
            step("write rtl")
            write_rtl(export.graph, staging, *export.rtl_array)
        export.report["files"] = file_manifest(staging)
        export.report["write_seconds"] = round(time.perf_counter() - started, 3)
        (staging / REPORT_FILE).write_text(json.dumps(export.report, indent=1))


def run_export(source: Path, target: Target, out_dir: Path, step: Step = lambda _: None, force: bool = False) -> Export:
    """``lower_checkpoint`` then ``write_export``."""
    export = lower_checkpoint(source, target, step)
    write_export(export, out_dir, force, step)
    return export
