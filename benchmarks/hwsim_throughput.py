"""Throughput of hwsim's functional simulation vs onnxruntime (ResNet-20 and MobileNetV2, batch 64).

    python benchmarks/hwsim_throughput.py [--rounds N]

All in one run, same machine: ResNet-20 and MobileNetV2 (random weights, calibrated on synthetic data)
at W8A8 and W4A4 (8-bit first/last layers), each with power-of-two and with free (LSQ) scales: eight
ratios. onnxruntime runs the exported ONNX with its default optimizations. At 4 bits the default export
uses int4 types, which onnxruntime runs dequantized in float; its best form of the same model is the
same 4-bit values in int8 containers (``native_bits=(8, 16)``), where its fused QLinearConv applies.
The ratio's peer is the faster onnxruntime form. hwsim runs its default engine (fast mode, all cores),
and the same engine without its C kernels (``conv="onednn"``) as a second column,
and fills every layer's counters (MACs, bytes, saturations, overflows) on every run; its output on the
whole batch is checked against the IR reference. Numba compile time is measured separately (cold
cache, in a subprocess), and `hwsim estimate` for the whole network after warm-up.
"""

from __future__ import annotations

import argparse
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
ROUNDS = 6  # each round runs every peer in a block of BLOCK runs; a block's first run is not timed
BLOCK = 5
PAUSE = 0.2  # seconds between blocks
MODELS = ("resnet20", "mobilenetv2")
CONFIGS = ((8, True), (8, False), (4, True), (4, False))  # (bits, power-of-two scales)
CONTAINER_BITS = (8, 16)  # 4-bit values stored in int8 containers: onnxruntime's fused form
MODEL_NAMES = {"resnet20": "ResNet-20", "mobilenetv2": "MobileNetV2"}

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


def blocked_seconds(actions: dict[str, object], rounds: int) -> dict[str, float]:
    """Median seconds per run of each peer. Peers take turns in blocks of runs: the first run of a block
    absorbs the switch (caches), a pause before it lets onnxruntime's threads stop spinning after its
    runs, and the order rotates every round, so no peer always follows the same one (without the pause,
    in a fixed order, the engine that ran right after onnxruntime measured ~10% below its identical twin)."""
    times: dict[str, list[float]] = {name: [] for name in actions}
    names = list(actions)
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            action = actions[name]
            time.sleep(PAUSE)  # let the last peer's threads go idle (onnxruntime's spin after a run)
            for index in range(BLOCK):
                start = time.perf_counter()
                action()
                if index:
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")


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


