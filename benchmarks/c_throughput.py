"""Throughput of the generated C library vs onnxruntime, and the Cortex-M4 code/data size of every checkpoint.

    python benchmarks/c_throughput.py

Throughput: digits CNN (W8A8 and W4A4) and ResNet-20 (W8A8), random weights calibrated on synthetic
data, power-of-two steps. The C program (`make model`, CFLAGS below, one sample per qxm_run call, file
I/O and process start included) runs the same integer images as onnxruntime (the exported QDQ ONNX,
default optimizations, batches of 64); the C outputs are checked against the IR reference. Two pairs
of peers: one core each (one C process, onnxruntime with one intra-op thread) and every core (one C
process per core on its share of the images, onnxruntime with its default thread pool).
Sizes: `make cortex-m4` (arm-none-eabi-gcc -Os, no libc) for each models/*.ckpt, when installed.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from modelgen import zoo_graph  # noqa: E402
from report import write_section  # noqa: E402

from qexport.export.c_code import write_c  # noqa: E402
from qexport.export.onnx_qdq import export_onnx  # noqa: E402
from qexport.pipeline import lower_checkpoint  # noqa: E402
from qexport.quant.config import QuantConfig  # noqa: E402
from qexport.reference import dequantize_output, quantize_input, run_graph  # noqa: E402
from qexport.targets import load_target  # noqa: E402

CFLAGS = "-O3 -march=native"
ROUNDS = 5
CASES = [("digits_cnn", 8, 16384), ("digits_cnn", 4, 16384), ("resnet20", 8, 1024)]
CORES = os.cpu_count() or 1


def c_program(graph, images: np.ndarray, work: Path) -> list[list[str]]:
    """Build the C model, check its outputs against the IR reference; the commands that run all images
    in one process, and in CORES processes (one input file each)."""
    write_c(graph, work)
    c_dir = work / "c"
    subprocess.run(["make", "-C", str(c_dir), "model", f"CFLAGS={CFLAGS}"], check=True, capture_output=True)
    feeds = quantize_input(graph.tensors[graph.inputs[0]], images).astype("<i4")
    feeds.tofile(c_dir / "in.bin")
    cmd = [str(c_dir / "model"), "-q", str(c_dir / "in.bin"), str(c_dir / "out.bin")]
    subprocess.run(cmd, check=True)
    got = np.fromfile(c_dir / "out.bin", dtype="<i4").reshape(len(images), -1)
    want = run_graph(graph, {graph.inputs[0]: feeds[:64]})[graph.outputs[0]]
    if not np.array_equal(got[:64], want.reshape(64, -1)):
        raise SystemExit("C output differs from the IR reference")
    shards = []
    for index, part in enumerate(np.array_split(feeds, CORES)):
        part.tofile(c_dir / f"in{index}.bin")
        shards.append([str(c_dir / "model"), "-q", str(c_dir / f"in{index}.bin"), str(c_dir / f"out{index}.bin")])
    return [cmd], shards


def c_seconds(cmds: list[list[str]]) -> float:
    """Wall time of the commands run side by side."""
    start = time.perf_counter()
    running = [subprocess.Popen(cmd) for cmd in cmds]
    if any(proc.wait() != 0 for proc in running):
        raise SystemExit(f"C model failed: {cmds[0]}")
    return time.perf_counter() - start


def ort_runner(graph, images: np.ndarray, threads: int):
    """A function running the exported QDQ ONNX (default optimizations, ``threads`` intra-op threads, 0 = its
    default pool) on every image in batches of 64."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(export_onnx(graph).SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    info = graph.tensors[graph.inputs[0]]
    batches = [images[i : i + 64] for i in range(0, len(images), 64)]
    # the same quantized values, as floats on the input grid (what QuantizeLinear maps back exactly)
    floats = [dequantize_output(info, quantize_input(info, b)) for b in batches]
    session.run(None, {name: floats[0]})

    def seconds() -> float:
        start = time.perf_counter()
        for batch in floats:
            session.run(None, {name: batch})
        return time.perf_counter() - start

    return seconds


