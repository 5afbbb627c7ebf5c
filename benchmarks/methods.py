"""Train every quantization method on digits from one float model; write the tables of docs/methods.md.

    python benchmarks/methods.py                 # all rows (~10 min on 2 cores)
    python benchmarks/methods.py --epochs 5      # quick look (the doc then says so)

Per method: test accuracy of the float model, of the fake-quantized torch model and of the integer model
run by hwsim; weight storage; hwsim cycles and energy per image on the fpga and arm targets. Plus the
seed-002 ablation (LSQ, +POT, +POST, +ASQ, +POST+ASQ), W2A4 RAPQ vs round-to-nearest PTQ, and the POST
LUT vs split-accumulator comparison. Every number is measured in this run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import machine  # noqa: E402

from hwsim.cost.model import estimate  # noqa: E402
from hwsim.cost.targets import hardware_of  # noqa: E402
from hwsim.engine import Engine  # noqa: E402
from qexport.checkpoint import load_float_weights  # noqa: E402
from qexport.data import DIGITS_SHAPE, digits_split  # noqa: E402
from qexport.frontend.lower import lower  # noqa: E402
from qexport.ir.graph import Graph  # noqa: E402
from qexport.methods import run_method  # noqa: E402
from qexport.quant.config import QuantConfig  # noqa: E402
from qexport.reference import quantize_input  # noqa: E402
from qexport.targets import load_target  # noqa: E402
from qexport.train_cli import train_float  # noqa: E402
from qexport.training import accuracy, seed_everything  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"
FLOAT = Path(__file__).resolve().parents[1] / "models" / "digits_cnn_float.safetensors"
RESULTS = Path(__file__).resolve().parent / "results" / "methods.json"  # rows of earlier runs (--only refreshes)
TARGETS = ("fpga", "arm")
# (row label, method, weight bits, activation bits)
MAIN_ROWS = [
    ("LSQ", "lsq", 4, 4),
    ("POT", "pot", 4, 4),
    ("POST", "post", 4, 4),
    ("ASQ", "asq", 4, 4),
    ("POST+ASQ", "post_asq", 4, 4),
    ("APoT", "apot", 4, 4),
    ("codebook", "codebook", 4, 4),
    ("DDQ", "ddq", 4, 4),
    ("PQDE", "pqde", 4, 4),
    ("RAPQ (PTQ)", "rapq", 4, 4),
    ("RTN (PTQ)", "rtn", 4, 4),
    ("RAPQ W2A4 (PTQ)", "rapq", 2, 4),
    ("RTN W2A4 (PTQ)", "rtn", 2, 4),
]
ABLATION = ["LSQ", "POT", "POST", "ASQ", "POST+ASQ"]


@dataclass
class Row:
    label: str
    method: str
    bits: str
    fake_quant: float
    hwsim: float
    weight_bytes: int
    lut_bytes: int
    cycles: dict[str, int]
    energy_nj: dict[str, float]
    seconds: float


def hwsim_predictions(graph: Graph, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(argmax, integer logits) of the integer model run by hwsim."""
    name = graph.inputs[0]
    outputs, _ = Engine(graph).run({name: quantize_input(graph.tensors[name], x)})
    logits = outputs[graph.outputs[0]]
    return logits.argmax(axis=1), logits


def torch_integer_logits(model, graph: Graph, x: np.ndarray) -> np.ndarray:
    """The fake-quant model's logits on the output grid (integers)."""
    step = np.float32(graph.tensors[graph.outputs[0]].quant.scale)
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
    return np.rint(out / step).astype(np.int64)


def costs(graph: Graph) -> tuple[int, int, dict[str, int], dict[str, float]]:
    cycles, energy = {}, {}
    weight_bytes = lut_bytes = 0
    for target in TARGETS:
        result = estimate(graph, hardware_of(load_target(target)), batch=1)
        cycles[target], energy[target] = result.total_cycles, result.total("energy_total_pj") / 1e3
        weight_bytes, lut_bytes = result.weight_bytes, result.lut_bytes
    return weight_bytes, lut_bytes, cycles, energy


def measure(label, method, w_bits, a_bits, float_model, data, epochs, log) -> tuple[Row, object, Graph]:
    x_train, y_train, x_test, y_test = data
    seed_everything(1)
    config = QuantConfig(weight_bits=w_bits, act_bits=a_bits, first_bits=8, last_bits=8, pow2_scales=True)
    trained = run_method(method, float_model, config, (x_train, y_train), epochs=epochs, lr=2e-3, seed=1)
    graph = lower(trained.model, DIGITS_SHAPE, name=label)
    predictions, _ = hwsim_predictions(graph, x_test)
    weight_bytes, lut_bytes, cycles, energy = costs(graph)
    row = Row(
        label,
        method,
        f"W{w_bits}A{a_bits}",
        accuracy(trained.model, x_test, y_test),
        float((predictions == y_test).mean()),
        weight_bytes,
        lut_bytes,
        cycles,
        energy,
        trained.info["seconds"],
    )
    log(f"{label}: fake-quant {row.fake_quant:.2%}, hwsim {row.hwsim:.2%}, {row.seconds:.0f} s")
    return row, trained, graph


