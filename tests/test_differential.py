"""Differential tests: random CNNs (every convolution geometry class and weight format, power-of-two and
free scales, residual adds, pools) through hwsim in every mode and convolution path, equal to the IR
reference bit for bit; and every export loads and runs in onnxruntime with default SessionOptions.
benchmarks/differential_campaign.py runs the same checks on thousands of graphs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from differential import hwsim_mismatches, ort_default_runs, random_feeds
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from irgen import FORMAT_NAMES, cnn_graphs
from modelgen import calibrated
from test_random_networks import RandomNet, networks

from qexport.errors import QExportError
from qexport.frontend.lower import lower
from qexport.targets import available_targets, load_target

TARGET_BITS = sorted({load_target(name).onnx_native_bits for name in available_targets()})
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WEIGHT_METHODS = ("lsq", "pot", "post", "apot", "codebook")
BIT_LIMITS = {"pot": (3, 8), "post": (3, 6), "apot": (3, 7)}


def _assert_hwsim_exact(graph, seed: int) -> None:
    rng = np.random.default_rng(seed)
    feeds = [random_feeds(graph, rng, batch) for batch in (1, 3, 3, 3)]  # the last replays (hwsim.replay)
    mismatches = {name: why for name, why in hwsim_mismatches(graph, feeds).items() if why is not None}
    assert not mismatches


@SETTINGS
@given(graph=cnn_graphs(), seed=st.integers(0, 2**32 - 1))
def test_hwsim_every_mode_equals_reference_on_random_cnns(graph, seed) -> None:
    _assert_hwsim_exact(graph, seed)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(FORMAT_NAMES), graph=st.data(), seed=st.integers(0, 2**32 - 1))
def test_hwsim_equals_reference_per_weight_format(fmt, graph, seed) -> None:
    """Every layer in one format (pot-only graphs are where the oneDNN padding bug showed)."""
    _assert_hwsim_exact(graph.draw(cnn_graphs(formats=(fmt,))), seed)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=networks(), weight_method=st.sampled_from(WEIGHT_METHODS), pow2=st.booleans())
def test_hwsim_every_mode_equals_reference_on_lowered_torch_nets(case, weight_method, pow2) -> None:
    in_channels, blocks, config, classes, seed, size = case
    low, high = BIT_LIMITS.get(weight_method, (2, 8))
    config = dataclasses.replace(
        config, weight_bits=min(max(config.weight_bits, low), high), weight_method=weight_method, pow2_scales=pow2
    )
    shape = (in_channels, size, size)
    qat, _ = calibrated(RandomNet(in_channels, blocks, classes), config, shape, seed)
    try:
        graph = lower(qat, shape, "random")
    except QExportError as error:  # front-end limits, tested with the front end
        assume(False, str(error))
    _assert_hwsim_exact(graph, seed)


@pytest.mark.parametrize("native_bits", TARGET_BITS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=cnn_graphs(), seed=st.integers(0, 2**32 - 1))
def test_exports_load_and_run_in_onnxruntime_with_default_options(native_bits, graph, seed) -> None:
    ort_default_runs(graph, random_feeds(graph, np.random.default_rng(seed), 2), native_bits)
