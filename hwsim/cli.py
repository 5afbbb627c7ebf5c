"""``hwsim run SPEC --inputs X.npy`` and ``hwsim estimate SPEC``."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console

from hwsim.cost.model import estimate
from hwsim.cost.resources import resource_dicts, resource_lines
from hwsim.cost.targets import hardware_of
from hwsim.engine import Engine, dequantize, quantize
from hwsim.report import layer_table, summary_lines, write_json, write_plot
from qexport.cli_support import entry_point
from qexport.errors import QExportError
from qexport.frontend.onnx_import import read_graph
from qexport.ir.graph import Graph
from qexport.outputs import check_output_file, staged_files
from qexport.targets import load_target

NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}

app = typer.Typer(
    name="hwsim",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Bit-accurate simulation and cost estimates of qexport layer specs.",
)
console = Console()

Target = Annotated[str, typer.Option(help="target name (fpga, arm, asic) or a .toml file")]
Array = Annotated[str | None, typer.Option(help="override the systolic array, e.g. 16x16")]
Dataflow = Annotated[str | None, typer.Option(help="override the dataflow: ws, os or is")]
MemoryModel = Annotated[
    str | None, typer.Option(help="stall/DRAM model: hwsim (ideal reuse) or scalesim (SCALE-Sim 3.0.0's buffers)")
]
JsonOut = Annotated[Path | None, typer.Option("--json", help="write the report as JSON")]
PlotOut = Annotated[Path | None, typer.Option("--plot", help="write a PNG per-layer breakdown")]
Force = Annotated[bool, typer.Option("--force", help="replace output files that already exist")]


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a .npy header, checked against the file's size before any data is read."""
    try:
        with path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = NPY_HEADER_READERS.get(version)
            if read_header is None:
                raise QExportError(f"{path}: not a .npy array (format version {version}, expected 1.0 or 2.0)")
            shape, _, dtype = read_header(handle)
            data_bytes = path.stat().st_size - handle.tell()
    except FileNotFoundError:
        raise QExportError(f"{path}: no such inputs file") from None
    except IsADirectoryError:
        raise QExportError(f"{path}: is a directory, expected a .npy file") from None
    except OSError as error:
        raise QExportError(f"{path}: cannot read ({error.strerror})") from None
    except (ValueError, SyntaxError, TypeError):
        kind = "an .npz archive; save one array with np.save" if path.read_bytes()[:4] == b"PK\x03\x04" else "corrupt"
        raise QExportError(f"{path}: not a .npy array ({kind})") from None
    if dtype.hasobject or dtype.kind not in "iuf":
        raise QExportError(f"{path}: inputs of dtype {dtype} (expected float or integer numbers)")
    if math.prod(shape) * dtype.itemsize != data_bytes:
        raise QExportError(
            f"{path}: header declares shape {shape} of {dtype} ({math.prod(shape) * dtype.itemsize} bytes) "
            f"but the file holds {data_bytes} bytes of data"
        )
    return shape, dtype


def _load_inputs(path: Path, graph: Graph) -> np.ndarray:
    """The batch in an .npy file, validated: shape, dtype, finite values, integers inside the input type."""
    shape, dtype = _npy_header(path)
    info = graph.tensors[graph.inputs[0]]
    expected = tuple(info.shape[1:])
    if len(shape) == len(expected):
        shape = (1, *shape)
    if tuple(shape[1:]) != expected:
        dims = ", ".join(map(str, expected))
        raise QExportError(f"{path}: inputs of shape {shape} do not match the model input (N, {dims})")
    if shape[0] == 0:
        raise QExportError(f"{path}: empty batch (0 inputs)")
    array = np.load(path, allow_pickle=False).reshape(shape)
    if dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(array))
        if bad.size:
            raise QExportError(f"{path}: {bad.size} NaN or infinite input values (first at flat index {bad[0]})")
    elif array.min() < info.dtype.min or array.max() > info.dtype.max:
        raise QExportError(
            f"{path}: integer inputs in [{array.min()}, {array.max()}] lie outside the input type "
            f"{info.dtype.name} [{info.dtype.min}, {info.dtype.max}] (pass floats to have them quantized)"
        )
    return array


def _check_outputs(force: bool, **paths: Path | None) -> None:
    for option, path in paths.items():
        if path is not None:
            check_output_file(path, force, f"--{option}")


