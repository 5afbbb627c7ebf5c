"""Generated C (qexport.export.c_code) against the IR reference and hwsim, bit for bit.

Every build uses -std=c99 -Wall -Wextra -Werror -pedantic; the hypothesis layers and graphs run under
AddressSanitizer + UndefinedBehaviorSanitizer. Cross builds skip only when their tool is absent.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from c_build import build
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from irgen import FORMAT_NAMES, bias_weight, chain_graphs, int_arrays, quantized_types, random_feed, weights

from hwsim.engine import Engine
from qexport.board_verify import run_model
from qexport.errors import GraphError
from qexport.export.c_code import write_c
from qexport.export.c_dot import BLOCK_MIN_OUTPUTS, BLOCK_N, DISABLED, blocked_layout
from qexport.export.c_pack import pack_rows
from qexport.ir.checker import check_graph
from qexport.ir.dtypes import IntType
from qexport.ir.graph import Graph, Node, QuantInfo, TensorInfo
from qexport.ir.ops import Op
from qexport.passes.infer_accumulator_bits import weighted_range
from qexport.pipeline import lower_checkpoint
from qexport.reference import quantize_input, run_float, run_graph
from qexport.targets import load_target, with_post_mac

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = sorted((ROOT / "models").glob("*.ckpt"))
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


def export(graph: Graph, tmp: Path) -> Path:
    write_c(graph, tmp)
    return tmp / "c"


def assert_same(got: dict, want: dict) -> None:
    assert got is not None
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], np.asarray(value, dtype=np.int64), err_msg=name)


def vnni_flags() -> list[list[str]]:
    """gcc flags that select the runtime's VNNI kernels of the blocked dot path this host can run."""
    cpuinfo = Path("/proc/cpuinfo")
    cpu = set(cpuinfo.read_text().split()) if cpuinfo.exists() else set()
    flags = []
    if {"avx512f", "avx512bw", "avx512_vnni"} <= cpu:
        flags.append(["-mavx512f", "-mavx512bw", "-mavx512vnni"])
    if {"avx2", "avx_vnni"} <= cpu:
        flags.append(["-mavx2", "-mavxvnni"])
    return flags


VNNI_FLAGS = vnni_flags()


def check_exact(graph: Graph, feeds: dict, tmp: Path, extra: list[str] | None = None) -> None:
    exe = build(export(graph, tmp), extra=extra)
    code, got, stderr = run_model(exe, graph, feeds)
    assert code == 0, stderr
    assert_same(got, run_graph(graph, feeds))


# --------------------------------------------------------------------------------------------- unit


def test_pack_rows_layout():
    codes = np.array([[1, 2, 3], [7, 0, 5]])
    packed, row_bytes = pack_rows(codes, 3)
    assert row_bytes == 2  # 9 bits -> 2 bytes per row, each row byte-aligned
    # row 0: bits 100 010 110 (LSB first) -> 0b11010001, 0b0; row 1: 111 000 101 -> 0b01000111, 0b1
    assert packed.tolist() == [0b11010001, 0b0, 0b01000111, 0b1]


# --------------------------------------------------------------------------------- hypothesis layers


