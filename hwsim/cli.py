"""``hwsim run SPEC --inputs X.npy`` and ``hwsim estimate SPEC``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console

from hwsim.cost.model import estimate
from hwsim.cost.targets import hardware_of
from hwsim.engine import Engine, dequantize, quantize
from hwsim.report import layer_table, summary_lines, write_json, write_plot
from qexport.errors import QExportError
from qexport.ir.serialize import read_spec
from qexport.targets import load_target

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Bit-accurate simulation and cost estimates of qexport layer specs.",
)
console = Console()
errors = Console(stderr=True)

Target = Annotated[str, typer.Option(help="target name (fpga, arm, asic) or a .toml file")]
Array = Annotated[str | None, typer.Option(help="override the systolic array, e.g. 16x16")]
Dataflow = Annotated[str | None, typer.Option(help="override the dataflow: ws, os or is")]
JsonOut = Annotated[Path | None, typer.Option("--json", help="write the report as JSON")]
PlotOut = Annotated[Path | None, typer.Option("--plot", help="write a PNG per-layer breakdown")]


def _fail(error: Exception) -> None:
    errors.print(f"error: {error}", style="red", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _load_inputs(path: Path, graph) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise QExportError(f"{path}: cannot read a .npy array ({error})") from None
    expected = tuple(graph.tensors[graph.inputs[0]].shape[1:])
    if array.ndim == len(expected):
        array = array[None]
    if tuple(array.shape[1:]) != expected:
        raise QExportError(f"{path}: inputs of shape {array.shape} do not match the model input (N, {expected})")
    return array


@app.command()
def run(
    spec: Annotated[Path, typer.Argument(help="layer_spec.json written by qexport")],
    inputs: Annotated[Path, typer.Option(help=".npy of float32 images (N, C, H, W), or integers already quantized")],
    out: Annotated[
        Path | None, typer.Option(help="write the float32 outputs, as the exported ONNX returns them")
    ] = None,
    target: Target = "fpga",
    array: Array = None,
    dataflow: Dataflow = None,
    json_out: JsonOut = None,
    plot: PlotOut = None,
    mode: Annotated[
        str, typer.Option(help="fast (torch convolutions / BLAS where provably exact) or faithful (MAC units)")
    ] = "fast",
    codebook_style: Annotated[str, typer.Option(help="codebook MACs: lut or per_level")] = "lut",
    threads: Annotated[int | None, typer.Option(help="worker threads (default: all cores)")] = None,
    conv: Annotated[
        str, typer.Option(help="fast mode convolutions: auto (oneDNN int8, then float conv, then BLAS), float, blas")
    ] = "auto",
) -> None:
    """Execute the integer network bit-accurately and report cycles, memory, ops and energy."""
    try:
        graph = read_spec(spec)
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
    except QExportError as error:
        _fail(error)
    console.print(layer_table(result, f"hwsim run: {spec} on {hw.name}"))
    for line in summary_lines(result):
        console.print(line, highlight=False)
    console.print(
        f"simulated {len(data)} images in {seconds:.3f} s ({len(data) / seconds:.1f} images/s; a first run, it "
        f"includes loading the compiled kernels) after {setup:.3f} s of setup (weights, exactness probes)",
        highlight=False,
    )
    if out is not None:
        np.save(out, dequantize(graph, graph.outputs[0], outputs[graph.outputs[0]]))
    if json_out is not None:
        write_json(result, json_out, {"simulation_seconds": seconds, "setup_seconds": setup})
    if plot is not None:
        write_plot(result, plot)


@app.command(name="estimate")
def estimate_command(
    spec: Annotated[Path, typer.Argument(help="layer_spec.json written by qexport")],
    target: Target = "fpga",
    array: Array = None,
    dataflow: Dataflow = None,
    batch: Annotated[int, typer.Option(min=1, help="images per inference")] = 1,
    json_out: JsonOut = None,
    plot: PlotOut = None,
) -> None:
    """Analytic cost report (no data): cycles, memory, op counts and energy per layer."""
    try:
        graph = read_spec(spec)
        hw = hardware_of(load_target(target)).with_overrides(array, dataflow)
        result = estimate(graph, hw, batch=batch)
    except QExportError as error:
        _fail(error)
    console.print(layer_table(result, f"hwsim estimate: {spec} on {hw.name}"))
    for line in summary_lines(result):
        console.print(line, highlight=False)
    if json_out is not None:
        write_json(result, json_out)
    if plot is not None:
        write_plot(result, plot)


__all__ = ["app"]
