"""hwsim's C convolution kernels vs oneDNN + the Numba requantize pass they replace, layer by layer.

    python benchmarks/native_kernels.py [--rounds N]

One worker's share of a batch-64 run (32 images), one thread, channels-last uint8 input, for the layer
shapes of MobileNetV2 and ResNet-20 (CIFAR sizes), each with a power-of-two (exact float32) and a free
(checked float32) requantize. Peer: ``Int8Conv`` (oneDNN, float32 accumulators) followed by the Numba
kernel of the same form, as the engine ran every layer before. The kernels: AVX-512 VNNI for 1x1 and
depthwise layers, VNNI and AMX for the dense ones. Peers take turns in rounds; each cell is the median;
outputs are checked equal first. Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from report import write_section

from hwsim import native_conv
from hwsim.channels_last import REQUANT_KERNELS, checked_requant, float_requant
from hwsim.int8_conv import plan_int8_conv
from hwsim.native_conv import AMX, AVX512, KINDS, plan_native_conv

BATCH = 32
RUNS = 20  # timed calls per peer per round
LAYERS = (  # (label, in channels, out channels, kernel, stride, size, depthwise)
    ("1x1 8 -> 48, 32x32", 8, 48, 1, 1, 32, False),
    ("1x1 48 -> 8, 32x32", 48, 8, 1, 1, 32, False),
    ("1x1 24 -> 144, 8x8", 24, 144, 1, 1, 8, False),
    ("1x1 112 -> 256, 4x4", 112, 256, 1, 1, 4, False),
    ("depthwise 48, 3x3, 32x32", 48, 48, 3, 1, 32, True),
    ("depthwise 48, 3x3 stride 2, 32x32", 48, 48, 3, 2, 32, True),
    ("depthwise 144, 3x3, 8x8", 144, 144, 3, 1, 8, True),
    ("dense 3 -> 16, 3x3, 32x32", 3, 16, 3, 1, 32, False),
    ("dense 16 -> 16, 3x3, 32x32", 16, 16, 3, 1, 32, False),
    ("dense 32 -> 32, 3x3, 16x16", 32, 32, 3, 1, 16, False),
    ("dense 64 -> 64, 3x3, 8x8", 64, 64, 3, 1, 8, False),
)


def layer(channels, out_channels, kernel, stride, size, depthwise, rng):
    weight = rng.integers(-20, 21, (out_channels, 1 if depthwise else channels, kernel, kernel))
    x = rng.integers(0, 256, (BATCH, size, size, channels)).astype(np.uint8).transpose(0, 3, 1, 2)
    groups = channels if depthwise else 1
    conv = plan_int8_conv(weight, 0, 255, 0, (stride, stride), (kernel // 2,) * 4, (1, 1), groups, (size, size))
    bound = int(np.abs(weight.reshape(out_channels, -1)).sum(axis=1).max()) * 255
    return conv, x, bound


def forms(out_channels: int, bound: int, rng):
    """A power-of-two requantize (exact float32) and a free one (checked float32), 8-bit unsigned outputs."""
    limits = (-(2**31), 2**31 - 1)
    zeros = np.zeros(out_channels, np.int64)
    shift = int(np.ceil(np.log2(bound))) - 7
    ones = np.ones(out_channels, np.int64)
    pow2 = float_requant(ones, np.full(out_channels, shift), zeros, bound, 0, (0, 255), limits)
    multiplier = rng.integers(2**30, 2**31, out_channels)
    free = checked_requant(multiplier, np.full(out_channels, shift + 31), zeros, bound, 0, (0, 255), limits)
    return {"power of two": (pow2, None), "free": (free, free.int_form)}


def median_ms(actions: dict, rounds: int) -> dict[str, float]:
    times = {name: [] for name in actions}
    for _ in range(rounds):
        for name, action in actions.items():
            action()
            start = time.perf_counter()
            for _ in range(RUNS):
                action()
            times[name].append((time.perf_counter() - start) / RUNS * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not native_conv.available():
        raise SystemExit("hwsim's AVX-512 VNNI kernels do not run here: nothing to compare")
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows = []
    for label, channels, out_channels, kernel, stride, size, depthwise in LAYERS:
        conv, x, bound = layer(channels, out_channels, kernel, stride, size, depthwise, rng)
        variants = {"VNNI": plan_native_conv(conv, AVX512, KINDS)}
        if not depthwise and kernel > 1 and native_conv.variants() & AMX:
            variants["AMX"] = plan_native_conv(conv, AMX, KINDS)
        out_hw = variants["VNNI"].output_hw(size, size)
        for scales, (form, int_form) in forms(out_channels, bound, rng).items():
            expected = np.empty((BATCH, *out_hw, out_channels), np.uint8)
            kernel_fn = REQUANT_KERNELS[form.kind]

            def onednn(form=form, kernel_fn=kernel_fn, expected=expected, conv=conv, x=x):
                acc = conv(x).reshape(-1)
                return kernel_fn(acc, *form.coeffs, form.bias, *form.limits, expected.reshape(-1))

            actions = {"oneDNN + requantize": onednn}
            reference_counts = onednn()
            for name, native in variants.items():
                out = np.empty_like(expected)
                counts = native.requantize_into(x, form, int_form, out)
                if not np.array_equal(out, expected) or counts != tuple(reference_counts):
                    raise SystemExit(f"{label} {scales}: {name} differs from oneDNN + requantize")
                actions[name] = lambda native=native, form=form, int_form=int_form, out=out, x=x: (
                    native.requantize_into(x, form, int_form, out)
                )
            ms = median_ms(actions, args.rounds)
            rows.append((label, scales, ms))
            print(label, scales, {k: round(v, 3) for k, v in ms.items()}, flush=True)
    lines = [
        "## hwsim's C kernels vs oneDNN + requantize, per layer (`benchmarks/native_kernels.py`)",
        "",
        f"Milliseconds per call, batch {BATCH} (one worker's share of a batch-64 run), one thread, median of",
        f"{args.rounds} rounds x {RUNS} calls, peers taking turns; outputs and counters checked equal first.",
        "Peer: oneDNN's int8 convolution into float32 accumulators, then the Numba requantize kernel of the",
        "same form (the engine's path before the C kernels and with `conv=\"onednn\"`). VNNI: the AVX-512",
        "VNNI kernels (the engine's choice for every layer on a CPU without AMX; with AMX, for 1x1, depthwise",
        "and first layers); AMX: the tile kernel for dense layers (tested, not used by the engine: no faster",
        "inside it, docs/hwsim.md). The copy of the input into a padded buffer that dense and stride-1",
        "depthwise kernels read is included.",
        "",
        "| layer | scales | oneDNN + requantize | VNNI | speed-up | AMX | speed-up |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, scales, ms in rows:
        peer = ms["oneDNN + requantize"]
        amx = f"{ms['AMX']:.3f} | {peer / ms['AMX']:.2f}x" if "AMX" in ms else "- | -"
        lines.append(f"| {label} | {scales} | {peer:.3f} | {ms['VNNI']:.3f} | {peer / ms['VNNI']:.2f}x | {amx} |")
    body = "\n".join(lines)
    print(body)
    write_section("native_kernels", body)


if __name__ == "__main__":
    main()
