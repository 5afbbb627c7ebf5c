"""Generated HLS C++ (qexport.export.hls_code): C simulation with g++ -std=c++17 -Wall -Wextra -Werror against
the ap_types of the hls4ml package, bit for bit against the IR reference."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from irgen import FORMAT_NAMES, chain_graphs, random_feed
from test_c_export import assert_same, checkpoint_graphs, conv_layers, digits_feeds

from qexport.board_verify import pack_inputs, unpack_outputs
from qexport.errors import GraphError
from qexport.export.hls_code import ap_types_dir, write_hls
from qexport.ir.checker import check_graph
from qexport.ir.graph import Graph
from qexport.reference import run_graph

pytestmark = [
    pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed"),
    pytest.mark.skipif(ap_types_dir() is None, reason="hls4ml (the ap_types headers) not installed"),
]
HLS_SETTINGS = settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))


def csim(graph: Graph, feeds: dict, tmp: Path) -> dict:
    write_hls(graph, tmp)
    hls = tmp / "hls"
    build = subprocess.run(["make", "-C", str(hls), "csim"], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    pack_inputs(graph, feeds).astype("<i4").tofile(hls / "in.bin")
    run = subprocess.run([str(hls / "csim"), str(hls / "in.bin"), str(hls / "out.bin")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return unpack_outputs(graph, np.fromfile(hls / "out.bin", dtype="<i4"), next(iter(feeds.values())).shape[0])


def test_hls_files_and_pragmas(tmp_path):
    _, graph = checkpoint_graphs()[0]
    written = {p.name for p in write_hls(graph, tmp_path)}
    assert written == {"qx_hls.h", "tb.cpp", "model_hls.h", "model.cpp", "Makefile"}
    model = (tmp_path / "hls" / "model.cpp").read_text()
    assert "QX_HLS(INTERFACE" in model and "ap_uint<" in model and "ap_int<" in model
    assert str(ap_types_dir()) in (tmp_path / "hls" / "Makefile").read_text()
    assert not any(p.name.startswith("ap_") for p in (tmp_path / "hls").iterdir())  # ap_types are not copied


@pytest.mark.parametrize("index", range(len(checkpoint_graphs())))
def test_checkpoints_csim(index, tmp_path):
    name, graph = checkpoint_graphs()[index]
    feeds, _ = digits_feeds(graph, 32)
    assert_same(csim(graph, feeds, tmp_path), run_graph(graph, feeds))


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@HLS_SETTINGS
@given(data=st.data())
def test_conv_layer_csim(fmt, data, tmp_path_factory):
    graph, _, batch = data.draw(conv_layers(fmt))
    try:
        check_graph(graph)
    except GraphError:
        assume(False)
    feeds = {"x": random_feed(data.draw, graph.tensors["x"], batch)}
    assert_same(csim(graph, feeds, tmp_path_factory.mktemp("hconv")), run_graph(graph, feeds))


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(graph=chain_graphs(), data=st.data())
def test_chain_graphs_csim(graph, data, tmp_path_factory):
    feeds = {name: random_feed(data.draw, graph.tensors[name], 2) for name in graph.inputs}
    try:
        check_graph(graph)
        want = run_graph(graph, feeds)
    except Exception:  # noqa: BLE001 - a generated graph whose accumulators overflow their declared type
        assume(False)
    assert_same(csim(graph, feeds, tmp_path_factory.mktemp("hchain")), want)
