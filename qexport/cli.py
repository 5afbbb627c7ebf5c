"""``qexport SOURCE --target NAME [-o OUTDIR] [--force] [--verify]``: errors are one line, exit code 2."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from qexport.cli_support import entry_point, print_error
from qexport.data import verification_data
from qexport.export.rtl_export import array_of
from qexport.outputs import check_export_directory
from qexport.pipeline import lower_source, write_export
from qexport.targets import available_targets, load_target, with_native_bits, with_post_mac
from qexport.verify import Verification, verify
from qexport.verify_onnx import check_inputs_option, verify_export
from qexport.verify_onnx import import_verification_table as import_table

app = typer.Typer(name="qexport", add_completion=False, pretty_exceptions_enable=False)
console = Console(stderr=True)
EXIT_VERIFY_FAILED = 1


def verification_table(result: Verification) -> Table:
    mode = "bit-exact required (all scales are powers of two)" if result.exact_expected else "<= 1 LSB per layer"
    table = Table(title=f"Verification on {result.samples} samples vs the IR reference ({mode})")
    for column in ("path", "top-1 agreement", "max |error| (LSB)", "bit-exact outputs", "accuracy", "status"):
        table.add_column(column, justify="left" if column == "path" else "right")
    accuracy = "-" if result.reference_accuracy is None else f"{result.reference_accuracy:.2%}"
    table.add_row("IR reference", "100.00%", "0", "all", accuracy, "oracle")
    for path in result.paths:
        if path.skipped is not None or path.error is not None:  # a board path that did not run
            table.add_row(path.path, "-", "-", "-", "-", path.status)
            continue
        table.add_row(
            path.path,
            f"{path.top1_agreement:.2%}",
            str(path.max_error_lsb),
            f"{path.bit_exact}/{path.total}",
            "-" if path.accuracy is None else f"{path.accuracy:.2%}",
            path.status,
        )
    table.caption = "layer by layer (each layer fed the path's own inputs): " + "; ".join(
        f"{path} max {worst} LSB, mismatch rate {rate:.2e}" for path, (worst, rate) in result.layerwise.items()
    )
    return table


@app.command()
def main(
    source: Annotated[Path, typer.Argument(help="QAT checkpoint (.ckpt, safetensors) or ONNX model to export")],
    target: Annotated[
        str, typer.Option(help=f"target name ({', '.join(available_targets())}) or a .toml file")
    ] = "fpga",
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="output directory [<source stem>_<target>]")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="replace the files of a previous export in OUTDIR (others are kept)")
    ] = False,
    verify_outputs: Annotated[
        bool, typer.Option("--verify", help="compare torch, IR reference, onnxruntime, hwsim, C and HLS csim")
    ] = False,
    samples: Annotated[int, typer.Option(min=1, max=100_000, help="number of verification samples")] = 360,
    onnx_native_bits: Annotated[
        str | None, typer.Option(help="ONNX integer widths to use natively, e.g. 2,4,8,16 [from the target]")
    ] = None,
    post_mac: Annotated[
        str | None, typer.Option(help="powers-of-sqrt(2) weights: lut (shift + LUT) or split [from the target]")
    ] = None,
    calibrate: Annotated[
        Path | None, typer.Option(help="float ONNX model: .npy calibration inputs (N, C, H, W) to quantize it with")
    ] = None,
    inputs: Annotated[
        Path | None, typer.Option(help="ONNX model: .npy verification inputs (N, C, H, W) [digits or synthetic]")
    ] = None,
    rtl: Annotated[
        bool, typer.Option("--rtl", help="also write rtl/: Verilog PEs, array, testbench and vectors per layer")
    ] = False,
    qonnx: Annotated[
        bool, typer.Option("--qonnx", help="also write model.qonnx.onnx (QONNX Quant graph, for FINN and hls4ml)")
    ] = False,
) -> None:
    """Lower a QAT checkpoint or a quantized ONNX model (docs/interop.md) to the integer IR and export it."""
    target_spec = load_target(target)
    if onnx_native_bits is not None:
        target_spec = with_native_bits(target_spec, onnx_native_bits)
    if post_mac is not None:
        target_spec = with_post_mac(target_spec, post_mac)
    rtl_array = array_of(target_spec) if rtl else None
    out_dir = output or Path(f"{source.stem}_{target_spec.name}")
    check_export_directory(out_dir, force)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("export", total=5)

        def step(name: str) -> None:
            progress.update(task, description=name, advance=1 if progress.tasks[task].description != "export" else 0)

        export = lower_source(source, target_spec, step, calibrate)
        export.rtl_array = rtl_array
        if qonnx:
            from qexport.export.qonnx_export import export_qonnx

            export.qonnx_model = export_qonnx(export.graph)
        result = None
        check_inputs_option(export, inputs, verify_outputs)
        if verify_outputs and export.checkpoint is None:  # an imported ONNX model (qexport.verify_onnx)
            check = progress.add_task("verify: reference, hwsim, onnxruntime", total=None)
            result = verify_export(export, samples, lambda n: progress.advance(check, n), inputs)
        elif verify_outputs:
            inputs, labels = verification_data(
                export.checkpoint.info.get("dataset", "synthetic"), export.checkpoint.input_shape, samples
            )
            boards = export.board_code
            check = progress.add_task(
                f"verify: reference, torch, onnxruntime, hwsim{''.join(', ' + b for b in boards)}",
                total=(4 + len(boards)) * len(inputs),
            )
            result = verify(
                export.graph,
                export.checkpoint.model,
                export.model,
                inputs,
                labels,
                progress=lambda n: progress.advance(check, n),
                boards=boards,
            )
            export.report["verification"] = result.to_dict()
        write_export(export, out_dir, force, step)
        progress.update(task, completed=5)
    console.print(
        f"wrote {out_dir}/ ({', '.join(sorted({name.split('/')[0] for name in export.report['files']}))}) in "
        f"{export.report['lower_seconds'] + export.report['write_seconds']:.2f} s"
    )
    if result is not None:
        imported = export.checkpoint is None
        Console().print(import_table(result, export.report["onnx_format"]) if imported else verification_table(result))
        if not result.ok:
            print_error("integer paths disagree beyond the documented bound")
            raise typer.Exit(EXIT_VERIFY_FAILED)


run = entry_point(app)