@st.composite
def conv_layers(draw, fmt: str):
    """One conv2d (every format, padding up to past the kernel, stride, groups, dilation) + requantize."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    # 1-2 outputs per group take the dot path's row layout, 8-20 its blocked layout (c_dot.BLOCK_MIN_OUTPUTS)
    cout_g = draw(st.integers(1, 2)) if draw(st.booleans()) else draw(st.integers(BLOCK_MIN_OUTPUTS, 20))
    # blocked layers whose window rows are runs of 4k bytes (k_w x cin_g undilated, else cin_g) read the padded
    # copy in place (c_dot: im2col 0), the others through im2col rows
    cin, cout = groups * draw(st.sampled_from([1, 2, 4, 8])), groups * cout_g
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dil = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    stride = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    pad = draw(st.lists(st.integers(0, 3), min_size=4, max_size=4))
    # rows of 8 and 16+ pixels take the SSE2 channels-last pad (qx_pad4_sse2) as well as its scalar tail
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7) | st.integers(8, 40))
    oh = (h + pad[0] + pad[2] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + pad[1] + pad[3] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    assume(oh >= 1 and ow >= 1)
    x_dtype, x_zp = draw(quantized_types(2, 8))
    weight = draw(weights(fmt, (cout, cin // groups, kh, kw), "w", small=draw(st.booleans())))
    graph_weights = {"w": weight}
    bias = None
    if draw(st.booleans()):
        bias = "b"
        graph_weights["b"] = bias_weight(draw, "b", cout)
    x = TensorInfo("x", x_dtype, (-1, cin, h, w), QuantInfo(0.5, x_zp))
    attrs = dict(weight="w", bias=bias, stride=stride, padding=pad, dilation=dil, groups=groups)
    node = Node(Op.CONV2D, "conv", ["x"], ["acc"], attrs)
    graph = Graph("conv_graph", ["x"], ["acc"], {"x": x}, [node], graph_weights)
    graph.tensors["acc"] = TensorInfo("acc", IntType(True, 32), (-1, cout, oh, ow), QuantInfo(1.0, 0))
    low, high = weighted_range(graph, node)
    assume(low >= -(2**31) and high < 2**31)
    acc_type = IntType.for_range(min(low, -1), max(high, 1))
    graph.tensors["acc"].dtype = acc_type
    node.attrs["acc_bits"] = acc_type.bits
    return graph, add_requantize(draw, graph, "acc", cout), draw(st.integers(1, 3))


def add_requantize(draw, graph: Graph, acc: str, channels: int, operands: tuple[str, ...] = (), mode=None) -> str:
    out_dtype, out_zp = draw(quantized_types(2, 8))
    count = 1 if draw(st.booleans()) else channels
    acc_bits = graph.tensors[acc].dtype.bits
    multipliers, shifts = [], []
    for _ in range(count):
        if draw(st.booleans()):
            multipliers.append(1)
            shifts.append(draw(st.integers(-2, acc_bits)))
        else:
            bits = draw(st.integers(2, 31))
            multipliers.append(draw(st.integers(1 << (bits - 1), (1 << bits) - 1)))
            shifts.append(draw(st.integers(bits - 1, bits + acc_bits)))
    lo = draw(st.integers(out_dtype.min, out_dtype.max))
    hi = draw(st.integers(lo, out_dtype.max))
    name = f"{acc}_q"
    shape = graph.tensors[acc].shape
    graph.tensors[name] = TensorInfo(name, out_dtype, shape, QuantInfo(0.25, out_zp))
    attrs = dict(multiplier=multipliers, shift=shifts, clip_min=lo, clip_max=hi)
    if mode is not None:
        attrs["dynamic"] = mode
    graph.nodes.append(Node(Op.REQUANTIZE, f"{acc}_requant", [acc, *operands], [name], attrs))
    graph.outputs.append(name)
    return name


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@SETTINGS
@given(data=st.data())
def test_conv_layer_every_format(fmt, data, tmp_path_factory):
    """Both kernels: the int8 dot path where the layer qualifies (row or blocked layout; portable or VNNI code),
    and the general path (forced) as well."""
    graph, _, batch = data.draw(conv_layers(fmt))
    try:
        check_graph(graph)
    except GraphError:
        assume(False)
    feeds = {"x": random_feed(data.draw, graph.tensors["x"], batch)}
    if data.draw(st.booleans(), label="general path"):
        with mock.patch("qexport.export.c_code.plan_dot", lambda *_: dict(DISABLED)):
            check_exact(graph, feeds, tmp_path_factory.mktemp("conv"))
    else:  # the portable kernels, or the blocked layout's VNNI intrinsics where the host has them
        extra = data.draw(st.sampled_from([[], *VNNI_FLAGS]), label="kernel flags")
        check_exact(graph, feeds, tmp_path_factory.mktemp("conv"), extra)


def test_dot_path_is_taken_and_packed_channels_last(tmp_path):
    """W8A8-style conv: the dot path with the int8 weights used in place, rows in (u, v, c) order, convs with
    at least BLOCK_MIN_OUTPUTS outputs per group in the blocked layout."""
    _, graph = checkpoint_graphs()[0]
    c_dir = export(graph, tmp_path)
    data = (c_dir / "model_data.h").read_text()
    convs = [n for n in graph.nodes if n.op is Op.CONV2D]
    assert data.count("int8 dot products") == len(convs) + 1  # every conv and the linear layer
    assert "(const int8_t *)qxm_w0_packed" in data
    weight = graph.weights[convs[1].attrs["weight"]]
    bits = IntType.parse(str(weight.attrs["dtype"])).bits
    packed = re.search(r"qxm_w1_packed\[\d+\] = \{([^}]*)\}", data).group(1)
    got = [int(v) for v in packed.split(",") if v.strip()]
    codes = np.moveaxis(weight.arrays["values"], 1, 3).reshape(weight.shape[0], -1)
    if weight.shape[0] // convs[1].attrs["groups"] >= BLOCK_MIN_OUTPUTS and bits == 8:
        assert got == (blocked_layout(codes, convs[1].attrs["groups"]) & 0xFF).tolist()
    else:
        assert got == pack_rows(codes & ((1 << bits) - 1), bits)[0].tolist()


def test_blocked_layout():
    """[group][block of BLOCK_N outputs][K / 4][BLOCK_N][4], zero padded in K and in outputs."""
    ints = np.arange(1, 2 * 17 * 5 + 1).reshape(2 * 17, 5)  # 2 groups of 17 outputs, K = 5 (padded to 8)
    flat = blocked_layout(ints, 2)
    assert flat.size == 2 * 2 * BLOCK_N * 8
    tiles = flat.reshape(2, 2, 2, BLOCK_N, 4)  # group, block, K / 4, output, K % 4
    for g in range(2):
        for o in range(2 * BLOCK_N):
            for k in range(8):
                want = ints[g * 17 + o, k] if o < 17 and k < 5 else 0
                assert tiles[g, o // BLOCK_N, k // 4, o % BLOCK_N, k % 4] == want


@st.composite
def linear_layers(draw, fmt: str, dynamic: str | None):
    k, m = draw(st.integers(1, 24)), draw(st.integers(1, 6))
    x_dtype, x_zp = draw(quantized_types(2, 8))
    graph_weights = {"w": draw(weights(fmt, (m, k), "w", small=True))}
    bias = None
    if draw(st.booleans()):
        bias = "b"
        graph_weights["b"] = bias_weight(draw, "b", m)
    tensors = {"x": TensorInfo("x", x_dtype, (-1, k), QuantInfo(0.5, x_zp))}
    node = Node(Op.LINEAR, "fc", ["x"], ["acc"], dict(weight="w", bias=bias))
    graph = Graph("linear_graph", ["x"], ["acc"], tensors, [node], graph_weights)
    graph.tensors["acc"] = TensorInfo("acc", IntType(True, 32), (-1, m), QuantInfo(1.0, 0))
    low, high = weighted_range(graph, node)
    assume(low >= -(2**31) and high < 2**31)
    graph.tensors["acc"].dtype = IntType.for_range(min(low, -1), max(high, 1))
    operands = []
    for role in {"mul": ("num",), "div": ("den",), "muldiv": ("num", "den")}.get(dynamic, ()):
        dtype = draw(st.sampled_from([IntType(False, 8), IntType(True, 8), IntType(False, 12)]))
        graph.tensors[role] = TensorInfo(role, dtype, (-1,), QuantInfo(1.0, 0))
        graph.inputs.append(role)
        operands.append(role)
    add_requantize(draw, graph, "acc", m, tuple(operands), dynamic)
    return graph


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_linear_layer_every_format(fmt, data, tmp_path_factory):
    graph = data.draw(linear_layers(fmt, None))
    try:
        check_graph(graph)
    except GraphError:
        assume(False)
    feeds = {"x": random_feed(data.draw, graph.tensors["x"], data.draw(st.integers(1, 4)))}
    check_exact(graph, feeds, tmp_path_factory.mktemp("linear"))


@pytest.mark.parametrize("mode", ["mul", "div", "muldiv"])
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_dynamic_requantize(mode, data, tmp_path_factory):
    """ASQ's per-sample requantization: [N] multiplier and/or divisor operands."""
    graph = data.draw(linear_layers(data.draw(st.sampled_from(FORMAT_NAMES)), mode))
    try:
        check_graph(graph)
    except GraphError:
        assume(False)
    batch = data.draw(st.integers(1, 4))
    feeds = {"x": random_feed(data.draw, graph.tensors["x"], batch)}
    for role in ("num", "den"):
        if role in graph.tensors:
            info = graph.tensors[role]
            feeds[role] = int_arrays(data.draw, (batch,), max(info.dtype.min, 1), info.dtype.max, dtype=np.int64)
    check_exact(graph, feeds, tmp_path_factory.mktemp("dynamic"))


