"""Measured agreement of the QONNX import and export with the qonnx executor (docs/interop.md, QONNX section).

Import: Brevitas QAT nets (tests/test_qonnx_import.py) exported with export_qonnx, raw and after qonnx cleanup,
imported and run by the IR reference vs the qonnx executor on the same float inputs. Export: every shipped
checkpoint and the zoo nets lowered to the IR, exported with --qonnx's exporter, executor vs IR reference.
Prints a markdown table: python benchmarks/qonnx_agreement.py [--samples N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from qonnx_support import cleaned, export_brevitas, output_integers, qonnx_execute, reference_integers  # noqa: E402
from test_qonnx_import import BinaryNet, ConvNet, ResidualFloatNet, ResidualGapNet, _quantizers, _train  # noqa: E402

from qexport.checkpoint import load_checkpoint  # noqa: E402
from qexport.data import verification_data  # noqa: E402
from qexport.errors import QExportError  # noqa: E402
from qexport.export.qonnx_export import export_qonnx  # noqa: E402
from qexport.frontend.lower import lower  # noqa: E402
from qexport.frontend.onnx_qonnx import import_qonnx  # noqa: E402


class WideNet(torch.nn.Module):
    """Three 3x3 convs (16-32 channels) and a linear layer with float (learned) scales: more, wider sums."""

    in_shape = (3, 16, 16)

    def __init__(self, bits: int):
        import brevitas.nn as qnn
        from brevitas.quant import Int32Bias

        super().__init__()
        act, uact, weight = _quantizers(False)
        kw = dict(weight_quant=weight, weight_bit_width=bits, bias=True, bias_quant=Int32Bias, return_quant_tensor=True)
        layers = [qnn.QuantIdentity(act_quant=act, return_quant_tensor=True)]
        for c_in, c_out, stride in ((3, 16, 1), (16, 16, 2), (16, 32, 1)):
            layers += [qnn.QuantConv2d(c_in, c_out, 3, padding=1, stride=stride, **kw)]
            layers += [qnn.QuantReLU(act_quant=uact, bit_width=bits, return_quant_tensor=True)]
        self.features = torch.nn.Sequential(*layers, torch.nn.MaxPool2d(2))
        self.fc = qnn.QuantLinear(32 * 16, 10, **kw)
        self.out = qnn.QuantIdentity(act_quant=act, return_quant_tensor=False)

    def forward(self, x):
        return self.out(self.fc(torch.flatten(self.features(x), 1)))


def _row(name: str, reference: np.ndarray, observed: np.ndarray) -> str:
    diff = np.abs(reference - observed)
    return f"| {name} | {len(reference)} | {diff.max()} | {np.mean(diff > 0):.2e} |"


def import_rows(samples: int) -> list[str]:
    nets = {
        "ConvNet pot W8A8 per-tensor, max pool": lambda: ConvNet(True, 8, 8, False),
        "ConvNet pot W4A4 per-channel, max pool": lambda: ConvNet(True, 4, 4, True),
        "ConvNet pot W2A3 per-channel, TruncAvgPool": lambda: ConvNet(True, 2, 3, True, "avg"),
        "ResidualGapNet pot 4 bits (Add, TruncAdaptiveAvgPool)": lambda: ResidualGapNet(4),
        "BinaryNet (BipolarQuant weights and activations)": BinaryNet,
        "ConvNet float scales W8A8 per-tensor": lambda: ConvNet(False, 8, 8, False),
        "ConvNet float scales W4A4 per-channel": lambda: ConvNet(False, 4, 4, True),
        "ConvNet float scales W4A4 per-channel, TruncAvgPool": lambda: ConvNet(False, 4, 4, True, "avg"),
        "ResidualFloatNet float scales, Add of unequal scales": ResidualFloatNet,
        "WideNet float scales W8A8 per-tensor": lambda: WideNet(8),
        "WideNet float scales W4A4 per-tensor": lambda: WideNet(4),
    }
    rows = []
    for seed, (name, make) in enumerate(nets.items()):
        torch.manual_seed(seed)
        module = make()
        _train(module, 3, seed)
        x = (1.5 * torch.randn(samples, *module.in_shape)).numpy()
        raw = export_brevitas(module, torch.from_numpy(x))
        for tag, model in (("raw", raw), ("cleaned", cleaned(raw))):
            graph = import_qonnx(model, name)
            rows.append(
                _row(
                    f"import {name}, {tag}",
                    reference_integers(graph, x),
                    output_integers(graph, qonnx_execute(model, x)),
                )
            )
    return rows


def export_rows(samples: int) -> list[str]:
    rows = []
    for path in sorted((ROOT / "models").glob("*.ckpt")):
        checkpoint = load_checkpoint(path)
        graph = lower(checkpoint.model, checkpoint.input_shape, name=checkpoint.architecture)
        try:
            model = export_qonnx(graph, batch=samples)
        except QExportError as error:
            rows.append(f"| export {path.name} | - | refused: {str(error).split('QONNX export: ')[-1]} | |")
            continue
        x, _ = verification_data(checkpoint.info.get("dataset", "synthetic"), checkpoint.input_shape, samples)
        x = np.asarray(x, np.float32)
        rows.append(
            _row(f"export {path.name}", reference_integers(graph, x), output_integers(graph, qonnx_execute(model, x)))
        )
    from modelgen import zoo_graph

    from qexport.quant.config import QuantConfig

    for name in ("resnet20", "mobilenetv2"):
        for pow2 in (True, False):
            _, graph, _ = zoo_graph(name, QuantConfig(pow2_scales=pow2), seed=1)
            x = np.random.default_rng(1).standard_normal((32, 3, 32, 32)).astype(np.float32)
            observed = output_integers(graph, qonnx_execute(export_qonnx(graph, batch=32), x))
            label = "power-of-two" if pow2 else "free"
            rows.append(_row(f"export {name} W4A4 ({label} scales)", reference_integers(graph, x), observed))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=360)
    args = parser.parse_args()
    print("| case | samples | max \\|IR - qonnx executor\\| (LSB) | outputs differing |")
    print("|---|---|---|---|")
    for row in import_rows(args.samples) + export_rows(args.samples):
        print(row, flush=True)


if __name__ == "__main__":
    main()
