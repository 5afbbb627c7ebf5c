"""Export time of ResNet-20 (W4A4, 8-bit first/last): qexport vs PyTorch's and onnxruntime's tools.

    python benchmarks/export_time.py

qexport: checkpoint -> IR -> model.onnx + layer_spec.json + weights.bin + report.json (the CLI's work).
Peers, same run: torch.onnx.export (TorchScript) of the float ResNet-20, and onnxruntime's
quantize_static (QDQ, per-channel int8, 16 calibration images) on that float ONNX.
Target (issue 3): qexport under 5 s.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from modelgen import calibrated  # noqa: E402
from report import write_section  # noqa: E402

from qexport.checkpoint import checkpoint_from_model, save_checkpoint  # noqa: E402
from qexport.pipeline import run_export  # noqa: E402
from qexport.quant.config import QuantConfig  # noqa: E402
from qexport.targets import load_target  # noqa: E402
from qexport.zoo import build  # noqa: E402

REPEATS = 5


def timed(action) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")
    work = Path(tempfile.mkdtemp())
    config = QuantConfig(weight_bits=4, act_bits=4)
    model, _ = calibrated(build("resnet20"), config, (3, 32, 32))
    checkpoint = work / "resnet20.ckpt"
    save_checkpoint(checkpoint, checkpoint_from_model(model, "resnet20", {}, config, dataset="synthetic"))
    target = load_target("fpga")
    qexport_s = timed(lambda: run_export(checkpoint, target, work / "out", force=True))

    float_model = build("resnet20").eval()
    example = torch.randn(1, 3, 32, 32)
    float_onnx = work / "float.onnx"
    torch_s = timed(lambda: torch.onnx.export(float_model, (example,), str(float_onnx), dynamo=False))

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            name = "input.1"
            import onnx

            name = onnx.load(str(float_onnx)).graph.input[0].name
            self.batches = iter(
                [{name: np.random.default_rng(i).standard_normal((1, 3, 32, 32), np.float32)} for i in range(16)]
            )

        def get_next(self):
            return next(self.batches, None)

    ort_s = timed(
        lambda: quantize_static(
            str(float_onnx),
            str(work / "ort_q.onnx"),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
        )
    )
    rows = [
        ("qexport (load checkpoint, lower, ONNX QDQ + layer spec + report)", qexport_s),
        ("torch.onnx.export, float model (TorchScript exporter)", torch_s),
        ("onnxruntime quantize_static on the float ONNX (16 calibration images)", ort_s),
    ]
    lines = [
        "## Export time: ResNet-20 (`benchmarks/export_time.py`)",
        "",
        f"Median of {REPEATS} runs. Target: qexport under 5 s.",
        "",
        "| tool | seconds | ratio to qexport |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {seconds:.3f} | {seconds / qexport_s:.2f}x |" for name, seconds in rows]
    body = "\n".join(lines)
    print(body)
    write_section("export_time", body)


if __name__ == "__main__":
    main()