def measure(model: str, bits: int, pow2: bool, rounds: int) -> dict:
    """One configuration: images/s of every peer, MACs per image, exactness checked."""
    _, graph, _ = zoo_graph(model, QuantConfig(weight_bits=bits, act_bits=bits, pow2_scales=pow2))
    x = np.random.default_rng(0).standard_normal((BATCH, 3, 32, 32)).astype(np.float32)
    feeds = {graph.inputs[0]: quantize_input(graph.tensors[graph.inputs[0]], x)}
    sessions = {"onnxruntime": onnxruntime_session(export_onnx(graph), optimize=True)}
    if bits < 8:
        sessions["onnxruntime, int8 containers"] = onnxruntime_session(
            export_onnx(graph, native_bits=CONTAINER_BITS), optimize=True
        )
    engine = Engine(graph)
    onednn = Engine(graph, conv="onednn")  # the same engine without hwsim's C kernels: their effect
    expected = run_graph(graph, feeds)[graph.outputs[0]]
    for name, peer in (("hwsim", engine), ("hwsim, oneDNN path", onednn)):
        outputs, counts = peer.run(feeds)  # compile and warm up
        if not np.array_equal(outputs[graph.outputs[0]], expected):
            raise SystemExit(f"{model} W{bits}A{bits}: {name} differs from the IR reference")
    inputs = {name: session.get_inputs()[0].name for name, session in sessions.items()}
    actions = {name: (lambda s=session, n=inputs[name]: s.run(None, {n: x})) for name, session in sessions.items()}
    actions["hwsim"] = lambda: engine.run(feeds)
    actions["hwsim, oneDNN path"] = lambda: onednn.run(feeds)
    ips = {name: BATCH / seconds for name, seconds in blocked_seconds(actions, rounds).items()}
    peer = max((name for name in sessions), key=ips.get)
    return {
        "model": model,
        "bits": bits,
        "pow2": pow2,
        "ips": ips,
        "peer": peer,
        "ratio": ips["hwsim"] / ips[peer],
        "macs": sum(layer.macs for layer in counts) / BATCH,
        "saturations": sum(layer.saturations for layer in counts),
    }


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| model | weights/activations | scales | onnxruntime (default export) | onnxruntime, int8 containers "
        "| hwsim | ratio (vs faster onnxruntime) | hwsim GMAC/s | hwsim, oneDNN path (`conv=\"onednn\"`) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ips = row["ips"]
        containers = ips.get("onnxruntime, int8 containers")
        scales = "power of two" if row["pow2"] else "free"
        lines.append(
            f"| {MODEL_NAMES[row['model']]} | W{row['bits']}A{row['bits']} | {scales} "
            f"| {ips['onnxruntime']:,.0f} | {f'{containers:,.0f}' if containers else '-'} | {ips['hwsim']:,.0f} "
            f"| **{row['ratio']:.2f}x** | {row['macs'] * ips['hwsim'] / 1e9:.0f} | {ips['hwsim, oneDNN path']:,.0f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    rows = []
    for model in MODELS:
        for bits, pow2 in CONFIGS:
            row = measure(model, bits, pow2, args.rounds)
            rows.append(row)
            print(
                f"{model} W{bits}A{bits} {'pow2' if pow2 else 'free'}: "
                + ", ".join(f"{name} {value:,.0f}" for name, value in row["ips"].items())
                + f" img/s, ratio {row['ratio']:.2f}x",
                flush=True,
            )

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
    reached = sum(row["ratio"] >= 1.0 for row in rows)

    lines = [
        "## hwsim throughput: ResNet-20 and MobileNetV2, batch 64 (`benchmarks/hwsim_throughput.py`)",
        "",
        f"Images per second, median of {args.rounds} rounds x {BLOCK - 1} timed runs per peer (peers take turns",
        "in blocks, in an order that rotates every round, after a 0.2 s pause; a block's first run is not",
        "timed), all in one run.",
        "hwsim is its default engine (fast mode, all cores); its output on the whole batch is checked against",
        "the IR reference and it fills its",
        "per-layer counters (MACs, bytes, saturations, overflows) on every run. onnxruntime has its default",
        "optimizations. At 4 bits the default export (int4 types) runs dequantized in onnxruntime; the same",
        "4-bit values in int8 containers (`export_onnx(graph, native_bits=(8, 16))`) are its best form, fused",
        "into QLinearConv where no clamp to the 4-bit range sits between a convolution and its",
        "QuantizeLinear. Each ratio is hwsim over the faster of the two. The last column is the same engine",
        "without hwsim's C kernels (`Engine(conv=\"onednn\")`), timed in the same blocks: the kernels' effect.",
        f"Target (issue 14): all eight ratios >= 1.0x; this run: {reached} of {len(rows)}.",
        "",
        *table(rows),
        "",
        f"CPU: {cpu_model()}, {os.cpu_count()} cores; features: {cpu_flags()}. hwsim's oneDNN int8 path: "
        f"{'available (probe passed)' if int8_conv.available() else 'not available here (BLAS path only)'}.",
        "GMAC/s counts the convolution and linear MACs of the IR (hwsim's counters) per second, over both",
        "cores. For scale: a core's AVX-512 VNNI peak is 64 int8 MACs per vpdpbusd, one 512-bit vpdpbusd per",
        "cycle on AMD Zen 4 (two on recent Xeons, whose AMX tiles oneDNN uses where present); the network",
        "rates stay below it because most layers are small (8-64 channels), so the requantize epilogue costs",
        "as much as the multiply-adds in many of them.",
        f"Numba: first run with a cold cache {cold:.1f} s (compilation), with the on-disk cache {warm:.2f} s "
        "(2 images; the kernels are compiled with `cache=True`).",
        f"`hwsim estimate` (analytic, whole ResNet-20, fpga target) after warm-up: {estimate_ms:.2f} ms "
        "(target: under 10 ms).",
        "",
        "How hwsim gets there (docs/hwsim.md): each worker thread runs the whole graph on its slice of the",
        "batch, single-threaded, so no layer waits at a barrier; the convolutions run on hwsim's C kernels",
        "(AVX-512 VNNI; on a CPU with AMX the dense 3x3 layers stay on oneDNN's AMX kernels) with the",
        "requantize, and a residual add it feeds, in their epilogue: in float32 where the product bound",
        "proves it exact (power-of-two scales), else in a checked float32 form (free scales: elements within",
        "the float error of a rounding half are redone in int64), both the IR's integer rule bit for bit,",
        "counting saturations on the way. From a batch shape's third run on, each worker replays its",
        "recorded kernel calls in one C call per chain of native layers (`hwsim/replay.py`), without the",
        "interpreter between them.",
    ]
    body = "\n".join(lines)
    print(body)
    write_section("hwsim_throughput", body)


if __name__ == "__main__":
    main()
