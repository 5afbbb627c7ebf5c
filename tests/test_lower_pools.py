"""Pool attributes at lowering: exact (torch == IR == onnxruntime, power-of-two scales) or refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from modelgen import calibrated
from torch import nn

from qexport.errors import LoweringError
from qexport.export.onnx_qdq import export_onnx
from qexport.frontend.lower import lower
from qexport.quant.config import QuantConfig
from qexport.verify import verify

CONFIG = QuantConfig(pow2_scales=True, weight_bits=8, act_bits=8)


class PoolNet(nn.Module):
    """conv -> relu -> pool -> linear; the pool is a module or F.max_pool2d with the same arguments."""

    def __init__(self, size: int, pool: nn.Module, functional: bool):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.pool, self.functional = pool, functional
        with torch.no_grad():
            features = self._features(torch.zeros(1, 2, size, size)).shape[1]
        self.fc = nn.Linear(features, 3)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        if self.functional:
            p = self.pool
            x = F.max_pool2d(x, p.kernel_size, p.stride, p.padding, dilation=p.dilation, ceil_mode=p.ceil_mode)
        else:
            x = self.pool(x)
        return torch.flatten(x, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self._features(x))


def _lower_or_refuse(net: nn.Module, size: int, seed: int):
    qat, _ = calibrated(net, CONFIG, (2, size, size), seed)
    return qat, lower(qat, (2, size, size), "pools")


def _assert_exact(qat, graph, size: int, seed: int) -> None:
    inputs = np.random.default_rng(seed).standard_normal((12, 2, size, size)).astype(np.float32) * 2
    result = verify(graph, qat, export_onnx(graph), inputs)
    assert result.exact_expected and result.ok, result.to_dict()
    assert all(path.max_error_lsb == 0 for path in result.paths)


def _torch_ceil_padding(size: int, kernel: int, stride: int, pad: int) -> int:
    """Extra bottom padding a floor-mode pool needs to match torch's ceil_mode output size (from torch itself)."""
    target = F.max_pool2d(torch.zeros(1, 1, size, 1), (kernel, 1), (stride, 1), (pad, 0), ceil_mode=True).shape[2]
    return max(0, (target - 1) * stride + kernel - size - 2 * pad)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(4, 9),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 3),
    pad=st.integers(0, 1),
    dilation=st.sampled_from([1, 2]),
    ceil=st.booleans(),
    functional=st.booleans(),
    seed=st.integers(0, 99),
)
def test_max_pool_is_exact_or_refused(size, kernel, stride, pad, dilation, ceil, functional, seed) -> None:
    pad = min(pad, kernel // 2)
    if dilation * (kernel - 1) + 1 > size + 2 * pad:
        return
    net = PoolNet(size, nn.MaxPool2d(kernel, stride, pad, dilation=dilation, ceil_mode=ceil), functional)
    extra = _torch_ceil_padding(size, kernel, stride, pad) if ceil else 0
    refused = "dilation" if dilation != 1 else "ceil_mode" if pad + extra > kernel // 2 else None
    event(f"refused: {refused}" if refused else f"exact, ceil_mode padding {extra}")
    if dilation != 1:
        with pytest.raises(LoweringError, match=r"layer (pool \(MaxPool2d\)|max_pool2d .*): max pool dilation=2"):
            _lower_or_refuse(net, size, seed)
    elif pad + extra > kernel // 2:
        with pytest.raises(LoweringError, match=r"layer (pool|max_pool2d) .*ceil_mode=True needs padding"):
            _lower_or_refuse(net, size, seed)
    else:
        qat, graph = _lower_or_refuse(net, size, seed)
        (node,) = [n for n in graph.nodes if n.op.value == "maxpool"]
        assert node.attrs["padding"] == [pad, pad, pad + extra, pad + extra]
        _assert_exact(qat, graph, size, seed)


def _window_counts(size: int, kernel: tuple[int, int], stride: int, pad: int, include_pad: bool) -> set[int]:
    """Values each window divides by, counted by torch: a sum pool of ones (padding contributes zeros)."""
    if include_pad:
        return {kernel[0] * kernel[1]}
    ones = torch.ones(1, 1, size, size)
    summed = F.avg_pool2d(ones, kernel, stride, pad, count_include_pad=True) * kernel[0] * kernel[1]
    return {int(v) for v in summed.round().flatten().tolist()}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(4, 9),
    kernel=st.sampled_from([(2, 2), (2, 3), (3, 2), (3, 3), (1, 2), (2, 4), (1, 6)]),
    stride=st.integers(1, 3),
    pad=st.integers(0, 1),
    include_pad=st.booleans(),
    seed=st.integers(0, 99),
)
def test_average_pool_is_exact_or_refused(size, kernel, stride, pad, include_pad, seed) -> None:
    pad = min(pad, min(kernel) // 2)
    if max(kernel) > size + 2 * pad:
        return
    net = PoolNet(size, nn.AvgPool2d(kernel, stride, pad, count_include_pad=include_pad), functional=False)
    counts = _window_counts(size, kernel, stride, pad, include_pad)
    bad = sorted(c for c in counts if c % 2 == 0 and c & (c - 1))
    event("refused" if bad else "exact")
    if bad:
        with pytest.raises(LoweringError, match=rf"layer pool.*: average pool over {bad[0]} values is not exact"):
            _lower_or_refuse(net, size, seed)
    else:
        qat, graph = _lower_or_refuse(net, size, seed)
        _assert_exact(qat, graph, size, seed)


def test_refusal_messages_name_the_layer_and_attribute() -> None:
    with pytest.raises(LoweringError, match=r"layer pool \(MaxPool2d\): max pool dilation=2"):
        _lower_or_refuse(PoolNet(8, nn.MaxPool2d(2, dilation=2), False), 8, 0)
    with pytest.raises(LoweringError, match=r"layer max_pool2d \(max_pool2d\): max pool ceil_mode=True needs padding"):
        _lower_or_refuse(PoolNet(7, nn.MaxPool2d(3, 3, ceil_mode=True), True), 7, 0)
    with pytest.raises(LoweringError, match=r"average pool over 6 values is not exact in float paths; use a power"):
        _lower_or_refuse(PoolNet(6, nn.AvgPool2d((2, 3)), False), 6, 0)