def test_dynamic_divisor_must_be_positive(tmp_path):
    graph = Graph("div", ["x", "den"], [], {}, [], {})
    graph.tensors["x"] = TensorInfo("x", IntType(True, 16), (-1, 2), QuantInfo(1.0, 0))
    graph.tensors["den"] = TensorInfo("den", IntType(True, 8), (-1,), QuantInfo(1.0, 0))
    graph.tensors["y"] = TensorInfo("y", IntType(True, 8), (-1, 2), QuantInfo(1.0, 0))
    graph.nodes.append(Node(Op.REQUANTIZE, "rq", ["x", "den"], ["y"], dict(multiplier=[1], shift=[0],
                       clip_min=-128, clip_max=127, dynamic="div")))  # fmt: skip
    graph.outputs.append("y")
    check_graph(graph)
    exe = build(export(graph, tmp_path))
    feeds = {"x": np.array([[5, -7], [3, 9]]), "den": np.array([2, 0])}
    code, _, stderr = run_model(exe, graph, feeds)
    assert code == 1 and "divisor" in stderr
    ok = {"x": feeds["x"][:1], "den": feeds["den"][:1]}
    code, got, _ = run_model(exe, graph, ok)
    assert code == 0
    assert_same(got, run_graph(graph, ok))  # 5 / 2 -> 2, -7 / 2 -> -4 (ties to even)


