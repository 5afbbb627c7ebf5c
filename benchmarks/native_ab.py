"""Two builds of hwsim's kernel library, A/B on the same recorded kernel calls, in one process.

    python benchmarks/native_ab.py NAME=PATH.so NAME=PATH.so [--networks] [--rounds N]

Build the variants with the dev command in docs/hwsim.md#performance (one per source version). The
calls are recorded once with the installed library (``native_conv.recording``): each layer of
``native_kernels.LAYERS`` and both scales, or with ``--networks`` each network's replayed chain (one
worker's share: 32 images, one thread; ResNet-20 and MobileNetV2 W8A8, both scales). Then each build runs
them through its own ``qc_run``, taking turns; each cell is the median in ms. Layer outputs are checked
equal to the installed build's; a network chain's inputs are overwritten by its own later layers, so
only its times are compared (the tests check exactness). Prints a table; nothing goes into the docs.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from native_kernels import BATCH, LAYERS, forms, layer  # noqa: E402

from hwsim.native_conv import AVX512, KINDS, plan_native_conv, recording  # noqa: E402

RUNS = 10  # calls per build per round


def load(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(Path(path).resolve()))
    lib.qc_run.restype = ctypes.c_int64
    lib.qc_run.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    return lib


def layer_cases(rng):
    """(label, rows, out, expected) for every layer shape and scale."""
    for label, channels, out_channels, kernel, stride, size, depthwise in LAYERS:
        conv, x, bound = layer(channels, out_channels, kernel, stride, size, depthwise, rng)
        native = plan_native_conv(conv, AVX512, KINDS)
        for scales, (form, int_form) in forms(out_channels, bound, rng).items():
            out = np.empty((BATCH, *native.output_hw(size, size), out_channels), np.uint8)
            with recording() as tape:
                native.requantize_into(x, form, int_form, out)
            yield f"{label}, {scales}", np.array(tape.rows, dtype=np.int64), out, out.copy()


def network_cases():
    """(label, rows, None, None) for each network's replayed chains."""
    from modelgen import zoo_graph

    from hwsim.engine import Engine
    from hwsim.replay import Chain
    from qexport.quant.config import QuantConfig
    from qexport.reference import quantize_input

    for model in ("resnet20", "mobilenetv2"):
        for pow2 in (True, False):
            _, graph, _ = zoo_graph(model, QuantConfig(weight_bits=8, act_bits=8, pow2_scales=pow2))
            x = np.random.default_rng(0).standard_normal((BATCH, 3, 32, 32)).astype(np.float32)
            engine = Engine(graph, threads=1)
            feeds = {graph.inputs[0]: quantize_input(graph.tensors[graph.inputs[0]], x)}
            for _ in range(3):  # the third run replays
                engine.run(feeds)
            program = next(iter(engine._local.shapes.values())).program
            rows = np.concatenate([item.rows for item in program.items if isinstance(item, Chain)])
            yield f"{model} W8A8 {'power of two' if pow2 else 'free'} ({len(rows)} calls)", rows, None, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("builds", nargs="+", help="NAME=PATH of a built kernel library")
    parser.add_argument("--networks", action="store_true", help="whole networks' chains instead of layers")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    libs = {}
    for item in args.builds:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            raise SystemExit(f"native_ab: {item!r} is not NAME=PATH of a built library")
        libs[name] = load(path)
    cases = network_cases() if args.networks else layer_cases(np.random.default_rng(0))
    print("| case | " + " | ".join(libs) + " |")
    print("|---|" + "---:|" * len(libs))
    for label, rows, out, expected in cases:
        times: dict[str, list[float]] = {name: [] for name in libs}
        for _ in range(args.rounds):
            for name, lib in libs.items():
                if out is not None:
                    out[:] = 0
                lib.qc_run(rows.ctypes.data, len(rows))
                if out is not None and not np.array_equal(out, expected):
                    raise SystemExit(f"native_ab: {name} differs from the installed build on {label}")
                start = time.perf_counter()
                for _ in range(RUNS):
                    lib.qc_run(rows.ctypes.data, len(rows))
                times[name].append((time.perf_counter() - start) / RUNS * 1e3)
        print(f"| {label} | " + " | ".join(f"{statistics.median(v):.3f}" for v in times.values()) + " |", flush=True)


if __name__ == "__main__":
    main()
