"""QONNX import: Brevitas QAT modules exported with export_qonnx (raw and after qonnx cleanup) and hand-built
Quant/BipolarQuant graphs, run by the IR reference and hwsim, equal the qonnx executor bit for bit."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("brevitas", reason="Brevitas QAT modules build the test models")
pytest.importorskip("qonnx", reason="the qonnx executor is the oracle")

import brevitas.nn as qnn  # noqa: E402
import torch  # noqa: E402
from brevitas.quant import (  # noqa: E402
    Int8ActPerTensorFixedPoint,
    Int8ActPerTensorFloat,
    Int8WeightPerTensorFixedPoint,
    Int8WeightPerTensorFloat,
    Int32Bias,
    SignedBinaryActPerTensorConst,
    SignedBinaryWeightPerTensorConst,
    Uint8ActPerTensorFixedPoint,
    Uint8ActPerTensorFloat,
)
from qonnx_support import cleaned, export_brevitas, output_integers, qonnx_execute, reference_integers  # noqa: E402
from torch import nn  # noqa: E402

from hwsim.engine import Engine  # noqa: E402
from qexport.frontend.onnx_qonnx import import_qonnx, is_qonnx  # noqa: E402
from qexport.reference.executor import quantize_input  # noqa: E402

warnings.filterwarnings("ignore", module="brevitas")


def _quantizers(pot: bool):
    if pot:
        return Int8ActPerTensorFixedPoint, Uint8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint
    return Int8ActPerTensorFloat, Uint8ActPerTensorFloat, Int8WeightPerTensorFloat


class ConvNet(nn.Module):
    """QuantIdentity -> QuantConv2d/QuantReLU x2 -> MaxPool or TruncAvgPool -> QuantLinear -> QuantIdentity."""

    in_shape = (2, 8, 8)

    def __init__(self, pot: bool, wbits: int, abits: int, per_channel: bool, pool: str = "max"):
        super().__init__()
        act, uact, weight = _quantizers(pot)
        kw = dict(
            weight_quant=weight,
            weight_bit_width=wbits,
            weight_scaling_per_output_channel=per_channel,
            bias=True,
            bias_quant=Int32Bias,
            return_quant_tensor=True,
        )
        self.inp = qnn.QuantIdentity(act_quant=act, bit_width=8, return_quant_tensor=True)
        self.c1 = qnn.QuantConv2d(2, 6, 3, padding=1, **kw)
        self.r1 = qnn.QuantReLU(act_quant=uact, bit_width=abits, return_quant_tensor=True)
        self.c2 = qnn.QuantConv2d(6, 8, 3, padding=1, stride=2, groups=2, **kw)
        self.r2 = qnn.QuantReLU(act_quant=uact, bit_width=abits, return_quant_tensor=True)
        if pool == "max":
            self.pool = nn.MaxPool2d(2)
        else:  # "avg": 2x2 windows; "avg3": 3x3 windows, stride 1 (Trunc divides by 2^round(log2 9) = 8)
            size, stride = (2, 2) if pool == "avg" else (3, 1)
            self.pool = qnn.TruncAvgPool2d(size, stride=stride, bit_width=abits, return_quant_tensor=True)
        self.fc = qnn.QuantLinear(8 * 2 * 2, 5, **kw)
        self.out = qnn.QuantIdentity(act_quant=act, bit_width=8, return_quant_tensor=False)

    def forward(self, x):
        x = self.r1(self.c1(self.inp(x)))
        x = self.pool(self.r2(self.c2(x)))
        return self.out(self.fc(torch.flatten(x, 1)))


class ResidualGapNet(nn.Module):
    """A residual Add of two power-of-two quantized branches, then TruncAdaptiveAvgPool (global) and a Linear."""

    in_shape = (3, 8, 8)

    def __init__(self, bits: int):
        super().__init__()
        kw = dict(weight_quant=Int8WeightPerTensorFixedPoint, weight_bit_width=bits, bias=True, bias_quant=Int32Bias)
        self.inp = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint, return_quant_tensor=True)
        self.c1 = qnn.QuantConv2d(3, 4, 3, padding=1, return_quant_tensor=True, **kw)
        self.r1 = qnn.QuantReLU(act_quant=Uint8ActPerTensorFixedPoint, bit_width=bits, return_quant_tensor=True)
        self.c2 = qnn.QuantConv2d(4, 4, 3, padding=1, return_quant_tensor=True, **kw)
        self.r2 = qnn.QuantReLU(act_quant=self.r1.act_quant, return_quant_tensor=True)  # shared: one scale
        self.sum = qnn.QuantIdentity(act_quant=Uint8ActPerTensorFixedPoint, bit_width=bits, return_quant_tensor=True)
        self.gap = qnn.TruncAdaptiveAvgPool2d((1, 1), bit_width=8, return_quant_tensor=True)
        self.fc = qnn.QuantLinear(4, 3, return_quant_tensor=False, **kw)
        self.out = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint, return_quant_tensor=False)

    def forward(self, x):
        a = self.r1(self.c1(self.inp(x)))
        b = self.r2(self.c2(a))
        x = self.gap(self.sum(a + b))
        return self.out(self.fc(torch.flatten(x, 1)))


class ResidualFloatNet(nn.Module):
    """Float-scale residual Add of two separately quantized branches (their scales differ after training)."""

    in_shape = (3, 8, 8)

    def __init__(self):
        super().__init__()
        kw = dict(weight_bit_width=4, bias=True, bias_quant=Int32Bias, return_quant_tensor=True)
        self.inp = qnn.QuantIdentity(return_quant_tensor=True)
        self.c1 = qnn.QuantConv2d(3, 4, 3, padding=1, **kw)
        self.r1 = qnn.QuantReLU(bit_width=4, return_quant_tensor=False)
        self.q1 = qnn.QuantIdentity(act_quant=Uint8ActPerTensorFloat, bit_width=4, return_quant_tensor=True)
        self.c2 = qnn.QuantConv2d(4, 4, 3, padding=1, **kw)
        self.r2 = qnn.QuantReLU(bit_width=4, return_quant_tensor=False)
        self.sum = qnn.QuantIdentity(act_quant=Uint8ActPerTensorFloat, bit_width=4, return_quant_tensor=True)
        self.fc = qnn.QuantLinear(4 * 64, 3, **kw)
        self.out = qnn.QuantIdentity(return_quant_tensor=False)

    def forward(self, x):
        a = self.r1(self.c1(self.inp(x)))
        b = self.r2(self.c2(self.q1(a)))
        return self.out(self.fc(torch.flatten(self.sum(a + b), 1)))


class BinaryNet(nn.Module):
    """Bipolar activations and weights (BipolarQuant) between 4-bit power-of-two layers."""

    in_shape = (12,)

    def __init__(self):
        super().__init__()
        self.inp = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint, return_quant_tensor=True)
        self.fc1 = qnn.QuantLinear(
            12, 16, bias=True, weight_quant=Int8WeightPerTensorFixedPoint, weight_bit_width=4, bias_quant=Int32Bias
        )
        self.bip = qnn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst, return_quant_tensor=True)
        self.fc2 = qnn.QuantLinear(16, 4, bias=False, weight_quant=SignedBinaryWeightPerTensorConst)
        self.out = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint, return_quant_tensor=False)

    def forward(self, x):
        return self.out(self.fc2(self.bip(self.fc1(self.inp(x)))))


def _train(module: nn.Module, steps: int, seed: int) -> None:
    """A few SGD steps on synthetic data, so that learned scales and weights move off their initial values."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.SGD(module.parameters(), lr=0.05)
    module.train()
    for _ in range(steps):
        x = torch.randn(16, *module.in_shape, generator=generator)
        loss = module(x).square().mean() - module(x).std()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    module.eval()


