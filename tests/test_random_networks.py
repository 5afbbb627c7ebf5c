"""Random small CNNs: lower -> serialize -> deserialize -> execute, against the torch fake-quant model."""

from __future__ import annotations

import json

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from modelgen import calibrated
from torch import nn

from qexport.frontend.lower import lower
from qexport.ir.serialize import graph_to_spec, spec_to_graph
from qexport.quant.config import QuantConfig
from qexport.reference import quantize_input, run_graph
from qexport.verify import LAYERWISE_BOUND_LSB, all_scales_power_of_two, layerwise_errors, torch_tensors


class RandomNet(nn.Module):
    def __init__(self, in_channels: int, blocks: list[dict], classes: int):
        super().__init__()
        self.cfgs = blocks
        self.convs, self.bns, self.acts, self.pools = nn.ModuleList(), nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        channels = in_channels
        for cfg in blocks:
            out = channels if cfg["depthwise"] or cfg["residual"] else cfg["channels"]
            groups = channels if cfg["depthwise"] else 1
            self.convs.append(
                nn.Conv2d(
                    channels,
                    out,
                    cfg["kernel"],
                    cfg["stride"],
                    cfg["padding"],
                    dilation=cfg["dilation"],
                    groups=groups,
                    bias=cfg["bias"],
                )
            )
            self.bns.append(nn.BatchNorm2d(out) if cfg["bn"] else nn.Identity())
            self.acts.append({"relu": nn.ReLU(), "relu6": nn.ReLU6(), "none": nn.Identity()}[cfg["act"]])
            self.pools.append(
                {"max": nn.MaxPool2d(2, padding=cfg["pool_pad"]), "avg": nn.AvgPool2d(2), "none": nn.Identity()}[
                    cfg["pool"]
                ]
            )
            channels = out
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for cfg, conv, bn, act, pool in zip(self.cfgs, self.convs, self.bns, self.acts, self.pools, strict=True):
            y = bn(conv(x))
            if cfg["residual"]:
                y = y + x
            x = pool(act(y))
        return self.fc(torch.flatten(self.gap(x), 1))


@st.composite
def networks(draw):
    image = size = draw(st.integers(5, 9))
    blocks = []
    for _ in range(draw(st.integers(1, 3))):
        kernel = draw(st.sampled_from([1, 3]))
        stride = draw(st.sampled_from([1, 1, 2]))
        dilation = draw(st.sampled_from([1, 1, 2])) if kernel == 3 and size >= 5 else 1
        padding = draw(st.integers(0, dilation * (kernel // 2) + 1))
        out_size = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
        if out_size < 1:
            padding, stride, dilation, out_size = kernel // 2, 1, 1, size
        residual = stride == 1 and out_size == size and draw(st.booleans())
        pool = draw(st.sampled_from(["none", "max", "avg"])) if out_size >= 2 else "none"
        blocks.append(
            {
                "kernel": kernel,
                "stride": stride,
                "padding": padding,
                "dilation": dilation,
                "channels": draw(st.integers(1, 6)),
                "depthwise": draw(st.booleans()),
                "bias": draw(st.booleans()),
                "bn": draw(st.booleans()),
                "act": draw(st.sampled_from(["relu", "relu6", "none"])),
                "residual": residual,
                "pool": pool,
                "pool_pad": draw(st.integers(0, 1)),
            }
        )
        size = out_size // 2 if pool != "none" else out_size
        if pool == "max":
            size = (out_size + 2 * blocks[-1]["pool_pad"] - 2) // 2 + 1
        if size < 1:
            blocks.pop()
            break
    bits = st.integers(2, 8)
    config = QuantConfig(
        weight_bits=draw(bits),
        act_bits=draw(bits),
        first_bits=draw(bits),
        last_bits=draw(bits),
        input_bits=draw(bits),
        output_bits=draw(bits),
        residual_bits=draw(bits),
        pow2_scales=draw(st.booleans()),
        per_channel_weights=draw(st.booleans()),
    )
    in_channels = draw(st.integers(1, 3))
    return in_channels, blocks, config, draw(st.integers(2, 5)), draw(st.integers(0, 2**16)), image


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(networks())
def test_random_network_round_trip_matches_torch(case) -> None:
    in_channels, blocks, config, classes, seed, size = case
    model = RandomNet(in_channels, blocks, classes)
    shape = (in_channels, size, size)
    qat, _ = calibrated(model, config, shape, seed)
    graph = lower(qat, shape, "random")
    spec, blob = graph_to_spec(graph)
    restored = spec_to_graph(json.loads(json.dumps(spec)), blob)
    inputs = np.random.default_rng(seed).standard_normal((6, *shape)).astype(np.float32)
    feeds = {restored.inputs[0]: quantize_input(restored.tensors[restored.inputs[0]], inputs)}
    restored_out = run_graph(restored, feeds)[restored.outputs[0]]
    original_out = run_graph(graph, feeds)[graph.outputs[0]]
    np.testing.assert_array_equal(restored_out, original_out)
    observed = torch_tensors(qat, restored, inputs)
    worst, _ = layerwise_errors(restored, inputs, observed)
    if all_scales_power_of_two(restored):
        assert worst == 0
        np.testing.assert_array_equal(observed[restored.outputs[0]], restored_out)
    else:
        assert worst <= LAYERWISE_BOUND_LSB
