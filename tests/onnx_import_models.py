"""Quantized ONNX models built with the real tools, for the import tests (tests/test_onnx_import_*.py).

* ``ort_model``: a small torch CNN (convs with ReLU, a residual add, average and max pools, global
  average pool, linear) -> ``torch.onnx.export`` -> onnxruntime ``quantize_static`` in QDQ or
  QOperator format, s8s8 or u8s8, per-channel weights on or off, calibrated on digits images.
* ``brevitas_model``: Brevitas QAT layers (QuantConv2d/QuantReLU/QuantLinear, float or power-of-two
  scales, 4 or 8 bits, per-channel weights on or off), a few training steps, ``export_onnx_qcdq``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qexport.data import digits_split


def digits(count: int, train: bool = True) -> np.ndarray:
    x_train, _, x_test, _ = digits_split()
    return (x_train if train else x_test)[:count]


class SmallCnn(nn.Module):
    def __init__(self, channels: int = 8):
        super().__init__()
        self.c1 = nn.Conv2d(1, channels, 3, padding=1)
        self.c2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.c3 = nn.Conv2d(channels, channels, 3, padding=1)
        self.avg = nn.AvgPool2d(2)
        self.c4 = nn.Conv2d(channels, 2 * channels, 3, padding=1, groups=1)
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * channels, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        y = torch.relu(self.c2(x))
        x = torch.relu(self.c3(y) + x)
        x = self.pool(torch.relu(self.c4(self.avg(x))))
        return self.fc(torch.flatten(self.gap(x), 1))


class PlainCnn(nn.Module):
    """Only layers onnxruntime's QOperator kernels requantize in float32 (bit-exact imports)."""

    def __init__(self, channels: int = 8):
        super().__init__()
        self.c1 = nn.Conv2d(1, channels, 3, padding=1)
        self.c2 = nn.Conv2d(channels, 2 * channels, 3, padding=1, stride=2)
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * channels, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.c2(torch.relu(self.c1(x)))))
        return self.fc(torch.flatten(self.gap(x), 1))


class InvertedResidualCnn(nn.Module):
    """MobileNetV2-like: BN folded into convs, ReLU6 (Clip), depthwise conv, residual, view + matmul + bias."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(8, 24, 1), nn.BatchNorm2d(24), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(24, 24, 3, padding=1, groups=24), nn.BatchNorm2d(24), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(24, 8, 1), nn.BatchNorm2d(8))
        self.weight = nn.Parameter(torch.randn(8 * 4 * 4, 10) * 0.1)
        self.bias = nn.Parameter(torch.randn(10) * 0.1)

    def forward(self, x):
        x = self.stem(x)
        x = nn.functional.max_pool2d(x + self.project(self.depthwise(self.expand(x))), 2)
        return x.view(x.size(0), -1) @ self.weight + self.bias


NETS = {"small": SmallCnn, "plain": PlainCnn, "inverted": InvertedResidualCnn}


def float_onnx(path: Path, seed: int = 0, net: str = "small") -> Path:
    torch.manual_seed(seed)
    model = NETS[net]().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            torch.zeros(1, 1, 8, 8),
            str(path),
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
            opset_version=17,
            dynamo=False,
        )
    return path


def ort_model(
    directory: Path,
    fmt: str,
    activations: str,
    per_channel: bool,
    seed: int = 0,
    net: str = "small",
    weights: str = "s8",
) -> Path:
    """onnxruntime quantize_static output: fmt QDQ or QOperator, activations s8 or u8, weights s8, u8
    (per-channel zero points) or s4 (int4 weights use com.microsoft QuantizeLinear/DequantizeLinear)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    source = float_onnx(directory / f"float_{net}_{seed}.onnx", seed, net)
    data = digits(64)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": data[i : i + 16]} for i in range(0, len(data), 16)])

        def get_next(self):
            return next(self.batches, None)

    out = directory / f"ort_{net}_{fmt}_{activations}{weights}_{'pc' if per_channel else 'pt'}_{seed}.onnx"
    quantize_static(
        str(source),
        str(out),
        Reader(),
        quant_format=getattr(QuantFormat, fmt),
        activation_type=QuantType.QInt8 if activations == "s8" else QuantType.QUInt8,
        weight_type={"s8": QuantType.QInt8, "u8": QuantType.QUInt8, "s4": QuantType.QInt4}[weights],
        per_channel=per_channel,
    )
    return out


def brevitas_model(
    directory: Path, pot: bool, bits: int, per_channel: bool, seed: int = 0, requantize_pool: bool = False
) -> Path:
    """Brevitas QAT net, a few SGD steps on digits, exported with export_onnx_qcdq.

    ``requantize_pool``: a signed ``bits``-bit QuantIdentity after the max pool (a QuantizeLinear of an
    on-grid tensor to a new scale)."""
    import brevitas.nn as qnn
    from brevitas.export import export_onnx_qcdq
    from brevitas.quant import (
        Int8ActPerTensorFixedPoint,
        Int8ActPerTensorFloat,
        Int8WeightPerTensorFixedPoint,
        Int8WeightPerTensorFloat,
        Int32Bias,
        Uint8ActPerTensorFixedPoint,
        Uint8ActPerTensorFloat,
    )

    weight = Int8WeightPerTensorFixedPoint if pot else Int8WeightPerTensorFloat
    signed = Int8ActPerTensorFixedPoint if pot else Int8ActPerTensorFloat
    relu = Uint8ActPerTensorFixedPoint if pot else Uint8ActPerTensorFloat
    common = {"weight_quant": weight, "weight_bit_width": bits, "bias_quant": Int32Bias, "return_quant_tensor": True}
    if per_channel:
        common["weight_scaling_per_output_channel"] = True

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=signed, bit_width=8, return_quant_tensor=True)
            self.c1 = qnn.QuantConv2d(1, 8, 3, padding=1, **common)
            self.r1 = qnn.QuantReLU(act_quant=relu, bit_width=bits, return_quant_tensor=True)
            self.c2 = qnn.QuantConv2d(8, 8, 3, padding=1, **common)
            self.r2 = qnn.QuantReLU(act_quant=relu, bit_width=bits, return_quant_tensor=True)
            self.pool = nn.MaxPool2d(2)
            self.requant = (
                qnn.QuantIdentity(act_quant=signed, bit_width=bits, return_quant_tensor=True)
                if requantize_pool
                else nn.Identity()
            )
            self.fc = qnn.QuantLinear(8 * 4 * 4, 10, **common)
            self.out = qnn.QuantIdentity(act_quant=signed, bit_width=8)

        def forward(self, x):
            x = self.r2(self.c2(self.r1(self.c1(self.inp(x)))))
            return self.out(self.fc(torch.flatten(self.requant(self.pool(x)), 1)))

    torch.manual_seed(seed)
    model = Net()
    x_train, y_train, _, _ = digits_split()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for step in range(8):
        batch = slice(32 * step, 32 * step + 32)
        loss = nn.functional.cross_entropy(model(torch.from_numpy(x_train[batch])), torch.from_numpy(y_train[batch]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    tag = f"{'pot' if pot else 'float'}_{bits}b_{'pc' if per_channel else 'pt'}{'_rq' if requantize_pool else ''}"
    out = directory / f"brevitas_{tag}_{seed}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx_qcdq(model, torch.zeros(1, 1, 8, 8), export_path=str(out), opset_version=13, dynamo=False)
    return out
