"""Cycle agreement RTL vs hwsim: every conv/linear layer of the shipped checkpoints on ws arrays, under Icarus.

``python benchmarks/rtl_cycles.py [--arrays 16x16,8x8] [--no-write]`` runs each layer's testbench
(qexport.export.rtl_layer, one digits test image through the IR reference), checks the accumulator
against the reference and compares the measured cycles (first input to last result) with
``hwsim.cost.systolic.compute_cycles``; writes the table into docs/rtl.md.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from hwsim.cost.model import conv_shape, estimate
from hwsim.cost.systolic import compute_cycles, fold_plan
from hwsim.cost.targets import hardware_of
from qexport.data import digits_split
from qexport.export.rtl_layer import read_results, write_layer
from qexport.ir.ops import Op
from qexport.pipeline import lower_checkpoint
from qexport.reference.executor import quantize_input, run_graph
from qexport.targets import load_target

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "rtl.md"
BEGIN, END = "<!-- rtl-cycles:begin -->", "<!-- rtl-cycles:end -->"
CHECKPOINTS = (
    "digits_cnn_w4a4",
    "digits_cnn_w4a4_pot",
    "digits_cnn_w4a4_post",
    "digits_cnn_w4a4_apot",
    "digits_cnn_w4a4_codebook",
)


def simulate(files: list[Path], top: str, work: Path) -> None:
    sources = [str(p) for p in files if p.suffix == ".v"]
    subprocess.run(["iverilog", "-g2005", "-Wall", "-s", top, "-o", "sim.vvp", *sources], cwd=work, check=True)
    subprocess.run(["vvp", "-n", "sim.vvp"], cwd=work, check=True, capture_output=True)


def rows_for(checkpoint: str, arrays: list[tuple[int, int]]) -> list[str]:
    graph = lower_checkpoint(ROOT / "models" / f"{checkpoint}.ckpt", load_target("fpga")).graph
    info = graph.tensors[graph.inputs[0]]
    image = digits_split()[2][:1].reshape(1, *info.shape[1:])
    values = run_graph(graph, {graph.inputs[0]: quantize_input(info, image)}, keep_all=True)
    lines = []
    for node in graph.nodes:
        if node.op not in (Op.CONV2D, Op.LINEAR):
            continue
        for rows, cols in arrays:
            hw = hardware_of(load_target("fpga")).with_overrides(array=f"{rows}x{cols}", dataflow="ws")
            reported = next(c.compute_cycles for c in estimate(graph, hw).costs if c.name == node.name)
            with tempfile.TemporaryDirectory() as tmp:
                started = time.perf_counter()
                layer = write_layer(graph, node, values[node.inputs[0]], rows, cols, Path(tmp))
                simulate(layer.files, layer.testbench, Path(tmp))
                result = read_results(layer, Path(tmp) / "out.txt")
                seconds = time.perf_counter() - started
            acc = values[node.outputs[0]]
            ref = acc.reshape(acc.shape[0], acc.shape[1], -1).transpose(0, 2, 1).reshape(-1, acc.shape[1])
            shape = conv_shape(graph, node)
            plan = fold_plan(shape, rows, cols, "ws")
            model = compute_cycles(shape, rows, cols, "ws")
            measured = result.last_output - result.first_input
            exact = "yes" if np.array_equal(result.acc, ref) else "**NO**"
            lines.append(
                f"| {checkpoint} | {node.name} | {layer.spec.style} | {rows}x{cols} | {shape.window} x "
                f"{shape.filters} x {shape.ofmap_pixels} | {plan.folds} | {measured:,} | {model:,} "
                f"| {measured + 1:,} | "
                f"{reported:,} | {'yes' if measured == model and measured + 1 == reported else '**NO**'} | {exact} "
                f"| {seconds:.1f} |"
            )
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arrays", default="16x16,8x8,4x6")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    arrays = [tuple(int(v) for v in text.split("x")) for text in args.arrays.split(",")]
    header = [
        "| checkpoint | layer | PE | array | T x Sc x Sr | folds | RTL: last result at cycle "
        "| systolic.compute_cycles | RTL cycles (first input to last result) | hwsim estimate compute cycles "
        "| agree | exact | sim s |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    lines = header + [line for checkpoint in CHECKPOINTS for line in rows_for(checkpoint, arrays)]
    if not args.no_write:
        block = f"{BEGIN}\n" + "\n".join(lines) + f"\n{END}"
        doc = DOC.read_text()
        DOC.write_text(re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, doc, flags=re.S))


if __name__ == "__main__":
    main()