def throughput_table(work: Path) -> str:
    """Per pair of peers (one core; every core) C and onnxruntime timed alternately, ROUNDS times each:
    medians and the ratio of every round."""
    rows = [
        "| model | weights/activations | cores | C library | onnxruntime (batch 64) | ratio of medians "
        "| ratio per round |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, bits, count in CASES:
        _, graph, _ = zoo_graph(name, QuantConfig(weight_bits=bits, act_bits=bits, pow2_scales=True))
        shape = graph.tensors[graph.inputs[0]].shape[1:]
        images = np.random.default_rng(0).standard_normal((count, *shape)).astype(np.float32)
        one, every = c_program(graph, images, work / f"{name}{bits}")
        peers = [(1, one, ort_runner(graph, images, 1)), (CORES, every, ort_runner(graph, images, 0))]
        times: dict[int, tuple[list[float], list[float]]] = {cores: ([], []) for cores, _, _ in peers}
        for _ in range(ROUNDS):
            for cores, cmds, ort_seconds in peers:
                times[cores][0].append(c_seconds(cmds))
                times[cores][1].append(ort_seconds())
        for cores, _, _ in peers:
            c_times, ort_times = times[cores]
            c_rate, ort_rate = count / statistics.median(c_times), count / statistics.median(ort_times)
            per_round = ", ".join(f"{o / c:.2f}" for c, o in zip(c_times, ort_times, strict=True))
            rows.append(
                f"| {name} | W{bits}A{bits} | {cores} | {c_rate:,.0f} | {ort_rate:,.0f} | {c_rate / ort_rate:.2f}x "
                f"| {per_round} |"
            )
            print(rows[-1], flush=True)
    return "\n".join(rows)


def size_table(work: Path) -> str:
    if not shutil.which("arm-none-eabi-gcc"):
        return "arm-none-eabi-gcc not installed: no Cortex-M4 sizes."
    rows = [
        "| checkpoint | text (code + const weights) | data | bss (RAM) | of which arena | of which scratch |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for path in sorted((ROOT / "models").glob("*.ckpt")):
        graph = lower_checkpoint(path, load_target("fpga")).graph
        write_c(graph, work / path.stem)
        c_dir = work / path.stem / "c"
        out = subprocess.run(["make", "-C", str(c_dir), "cortex-m4"], check=True, capture_output=True)
        text, data, bss = re.search(
            r"^\s*(\d+)\s+(\d+)\s+(\d+)", out.stdout.decode().split("filename")[-1], re.M
        ).groups()
        header = (c_dir / "model.h").read_text()
        arena, scratch = (
            int(re.search(rf"#define QXM_{key}_BYTES (\d+)", header).group(1)) for key in ("ARENA", "SCRATCH")
        )
        rows.append(f"| {path.name} | {int(text):,} | {int(data):,} | {int(bss):,} | {arena:,} | {scratch:,} |")
    return "\n".join(rows)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        throughput = throughput_table(work)
        sizes = size_table(work)
    gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    arm = shutil.which("arm-none-eabi-gcc")
    arm_version = (
        subprocess.run([arm, "--version"], capture_output=True, text=True).stdout.splitlines()[0] if arm else "-"
    )
    body = (
        "## C library throughput (`benchmarks/c_throughput.py`)\n\n"
        f"Images per second, median of {ROUNDS} rounds (C and onnxruntime timed alternately, wall clock);\n"
        f"C built with `make model CFLAGS='{CFLAGS}'` ({gcc}), one sample per `qxm_run`, file I/O and\n"
        "process start included, outputs checked against the IR reference. onnxruntime runs the exported\n"
        "QDQ ONNX with default optimizations (its fused QLinearConv graph) on batches of 64. Two pairs of\n"
        "peers: `cores` 1 is one C process against onnxruntime with one intra-op thread; `cores` "
        f"{CORES} is one C\nprocess per core, each on its share of the images (the library is single-threaded:"
        " a static arena\nper process), against onnxruntime's default thread pool. The last column is the"
        " C/onnxruntime ratio\nof each round.\n"
        "Target (issue 11): >= 0.5x onnxruntime's fused int8 graph at W8A8.\n\n"
        f"{throughput}\n\n"
        "conv2d / linear layers with byte activations and int8-range weights run as uint8 x int8 dot\n"
        "products; convolutions with at least 8 outputs per group use a blocked weight layout (16 outputs x\n"
        "4 K values per 64-byte group, the vpdpbusd shape: AVX-512 VNNI or AVX-VNNI intrinsics when the\n"
        "compiler targets them, portable C otherwise) and read a padded channels-last copy of the input in\n"
        "place; requantization and adds are vectorized loops (32-bit lanes where the exporter's bounds allow).\n\n"
        f"Cortex-M4 library image per checkpoint (`make cortex-m4`: {arm_version}, -Os, no libc, no heap):\n\n"
        f"{sizes}\n"
    )
    write_section("c_throughput", body)
    print(body)


if __name__ == "__main__":
    main()
