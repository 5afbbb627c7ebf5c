"""Measure how often each path differs from the IR reference, end to end and layer by layer.

    python benchmarks/mismatch_rates.py     # writes the table into docs/benchmarks.md

Models: the shipped digits checkpoints on the digits test split, and ResNet-20 / MobileNetV2
(random weights, calibrated on synthetic data) on 64 synthetic images, with power-of-two and
free (LSQ) steps.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from modelgen import zoo_graph  # noqa: E402
from report import write_section  # noqa: E402

from qexport.checkpoint import load_checkpoint  # noqa: E402
from qexport.data import digits_split, synthetic_images  # noqa: E402
from qexport.export.onnx_qdq import export_onnx  # noqa: E402
from qexport.frontend.lower import lower  # noqa: E402
from qexport.quant.config import QuantConfig  # noqa: E402
from qexport.verify import verify  # noqa: E402

MODELS = Path(__file__).resolve().parents[1] / "models"


def cases():
    _, _, x_test, y_test = digits_split()
    for name in ("digits_cnn_w4a4.ckpt", "digits_cnn_w4a4_lsq.ckpt", "digits_cnn_w4a4_pot.ckpt"):
        checkpoint = load_checkpoint(MODELS / name)
        graph = lower(checkpoint.model, checkpoint.input_shape)
        scales = "pow2" if checkpoint.config.pow2_scales else "free"
        yield f"{name} (digits test, 360)", scales, checkpoint.model, graph, x_test, y_test
    for arch in ("resnet20", "mobilenetv2"):
        for pow2 in (True, False):
            model, graph, calibration = zoo_graph(arch, QuantConfig(pow2_scales=pow2))
            inputs = synthetic_images(tuple(calibration.shape[1:]), 64, seed=7)
            yield f"{arch} W4A4 (synthetic, 64)", "pow2" if pow2 else "free", model, graph, inputs, None


def main() -> None:
    torch.set_num_threads(2)
    lines = [
        "## Mismatch rates vs the IR reference (`benchmarks/mismatch_rates.py`)",
        "",
        "End to end: share of output logits that differ, and the largest difference in output LSBs.",
        "Layer by layer: each layer is fed the path's own integer inputs; share of elements that differ",
        "(bound: 0 with power-of-two steps, 1 LSB otherwise).",
        "",
        "| model | steps | path | top-1 agreement | outputs differing | max LSB | per-layer mismatch rate "
        "| per-layer max LSB |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for title, scales, model, graph, inputs, labels in cases():
        result = verify(graph, model, export_onnx(graph), inputs, labels)
        for path in result.paths:
            worst, rate = result.layerwise[path.path]
            differing = 1 - path.bit_exact / path.total
            lines.append(
                f"| {title} | {scales} | {path.path} | {path.top1_agreement:.2%} | {differing:.2%} | "
                f"{path.max_error_lsb} | {rate:.2e} | {worst} |"
            )
        print(lines[-2], lines[-1], sep="\n", flush=True)
    write_section("mismatch_rates", "\n".join(lines))


if __name__ == "__main__":
    main()