def _check(module: nn.Module, batch: int, seed: int, exact: bool, dynamo: bool | None = None) -> dict[str, float]:
    """Export, import raw and cleaned, compare reference, hwsim and the qonnx executor; return mismatch rates."""
    torch.manual_seed(seed)
    x = (1.5 * torch.randn(batch, *module.in_shape)).numpy()
    raw = export_brevitas(module, torch.from_numpy(x), dynamo)
    rates = {}
    for tag, model in (("raw", raw), ("cleaned", cleaned(raw))):
        assert is_qonnx(model)
        graph = import_qonnx(model, f"{tag}.onnx")
        expected = output_integers(graph, qonnx_execute(model, x))
        reference = reference_integers(graph, x)
        name = graph.inputs[0]
        simulated = Engine(graph).run({name: quantize_input(graph.tensors[name], x)})[0][graph.outputs[0]]
        np.testing.assert_array_equal(simulated, reference, err_msg=f"{tag}: hwsim vs the IR reference")
        if exact:
            np.testing.assert_array_equal(reference, expected, err_msg=f"{tag}: IR reference vs the qonnx executor")
        rates[tag] = float(np.mean(reference != expected))
        assert np.abs(reference - expected).max(initial=0) <= 1, f"{tag}: more than 1 LSB from the qonnx executor"
    return rates