def post_comparison(model, x_test: np.ndarray, y_test: np.ndarray) -> list[str]:
    """LUT vs split accumulators for a POST model: error vs the float-exact torch model, and cost."""
    lines = [
        "| POST MAC | logits differing from torch | max error (output LSB) | hwsim accuracy | "
        "LUT bytes | fpga cycles | fpga energy (nJ) | ops per image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mac in ("lut", "split"):
        graph = lower(model, DIGITS_SHAPE, name=f"post_{mac}", post_mac=mac)
        predictions, logits = hwsim_predictions(graph, x_test)
        reference = torch_integer_logits(model, graph, x_test)
        error = np.abs(logits - reference)
        result = estimate(graph, hardware_of(load_target("fpga")), batch=1)
        ops = {kind: sum(getattr(c, kind) for c in result.counts) for kind in ("mults", "shifts", "lut_reads", "adds")}
        op_text = ", ".join(f"{kind} {value:,}" for kind, value in ops.items() if value)
        lines.append(
            f"| {mac} | {(error > 0).mean():.2%} | {int(error.max())} | {(predictions == y_test).mean():.2%} | "
            f"{result.lut_bytes} | {result.total_cycles:,} | "
            f"{result.total('energy_total_pj') / 1e3:.1f} | {op_text} |"
        )
    return lines


def write_doc(rows: list[Row], float_accuracy: float, post_lines: list[str], epochs: int, seconds: float) -> None:
    order = [label for label, *_ in MAIN_ROWS]
    rows = sorted(rows, key=lambda row: order.index(row.label))
    by_label = {row.label: row for row in rows}
    header = (
        "| method | bits | float | fake-quant | integer (hwsim) | weights (B) | LUT (B) | "
        + " | ".join(f"{t} cycles | {t} energy (nJ)" for t in TARGETS)
        + " | train wall (s) |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        per_target = " | ".join(f"{row.cycles[t]:,} | {row.energy_nj[t]:.1f}" for t in TARGETS)
        lines.append(
            f"| {row.label} | {row.bits} | {float_accuracy:.2%} | {row.fake_quant:.2%} | {row.hwsim:.2%} | "
            f"{row.weight_bytes:,} | {row.lut_bytes:,} | {per_target} | {row.seconds:.0f} |"
        )
    ablation = [
        "| seed-002 ablation | integer (hwsim) accuracy | fpga cycles | fpga energy (nJ) |",
        "|---|---|---|---|",
    ]
    for label in ABLATION:
        if label in by_label:
            row = by_label[label]
            ablation.append(f"| {label} | {row.hwsim:.2%} | {row.cycles['fpga']:,} | {row.energy_nj['fpga']:.1f} |")
    ptq = ["| W2A4 PTQ (no labels, 256 calibration images) | integer (hwsim) accuracy |", "|---|---|"]
    for label in ("RAPQ W2A4 (PTQ)", "RTN W2A4 (PTQ)"):
        if label in by_label:
            ptq.append(f"| {label} | {by_label[label].hwsim:.2%} |")
    body = "\n".join(
        [
            "<!-- methods:start -->",
            f"Written by `python benchmarks/methods.py --epochs {epochs}` ({seconds:.0f} s of training and "
            "measurement in total). Digits test split "
            "(360 images); every method starts from models/digits_cnn_float.safetensors; first/last layers "
            "8-bit; power-of-two "
            "activation/requant scales; cycles and energy are hwsim estimates per image (batch 1).",
            "",
            *lines,
            "",
            *ablation,
            "",
            *ptq,
            "",
            "POST: look-up table vs two accumulators (the POST row's model):",
            "",
            *post_lines,
            "",
            f"Machine: {machine()}",
            "<!-- methods:end -->",
        ]
    )
    empty = "# Quantization methods\n\n<!-- methods:start -->\n<!-- methods:end -->\n"
    text = DOC.read_text() if DOC.exists() else empty
    start, end = text.index("<!-- methods:start -->"), text.index("<!-- methods:end -->") + len("<!-- methods:end -->")
    DOC.write_text(text[:start] + body + text[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--only", nargs="*", help="row labels to run (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # two threads thrash when anything else runs on a 2-core machine
    started = time.perf_counter()
    if FLOAT.exists():  # the shipped float checkpoint every shipped method checkpoint started from
        float_model, _, _ = load_float_weights(FLOAT)
        float_accuracy = accuracy(float_model, *digits_split()[2:])
    else:
        float_model, float_accuracy = train_float()
    print(f"float accuracy {float_accuracy:.2%}")
    data = digits_split()
    saved = json.loads(RESULTS.read_text()) if args.only and RESULTS.exists() else {}
    if saved and saved.get("epochs") != args.epochs:
        raise SystemExit(f"{RESULTS} holds a run with --epochs {saved.get('epochs')}; rerun all rows")
    rows = {label: Row(**row) for label, row in saved.get("rows", {}).items()}
    post_lines, seconds = saved.get("post_lines", []), saved.get("seconds", 0.0)
    for label, method, w_bits, a_bits in MAIN_ROWS:
        if args.only and label not in args.only:
            continue
        row, trained, _ = measure(label, method, w_bits, a_bits, float_model, data, args.epochs, print)
        rows[label] = row
        if label == "POST":
            post_lines = post_comparison(trained.model, data[2], data[3])
    seconds += time.perf_counter() - started
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "epochs": args.epochs,
                "seconds": seconds,
                "post_lines": post_lines,
                "rows": {label: asdict(row) for label, row in rows.items()},
            },
            indent=1,
        )
    )
    write_doc(list(rows.values()), float_accuracy, post_lines, args.epochs, seconds)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
