"""Where one hwsim worker's time goes: per-step times of a graph run and the fixed cost per run.

    python benchmarks/hwsim_profile.py [--model mobilenetv2] [--bits 8] [--free] [--batch 32]

One worker thread (the share of a batch-64 run on two cores is 32 images). Prints the slowest
steps (each fused convolution + requantize, each fused residual, each other node, timed by wrapping
the engine's step methods), then images/s at batch 1-32 on one thread: the difference shows the
fixed cost per run (oneDNN calls, Python dispatch). With --convs, each oneDNN convolution alone on a
channels-last uint8 input of that shape, summed by kind (1x1, depthwise, other); a layer whose input
needs an offset into uint8 is timed with that conversion pass, as the engine runs it (marked).
Numbers for docs/hwsim.md#performance.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from modelgen import zoo_graph  # noqa: E402

from hwsim.engine import Engine  # noqa: E402
from qexport.quant.config import QuantConfig  # noqa: E402
from qexport.reference import quantize_input  # noqa: E402

WRAPPED = ("_fused_requant", "_residual", "_run_node")


def feeds_for(graph, batch: int) -> dict[str, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    return {graph.inputs[0]: quantize_input(graph.tensors[graph.inputs[0]], x)}


def timed_engine(graph) -> tuple[Engine, dict[str, float]]:
    """A one-thread engine whose step methods add their wall time to the returned table."""
    engine = Engine(graph, threads=1)
    times: dict[str, float] = collections.defaultdict(float)
    for method in WRAPPED:
        original = getattr(engine, method)

        def wrapper(node, *args, _original=original, _method=method):
            start = time.perf_counter()
            result = _original(node, *args)
            name = node if isinstance(node, str) else node.name
            times[f"{_method.strip('_')} {name}"] += time.perf_counter() - start
            return result

        setattr(engine, method, wrapper)
    return engine, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenetv2", choices=("resnet20", "mobilenetv2"))
    parser.add_argument("--bits", type=int, default=8, choices=(4, 8))
    parser.add_argument("--free", action="store_true", help="free (LSQ) scales instead of powers of two")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--convs", action="store_true", help="also time each oneDNN convolution alone")
    args = parser.parse_args()
    config = QuantConfig(weight_bits=args.bits, act_bits=args.bits, pow2_scales=not args.free)
    _, graph, _ = zoo_graph(args.model, config)
    engine, times = timed_engine(graph)
    feeds = feeds_for(graph, args.batch)
    engine.run(feeds)
    times.clear()
    start = time.perf_counter()
    for _ in range(args.runs):
        engine.run(feeds)
    total = (time.perf_counter() - start) / args.runs
    scales = "free" if args.free else "power-of-two"
    print(f"{args.model} W{args.bits}A{args.bits} {scales} scales, batch {args.batch}, one thread: ", end="")
    print(f"{total * 1e3:.2f} ms per run ({args.batch / total:,.0f} img/s)")
    for name, seconds in sorted(times.items(), key=lambda item: -item[1])[:15]:
        print(f"  {seconds / args.runs * 1e3:7.3f} ms  {name}")
    plain = Engine(graph, threads=1)
    for batch in (1, 2, 4, 8, 16, 32):
        feeds = feeds_for(graph, batch)
        plain.run(feeds)
        runs = max(4, 128 // batch)
        start = time.perf_counter()
        for _ in range(runs):
            plain.run(feeds)
        print(f"batch {batch:3d}: {batch * runs / (time.perf_counter() - start):7,.0f} img/s on one thread")
    if args.convs:
        print_conv_times(graph, plain, args.batch, args.runs)


def conv_kind(weight_shape: tuple[int, ...], groups: int) -> str:
    if groups > 1:
        return "depthwise/grouped"
    return "1x1" if weight_shape[-2:] == (1, 1) else "other"


def print_conv_times(graph, engine: Engine, batch: int, runs: int) -> None:
    """Each oneDNN convolution of ``engine`` alone on channels-last uint8 input (offset layers: plus their pass)."""
    nodes = {node.name: node for node in graph.nodes}
    rng = np.random.default_rng(0)
    rows = []
    for name, plan in engine.plans.items():
        conv = getattr(plan, "conv", None)
        if conv is None:
            continue
        node = nodes[name]
        channels, height, width = graph.tensors[node.inputs[0]].shape[1:]
        x = rng.integers(0, 100, size=(batch, height, width, channels)).astype(np.uint8).transpose(0, 3, 1, 2)
        conv(x)
        start = time.perf_counter()
        for _ in range(runs):
            conv(x)
        weight_shape = tuple(graph.weights[node.attrs["weight"]].shape)
        seconds = (time.perf_counter() - start) / runs
        label = f"{name} (+offset pass)" if conv.offset else name
        rows.append((seconds, label, weight_shape, node.attrs.get("groups", 1)))
    by_kind: dict[str, float] = collections.defaultdict(float)
    for seconds, _, weight_shape, groups in rows:
        by_kind[conv_kind(weight_shape, groups)] += seconds
    kinds = ", ".join(f"{kind} {seconds * 1e3:.2f} ms" for kind, seconds in by_kind.items())
    offsets = sum(label.endswith("(+offset pass)") for _, label, _, _ in rows)
    total = sum(r[0] for r in rows) * 1e3
    print(f"oneDNN alone, {len(rows)} convolutions ({offsets} with an offset pass), batch {batch}: ", end="")
    print(f"{total:.2f} ms ({kinds})")
    for seconds, label, weight_shape, groups in sorted(rows, reverse=True)[:8]:
        print(f"  {seconds * 1e3:7.3f} ms  {label}  weight {weight_shape}  groups {groups}")


if __name__ == "__main__":
    main()