@pytest.mark.parametrize(
    ("wbits", "abits", "per_channel", "pool"),
    [(8, 8, False, "max"), (4, 4, True, "max"), (2, 3, True, "avg"), (5, 2, False, "avg"), (3, 4, False, "avg3")],
)
def test_brevitas_power_of_two_nets_equal_qonnx_executor(wbits, abits, per_channel, pool):
    torch.manual_seed(wbits * 10 + abits)
    module = ConvNet(True, wbits, abits, per_channel, pool)
    _train(module, 3, seed=wbits)
    _check(module, 64, seed=abits, exact=True)


def test_brevitas_residual_add_and_global_pool_equal_qonnx_executor():
    torch.manual_seed(3)
    module = ResidualGapNet(4)
    _train(module, 2, seed=3)
    _check(module, 48, seed=3, exact=True)


def test_brevitas_bipolar_layers_equal_qonnx_executor():
    torch.manual_seed(4)
    _check(BinaryNet(), 64, seed=4, exact=True)


@pytest.mark.parametrize(("wbits", "per_channel"), [(8, False), (4, True)])
def test_brevitas_float_scales_within_one_lsb(wbits, per_channel):
    """Free float scales: the executor rounds float32 products and sums, the IR requantizes exactly with a
    31-bit multiplier; outputs differ by at most 1 LSB, rarely (docs/interop.md has the measured rate)."""
    torch.manual_seed(wbits)
    module = ConvNet(False, wbits, wbits, per_channel)
    _train(module, 3, seed=wbits)
    rates = _check(module, 64, seed=wbits, exact=False)
    assert max(rates.values()) < 0.05


@pytest.mark.parametrize("net", ["binary", "conv"])
def test_brevitas_torchscript_export_equals_qonnx_executor(net):
    """export_qonnx(dynamo=False): Quant -> Transpose -> MatMul weights, Constant-folded trunc scales."""
    torch.manual_seed(5)
    module = BinaryNet() if net == "binary" else ConvNet(True, 3, 5, True, "avg")
    _check(module, 32, seed=5, exact=True, dynamo=False)


def test_brevitas_float_scale_residual_add_within_one_lsb():
    """Operand scales not a power-of-two ratio apart: aligned with 16 extra fraction bits, as the torch lowering."""
    torch.manual_seed(6)
    module = ResidualFloatNet()
    _train(module, 4, seed=6)
    graph = import_qonnx(export_brevitas(module, torch.randn(2, *module.in_shape)), "residual.onnx")
    add = next(node for node in graph.nodes if node.op.value == "add")
    assert add.attrs["lhs_multiplier"] != add.attrs["rhs_multiplier"]  # the scales do differ
    rates = _check(module, 64, seed=6, exact=False)
    assert max(rates.values()) < 0.05
