"""Throughput of hwsim's functional simulation vs onnxruntime vs the numpy reference (ResNet-20, batch 64).

    python benchmarks/hwsim_throughput.py

All in one run, same machine, ResNet-20 (random weights, calibrated on synthetic data, power-of-two
steps) at W4A4 and W8A8 (8-bit first/last layers). onnxruntime runs the exported ONNX with its default
optimizations; hwsim runs its fast mode (oneDNN int8 convolutions + exact requantization, or exact
float GEMMs) and also counts every layer's operations. Numba compile time is measured separately
(cold cache, in a subprocess).
Also times `hwsim estimate` for the whole network after warm-up.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from modelgen import zoo_graph  # noqa: E402
from report import write_section  # noqa: E402

from hwsim import int8_conv  # noqa: E402
from hwsim.cost.model import estimate  # noqa: E402
from hwsim.cost.targets import hardware_of  # noqa: E402
from hwsim.engine import Engine  # noqa: E402
from qexport.export.onnx_qdq import export_onnx  # noqa: E402
from qexport.quant.config import QuantConfig  # noqa: E402
from qexport.reference import quantize_input, run_graph  # noqa: E402
from qexport.targets import load_target  # noqa: E402
from qexport.verify import onnxruntime_session  # noqa: E402

BATCH = 64
ROUNDS = 8  # each round runs every peer in a block of BLOCK runs; a block's first run is not timed
BLOCK = 6

COMPILE_SNIPPET = """
import sys, time
sys.path.insert(0, {tests!r})
from modelgen import zoo_graph
from qexport.quant.config import QuantConfig
from qexport.reference import quantize_input
from hwsim.engine import Engine
import numpy as np
_, graph, _ = zoo_graph("resnet20", QuantConfig(weight_bits=4, act_bits=4, pow2_scales=True))
x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
feeds = {{graph.inputs[0]: quantize_input(graph.tensors[graph.inputs[0]], x)}}
engine = Engine(graph)
start = time.perf_counter(); engine.run(feeds); print(time.perf_counter() - start)
"""


def blocked_seconds(actions: dict[str, object]) -> dict[str, float]:
    """Median seconds per run of each peer. Peers take turns in blocks of runs: the first run of a block
    absorbs the switch (caches, and onnxruntime's threads that keep spinning after its runs)."""
    times: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(ROUNDS):
        for name, action in actions.items():
            for index in range(BLOCK):
                start = time.perf_counter()
                action()
                if index:
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = [flag for flag in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if flag in flags]
    return ", ".join(wanted) or "none of avx2/avx512/vnni"


def first_run_seconds(cache_dir: str) -> float:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
    code = COMPILE_SNIPPET.format(tests=str(ROOT / "tests"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    rows = []
    for bits in (4, 8):
        config = QuantConfig(weight_bits=bits, act_bits=bits, pow2_scales=True)
        _, graph, _ = zoo_graph("resnet20", config)
        x = np.random.default_rng(0).standard_normal((BATCH, 3, 32, 32)).astype(np.float32)
        feeds = {graph.inputs[0]: quantize_input(graph.tensors[graph.inputs[0]], x)}
        session = onnxruntime_session(export_onnx(graph), optimize=True)
        feed_name = session.get_inputs()[0].name
        engines = {
            "hwsim": Engine(graph),
            "hwsim, 1 thread": Engine(graph, threads=1),
            "hwsim, float convolutions": Engine(graph, conv="float"),
            "hwsim, BLAS GEMMs": Engine(graph, conv="blas"),
        }
        for engine in engines.values():
            engine.run(feeds)  # compile and warm up
        actions = {"onnxruntime": lambda s=session, n=feed_name, x=x: s.run(None, {n: x})}
        actions |= {name: (lambda e=engine, f=feeds: e.run(f)) for name, engine in engines.items()}
        seconds = blocked_seconds(actions)
        start = time.perf_counter()
        reference = run_graph(graph, feeds)[graph.outputs[0]]  # one run of the whole batch: it takes seconds
        reference_ips = BATCH / (time.perf_counter() - start)
        outputs, _ = engines["hwsim"].run(feeds)
        if not np.array_equal(outputs[graph.outputs[0]], reference):
            raise SystemExit(f"W{bits}A{bits}: hwsim differs from the IR reference")
        ips = {name: BATCH / value for name, value in seconds.items()}
        rows.append((bits, ips, reference_ips))
        print(f"W{bits}A{bits}: " + ", ".join(f"{name} {value:,.0f}" for name, value in ips.items()) + " img/s")

    with tempfile.TemporaryDirectory() as cache:
        cold = first_run_seconds(cache)
        warm = first_run_seconds(cache)
    _, graph, _ = zoo_graph("resnet20", QuantConfig(pow2_scales=True))
    hw = hardware_of(load_target("fpga"))
    estimate(graph, hw)
    times = []
    for _ in range(20):
        start = time.perf_counter()
        estimate(graph, hw)
        times.append(time.perf_counter() - start)
    estimate_ms = statistics.median(times) * 1e3

    lines = [
        "## hwsim throughput: ResNet-20, batch 64 (`benchmarks/hwsim_throughput.py`)",
        "",
        f"Images per second, median of {ROUNDS} rounds x {BLOCK - 1} timed runs per peer (peers take turns in",
        "blocks; a block's first run is not timed), power-of-two steps: every path is bit-exact (the script",
        "checks hwsim's batch against the IR reference), and hwsim fills its per-layer counters (MACs, bytes,",
        "saturations, overflows) on every run.",
        "Target (issue 4): hwsim >= 0.5x onnxruntime.",
        "",
        "| weights/activations | onnxruntime (default optimizations) | hwsim (all cores) | ratio "
        "| hwsim, 1 thread | ratio | hwsim, float convolutions | ratio | hwsim, BLAS GEMMs | ratio "
        "| numpy reference (one run) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for bits, ips, reference_ips in rows:
        ort = ips["onnxruntime"]
        cells = [f"{ort:,.0f}"]
        for name in ("hwsim", "hwsim, 1 thread", "hwsim, float convolutions", "hwsim, BLAS GEMMs"):
            cells += [f"{ips[name]:,.0f}", f"{ips[name] / ort:.2f}x"]
        lines.append(f"| W{bits}A{bits} | " + " | ".join(cells) + f" | {reference_ips:.1f} |")
    lines += [
        "",
        f"CPU features: {cpu_flags()}. hwsim's oneDNN int8 path: "
        f"{'available (probe passed)' if int8_conv.available() else 'not available here (BLAS path only)'}.",
        f"Numba: first run with a cold cache {cold:.1f} s (compilation), with the on-disk cache {warm:.2f} s "
        "(2 images; the kernels are compiled with `cache=True`).",
        f"`hwsim estimate` (analytic, whole ResNet-20, fpga target) after warm-up: {estimate_ms:.2f} ms "
        "(target: under 10 ms).",
        "",
        "At 8 bits onnxruntime fuses the QDQ graph into QLinearConv (uint8 x int8 dot-product kernels with the",
        "requantization in the GEMM epilogue); at 4 bits it has no fused kernels and runs dequantized float",
        "convolutions. hwsim runs every 8-bit-or-narrower convolution on oneDNN's int8 kernels with float32",
        "accumulators (exact below 2**24, proven per layer) and requantizes in its own exact kernels, which",
        "also count saturations. 'float convolutions' (`conv=\"float\"`) is the path for other formats and for",
        "CPUs without exact int8 dot products; 'BLAS GEMMs' (`conv=\"blas\"`) the im2col path of earlier",
        "versions. See docs/hwsim.md.",
    ]
    body = "\n".join(lines)
    print(body)
    write_section("hwsim_throughput", body)


if __name__ == "__main__":
    main()