def test_input_outside_type_is_refused(tmp_path):
    graph = checkpoint_graphs()[0][1]
    exe = build(export(graph, tmp_path))
    info = graph.tensors[graph.inputs[0]]
    feeds = {graph.inputs[0]: np.full((1, *info.shape[1:]), info.dtype.max + 1)}
    code, _, stderr = run_model(exe, graph, feeds)
    assert code == 1 and "outside" in stderr


@SETTINGS
@given(graph=chain_graphs(), data=st.data())
def test_chain_graphs(graph, data, tmp_path_factory):
    """conv, requantize, relu, add, pools, concat, flatten, linear in random small networks."""
    feeds = {name: random_feed(data.draw, graph.tensors[name], data.draw(st.integers(1, 3))) for name in graph.inputs}
    try:
        check_graph(graph)
        want = run_graph(graph, feeds)
    except Exception:  # noqa: BLE001 - a generated graph whose accumulators overflow their declared type
        assume(False)
    exe = build(export(graph, tmp_path_factory.mktemp("chain")))
    code, got, stderr = run_model(exe, graph, feeds)
    assert code == 0, stderr
    assert_same(got, want)


# ------------------------------------------------------------------------------------ checkpoints


def iter_checkpoint_graphs():
    fpga = load_target("fpga")
    for path in CHECKPOINTS:
        yield path.stem, lower_checkpoint(path, fpga).graph
        if path.stem.endswith("_post"):
            yield path.stem + "_split", lower_checkpoint(path, with_post_mac(fpga, "split")).graph


CHECKPOINT_GRAPHS = None


def checkpoint_graphs() -> list[tuple[str, Graph]]:
    global CHECKPOINT_GRAPHS
    if CHECKPOINT_GRAPHS is None:
        CHECKPOINT_GRAPHS = list(iter_checkpoint_graphs())
    return CHECKPOINT_GRAPHS


def digits_feeds(graph: Graph, count: int = 64) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    images = load_digits().images[:count].astype(np.float32)[:, None] / 16.0
    info = graph.tensors[graph.inputs[0]]
    return {graph.inputs[0]: quantize_input(info, images)}, images