def _write_outputs(estimate_result, json_out: Path | None, plot: Path | None, extra: dict | None = None, **arrays):
    """Write every requested output through temporaries; all appear together, or none."""
    with staged_files() as staged:
        for path, values in arrays.values():
            if path is not None:
                with staged.path_for(path).open("wb") as handle:
                    np.save(handle, values)
        if json_out is not None:
            write_json(estimate_result, staged.path_for(json_out), extra)
        if plot is not None:
            write_plot(estimate_result, staged.path_for(plot))


@app.command()
def run(
    spec: Annotated[Path, typer.Argument(help="layer_spec.json written by qexport, or a quantized ONNX model")],
    inputs: Annotated[Path, typer.Option(help=".npy of float32 images (N, C, H, W), or integers already quantized")],
    out: Annotated[
        Path | None, typer.Option(help="write the float32 outputs (.npy), as the exported ONNX returns them")
    ] = None,
    target: Target = "fpga",
    array: Array = None,
    dataflow: Dataflow = None,
    json_out: JsonOut = None,
    plot: PlotOut = None,
    force: Force = False,
    mode: Annotated[
        str, typer.Option(help="fast (torch convolutions / BLAS where provably exact) or faithful (MAC units)")
    ] = "fast",
    codebook_style: Annotated[str, typer.Option(help="codebook MACs: lut or per_level")] = "lut",
    threads: Annotated[int | None, typer.Option(min=1, max=1024, help="worker threads (default: all cores)")] = None,
    conv: Annotated[
        str,
        typer.Option(
            help="fast mode convolutions: auto (C kernels for 1x1/depthwise, else oneDNN int8, float conv, BLAS), "
            "onednn, float, blas"
        ),
    ] = "auto",
) -> None:
    """Execute the integer network bit-accurately and report cycles, memory, ops and energy."""
    _check_outputs(force, out=out, json=json_out, plot=plot)
    graph = read_graph(spec)
    hw = hardware_of(load_target(target)).with_overrides(array, dataflow)
    data = _load_inputs(inputs, graph)
    name = graph.inputs[0]
    feeds = {name: data.astype(np.int64) if np.issubdtype(data.dtype, np.integer) else quantize(graph, name, data)}
    started = time.perf_counter()
    engine = Engine(graph, mode=mode, codebook_style=codebook_style, threads=threads, conv=conv)
    setup = time.perf_counter() - started
    outputs, counts = engine.run(feeds)
    seconds = time.perf_counter() - started - setup
    result = estimate(graph, hw, batch=len(data), counts=counts, codebook_style=codebook_style)
    logits = dequantize(graph, graph.outputs[0], outputs[graph.outputs[0]])
    _write_outputs(result, json_out, plot, {"simulation_seconds": seconds, "setup_seconds": setup}, out=(out, logits))
    console.print(layer_table(result, f"hwsim run: {spec} on {hw.name}"))
    for line in summary_lines(result):
        console.print(line, highlight=False)
    console.print(
        f"simulated {len(data)} images in {seconds:.3f} s ({len(data) / seconds:.1f} images/s; a first run, it "
        f"includes loading the compiled kernels) after {setup:.3f} s of setup (weights, exactness probes)",
        highlight=False,
    )


@app.command(name="estimate")
def estimate_command(
    spec: Annotated[Path, typer.Argument(help="layer_spec.json written by qexport, or a quantized ONNX model")],
    target: Target = "fpga",
    array: Array = None,
    dataflow: Dataflow = None,
    memory_model: MemoryModel = None,
    batch: Annotated[int, typer.Option(min=1, max=1_000_000, help="images per inference")] = 1,
    json_out: JsonOut = None,
    plot: PlotOut = None,
    force: Force = False,
) -> None:
    """Analytic cost report (no data): cycles, memory, op counts and energy per layer."""
    _check_outputs(force, json=json_out, plot=plot)
    graph = read_graph(spec)
    hw = hardware_of(load_target(target)).with_overrides(array, dataflow, memory_model)
    result = estimate(graph, hw, batch=batch)
    _write_outputs(result, json_out, plot, {"resources": resource_dicts(graph, hw)})
    console.print(layer_table(result, f"hwsim estimate: {spec} on {hw.name}"))
    for line in summary_lines(result):
        console.print(line, highlight=False)
    for line in resource_lines(graph, hw):  # the whole array's LUT/FF/DSP (hwsim/cost/resources.json)
        console.print(line, highlight=False)


main = entry_point(app)

__all__ = ["app", "main"]