def make(c_dir: Path, *targets: str) -> subprocess.CompletedProcess:
    result = subprocess.run(["make", "-C", str(c_dir), *targets], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.parametrize("index", range(len(CHECKPOINTS) + 1))
def test_checkpoints_host_and_sanitizers(index, tmp_path):
    """`make model check` as docs/boards.md runs it; equal to the reference and hwsim on real digits."""
    name, graph = checkpoint_graphs()[index]
    c_dir = export(graph, tmp_path)
    make(c_dir, "model", "model-check")
    feeds, _ = digits_feeds(graph)
    want = run_graph(graph, feeds)
    hw, _ = Engine(graph).run(feeds)
    assert_same(hw, want)
    for exe in ("model", "model-check"):
        code, got, stderr = run_model(c_dir / exe, graph, feeds)
        assert code == 0, f"{name}: {stderr}"
        assert_same(got, want)


def test_float_boundary(tmp_path):
    """main.c without -q quantizes float32 inputs and dequantizes outputs like the ONNX boundary."""
    _, graph = checkpoint_graphs()[0]
    c_dir = export(graph, tmp_path)
    make(c_dir, "model")
    _, images = digits_feeds(graph)
    images = images * np.float32(1.37) - np.float32(0.2)  # values off the grid and out of range too
    images.astype("<f4").tofile(tmp_path / "x.bin")
    subprocess.run([str(c_dir / "model"), str(tmp_path / "x.bin"), str(tmp_path / "y.bin")], check=True)
    want = run_float(graph, {graph.inputs[0]: images})[graph.outputs[0]]
    got = np.fromfile(tmp_path / "y.bin", dtype="<f4").reshape(want.shape)
    np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------------- cross builds

AARCH64 = shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64")
needs_aarch64 = pytest.mark.skipif(not AARCH64, reason="aarch64-linux-gnu-gcc or qemu-aarch64 not installed")
needs_arm = pytest.mark.skipif(not shutil.which("arm-none-eabi-gcc"), reason="arm-none-eabi-gcc not installed")


@needs_aarch64
def test_checkpoints_aarch64_under_qemu(tmp_path):
    for name, graph in checkpoint_graphs():
        c_dir = export(graph, tmp_path / name)
        make(c_dir, "aarch64")
        feeds, _ = digits_feeds(graph, 16)
        code, got, stderr = run_model(c_dir / "model-aarch64", graph, feeds, runner=["qemu-aarch64"])
        assert code == 0, f"{name}: {stderr}"
        assert_same(got, run_graph(graph, feeds))


@needs_aarch64
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(graph=chain_graphs(), data=st.data())
def test_chain_graphs_aarch64(graph, data, tmp_path_factory):
    feeds = {name: random_feed(data.draw, graph.tensors[name], 2) for name in graph.inputs}
    try:
        check_graph(graph)
        want = run_graph(graph, feeds)
    except Exception:  # noqa: BLE001
        assume(False)
    c_dir = export(graph, tmp_path_factory.mktemp("a64"))
    exe = build(c_dir, cc="aarch64-linux-gnu-gcc", flags=["-O2"], extra=["-static"])
    code, got, stderr = run_model(exe, graph, feeds, runner=["qemu-aarch64"])
    assert code == 0, stderr
    assert_same(got, want)


@needs_aarch64
@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_conv_layer_every_format_aarch64(fmt, data, tmp_path_factory):
    """The conv hypothesis layers (padding, stride, groups, dilation) cross-built -O3 and run under qemu."""
    graph, _, batch = data.draw(conv_layers(fmt))
    try:
        check_graph(graph)
    except GraphError:
        assume(False)
    feeds = {"x": random_feed(data.draw, graph.tensors["x"], batch)}
    exe = build(export(graph, tmp_path_factory.mktemp("a64conv")), cc="aarch64-linux-gnu-gcc", flags=["-O3"],
                extra=["-static"])  # fmt: skip
    code, got, stderr = run_model(exe, graph, feeds, runner=["qemu-aarch64"])
    assert code == 0, stderr
    assert_same(got, run_graph(graph, feeds))


def m4_size(c_dir: Path) -> dict[str, int]:
    """text / data / bss of the Cortex-M4 library image (`make cortex-m4`)."""
    output = make(c_dir, "cortex-m4").stdout
    match = re.search(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+\d+\s+[0-9a-f]+\s+\S*model-m4\.elf", output, re.MULTILINE)
    assert match, output
    return dict(zip(("text", "data", "bss"), map(int, match.groups()), strict=True))


@needs_arm
def test_cortex_m4_builds_without_libc(tmp_path):
    for name, graph in checkpoint_graphs():
        c_dir = export(graph, tmp_path / name)
        size = m4_size(c_dir)
        context_arena = int(re.search(r"#define QXM_ARENA_BYTES (\d+)", (c_dir / "model.h").read_text()).group(1))
        assert size["bss"] >= context_arena, name  # the static arena is the RAM the model needs
        nm = subprocess.run(["arm-none-eabi-nm", "-u", str(c_dir / "model-m4.elf")], capture_output=True, text=True)
        assert nm.stdout.strip() == "", f"{name}: undefined symbols {nm.stdout}"
