"""Tests of hwsim.cost.systolic against a register-level systolic-array simulation written here.

The reference moves every operand one PE per cycle (with the skew of a real array), really computes
the convolution through im2col on it, checks the result against a direct convolution, and counts
the cycles of every fold. Its conventions are SCALE-Sim 3.0.0's: ws/is first shift the stationary
tile in, one row per cycle; a fold ends when the wavefront has crossed the whole physical array
(partial folds are padded with zeros); os results are read out while the next fold starts; the
reported count is the index of the last cycle (total - 1).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hwsim.cost.systolic import (
    DATAFLOWS,
    ConvShape,
    MemoryConfig,
    compute_cycles,
    fold_plan,
    layer_cost,
    memory_cost,
)

# ---------------------------------------------------------------- reference: register-level array


def stationary_fold(weights: np.ndarray, stream: np.ndarray) -> tuple[np.ndarray, int]:
    """Stationary tile ``weights`` (R x C) loaded from the top, ``stream`` (n x R) entering from the
    left with a one-cycle skew per row; partial sums flow down. Returns (n x C outputs, cycles)."""
    rows, cols = weights.shape
    loaded = np.zeros_like(weights)
    for cycle in range(rows):  # preload: the tile shifts down one row per cycle
        loaded = np.vstack([weights[rows - 1 - cycle][None, :], loaded[:-1]])
    assert (loaded == weights).all()
    n = stream.shape[0]
    act, act_tag = np.zeros((rows, cols), np.int64), np.full((rows, cols), -1)
    psum, psum_tag = np.zeros((rows, cols), np.int64), np.full((rows, cols), -1)
    out, last, cycle = np.zeros((n, cols), np.int64), -1, 0
    while cycle < n + rows + cols:  # enough cycles for any wavefront to leave
        edge_tag = np.array([cycle - i if 0 <= cycle - i < n else -1 for i in range(rows)])
        edge = np.array([stream[t, i] if t >= 0 else 0 for i, t in enumerate(edge_tag)])
        act, act_tag = np.hstack([edge[:, None], act[:, :-1]]), np.hstack([edge_tag[:, None], act_tag[:, :-1]])
        above, above_tag = (
            np.vstack([np.zeros((1, cols), np.int64), psum[:-1]]),
            np.vstack([act_tag[:1], psum_tag[:-1]]),
        )
        assert (above_tag == act_tag).all(), "partial sum met the wrong activation"
        psum, psum_tag = above + act * weights, act_tag
        for j in range(cols):
            if psum_tag[-1, j] >= 0:
                out[psum_tag[-1, j], j], last = psum[-1, j], cycle
        cycle += 1
    return out, rows + last + 1


def output_stationary_fold(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, int]:
    """``a`` (R x T) from the left, ``b`` (T x C) from the top, both skewed; PE(i, j) accumulates
    ``a[i] . b[:, j]``. Returns (R x C results, cycles up to and including the last MAC)."""
    rows, t = a.shape
    cols = b.shape[1]
    h, h_tag = np.zeros((rows, cols), np.int64), np.full((rows, cols), -1)
    v, v_tag = np.zeros((rows, cols), np.int64), np.full((rows, cols), -1)
    acc, last = np.zeros((rows, cols), np.int64), -1
    for cycle in range(t + rows + cols):
        left_tag = np.array([cycle - i if 0 <= cycle - i < t else -1 for i in range(rows)])
        top_tag = np.array([cycle - j if 0 <= cycle - j < t else -1 for j in range(cols)])
        left = np.array([a[i, k] if k >= 0 else 0 for i, k in enumerate(left_tag)])
        top = np.array([b[k, j] if k >= 0 else 0 for j, k in enumerate(top_tag)])
        h, h_tag = np.hstack([left[:, None], h[:, :-1]]), np.hstack([left_tag[:, None], h_tag[:, :-1]])
        v, v_tag = np.vstack([top[None, :], v[:-1]]), np.vstack([top_tag[None, :], v_tag[:-1]])
        meet = h_tag >= 0
        assert (h_tag[meet] == v_tag[meet]).all(), "operands out of step"
        acc += np.where(meet, h * v, 0)
        if meet.any():
            last = cycle
    return acc, last + 1


def blocks(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def padded(m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, np.int64)
    out[: m.shape[0], : m.shape[1]] = m
    return out


def reference_gemm(a: np.ndarray, b: np.ndarray, rows: int, cols: int, dataflow: str) -> tuple[np.ndarray, int, float]:
    """O = a @ b on the simulated array, fold by fold. Returns (O, cycles, mean mapping efficiency)."""
    sr, t = a.shape
    sc = b.shape[1]
    out, cycles, used = np.zeros((sr, sc), np.int64), 0, []
    if dataflow == "os":
        for fc in blocks(sc, cols):
            for fr in blocks(sr, rows):
                res, n = output_stationary_fold(padded(a[fr], (rows, t)), padded(b[:, fc], (t, cols)))
                out[fr, fc], cycles = res[: fr.stop - fr.start, : fc.stop - fc.start], cycles + n
                used.append((fr.stop - fr.start) * (fc.stop - fc.start))
    elif dataflow == "ws":
        for fc in blocks(sc, cols):
            for fr in blocks(t, rows):
                res, n = stationary_fold(padded(b[fr, fc], (rows, cols)), padded(a[:, fr], (sr, rows)))
                out[:, fc], cycles = out[:, fc] + res[:, : fc.stop - fc.start], cycles + n
                used.append((fr.stop - fr.start) * (fc.stop - fc.start))
    else:  # is: ifmap tile (window x pixels) stationary, filters streamed
        for fc in blocks(sr, cols):
            for fr in blocks(t, rows):
                res, n = stationary_fold(padded(a[fc, fr].T, (rows, cols)), padded(b[fr, :].T, (sc, rows)))
                out[fc, :], cycles = out[fc, :] + res[:, : fc.stop - fc.start].T, cycles + n
                used.append((fr.stop - fr.start) * (fc.stop - fc.start))
    return out, cycles, float(np.mean(used)) / (rows * cols)


def im2col(x: np.ndarray, s: ConvShape) -> np.ndarray:
    """(batch, C, H, W) -> (batch * out_h * out_w, kh * kw * C) in SCALE-Sim's (kh, kw, c) order."""
    top, left, bottom, right = s.pad
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    rows = []
    for img in xp:
        for oy in range(s.out_h):
            for ox in range(s.out_w):
                patch = img[
                    :, oy * s.stride_h : oy * s.stride_h + s.kernel_h, ox * s.stride_w : ox * s.stride_w + s.kernel_w
                ]
                rows.append(patch.transpose(1, 2, 0).reshape(-1))
    return np.array(rows, np.int64).reshape(-1, s.kernel_h * s.kernel_w * x.shape[1])


def reference_conv(s: ConvShape, rows: int, cols: int, dataflow: str, batch: int, seed: int) -> tuple[int, float]:
    """Run every group of the conv on the simulated array, check the result against torch's conv2d
    and return (SCALE-Sim-style cycle count, mapping efficiency)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-8, 8, (batch, s.channels, s.in_h, s.in_w))
    w = rng.integers(-8, 8, (s.filters, s.channels // s.groups, s.kernel_h, s.kernel_w))
    cg, fg = s.channels // s.groups, s.filters // s.groups
    total, effs, outs = 0, [], []
    for g in range(s.groups):
        a = im2col(x[:, g * cg : (g + 1) * cg], s)
        b = w[g * fg : (g + 1) * fg].transpose(2, 3, 1, 0).reshape(-1, fg)
        o, cycles, eff = reference_gemm(a, b, rows, cols, dataflow)
        total, effs, outs = total + cycles, effs + [eff], outs + [o]
    got = np.concatenate(outs, axis=1).reshape(batch, s.out_h, s.out_w, s.filters).transpose(0, 3, 1, 2)
    xt = torch.nn.functional.pad(torch.from_numpy(x).double(), (s.pad[1], s.pad[3], s.pad[0], s.pad[2]))
    want = torch.nn.functional.conv2d(
        xt, torch.from_numpy(w).double(), stride=(s.stride_h, s.stride_w), groups=s.groups
    )
    np.testing.assert_array_equal(got, want.numpy().astype(np.int64))
    return total - 1, float(np.mean(effs))


# ---------------------------------------------------------------- strategies


@st.composite
def conv_shapes(draw: st.DrawFn, max_hw: int = 6, max_ch: int = 4) -> ConvShape:
    groups = draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pad = tuple(draw(st.integers(0, 1)) for _ in range(4))
    in_h = draw(st.integers(max(1, kh - pad[0] - pad[2]), max_hw))
    in_w = draw(st.integers(max(1, kw - pad[1] - pad[3]), max_hw))
    return ConvShape(
        in_h=in_h, in_w=in_w, channels=groups * draw(st.integers(1, max_ch)),
        filters=groups * draw(st.integers(1, 5)), kernel_h=kh, kernel_w=kw,
        stride_h=draw(st.integers(1, 2)), stride_w=draw(st.integers(1, 2)), pad=pad, groups=groups,
    )  # fmt: skip


arrays = st.integers(1, 5)
dataflows = st.sampled_from(DATAFLOWS)


# ---------------------------------------------------------------- compute cycles vs the reference


@settings(max_examples=60, deadline=None)
@given(conv_shapes(), arrays, arrays, dataflows, st.integers(1, 2), st.integers(0, 2**16))
def test_compute_cycles_match_register_level_reference(s, rows, cols, dataflow, batch, seed):
    cycles, eff = reference_conv(s, rows, cols, dataflow, batch, seed)
    assert compute_cycles(s, rows, cols, dataflow, batch) == cycles
    cost = layer_cost(s, rows, cols, dataflow, batch)
    assert cost.mapping_efficiency == pytest.approx(eff)
    assert cost.utilization == pytest.approx(s.macs(batch) / (rows * cols * (cycles + 1)))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 12), arrays, arrays, dataflows)
def test_linear_layer_is_a_gemm(in_f, out_f, batch, rows, cols, dataflow):
    s = ConvShape.linear(in_f, out_f)
    assert (s.out_h, s.out_w, s.ofmap_pixels, s.window, s.filters) == (1, 1, 1, in_f, out_f)
    a, b = np.ones((batch, in_f), np.int64), np.ones((in_f, out_f), np.int64)
    out, cycles, _ = reference_gemm(a, b, rows, cols, dataflow)
    assert (out == in_f).all()
    assert compute_cycles(s, rows, cols, dataflow, batch) == cycles - 1


# ---------------------------------------------------------------- closed forms and SCALE-Sim values

# Measured with SCALE-Sim 3.0.0 (numpy 2.3.5, 1024 kB SRAMs): (in_h, in_w, kh, kw, C, F, stride) of
# an unpadded layer, array rows, cols, dataflow -> compute cycles.
SCALESIM = [
    ((34, 34, 3, 3, 16, 16, 1), 8, 8, "os", 40447),
    ((34, 34, 3, 3, 16, 16, 1), 8, 8, "ws", 37655),
    ((34, 34, 3, 3, 3, 16, 1), 8, 8, "ws", 8367),
    ((34, 34, 3, 3, 16, 16, 1), 8, 8, "is", 87551),
    ((33, 33, 3, 3, 16, 32, 2), 8, 8, "os", 20223),
    ((31, 31, 1, 1, 16, 32, 2), 8, 8, "os", 3839),
    ((10, 10, 3, 3, 64, 64, 1), 8, 8, "os", 37759),
    ((1, 1, 1, 1, 64, 10, 1), 8, 8, "os", 155),
    ((4, 4, 3, 3, 2, 3, 1), 4, 4, "os", 23),
    ((6, 6, 2, 2, 3, 5, 2), 4, 4, "os", 107),  # measured as 5x5: SCALE-Sim rounds the output size up
    ((1, 1, 1, 1, 64, 10, 1), 4, 4, "os", 209),
]


@pytest.mark.parametrize(("layer", "rows", "cols", "dataflow", "cycles"), SCALESIM)
def test_measured_scalesim_values(layer, rows, cols, dataflow, cycles):
    h, w, kh, kw, c, f, stride = layer
    s = ConvShape(h, w, c, f, kh, kw, stride, stride)
    assert compute_cycles(s, rows, cols, dataflow) == cycles


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 64), st.integers(1, 64), st.integers(1, 300), dataflows)
def test_gemm_filling_the_array_exactly_is_one_fold(rows, cols, temporal, dataflow):
    # choose the spatial dims equal to the array, so there is exactly one fold
    if dataflow == "os":  # Sr = rows (pixels along a 1 x rows input), Sc = cols, T = temporal
        s, expected = ConvShape(1, rows, temporal, cols), temporal + rows + cols - 2
    elif dataflow == "ws":  # T = rows, Sc = cols, Sr = temporal
        s, expected = ConvShape(1, temporal, rows, cols), 2 * rows + cols + temporal - 2
    else:  # T = rows, Sr = cols, Sc = temporal
        s, expected = ConvShape(1, cols, rows, temporal), 2 * rows + cols + temporal - 2
    assert fold_plan(s, rows, cols, dataflow).folds == 1
    assert compute_cycles(s, rows, cols, dataflow) == expected - 1


def test_resnet20_stem_closed_form():
    s = ConvShape(32, 32, 3, 16, 3, 3, 1, 1, pad=(1, 1, 1, 1))
    assert (s.out_h, s.out_w, s.window, s.touched_h) == (32, 32, 27, 34)
    assert compute_cycles(s, 16, 16, "os") == 64 * (27 + 16 + 16 - 2) - 1
    assert compute_cycles(s, 16, 16, "ws") == 2 * (32 + 16 + 1024 - 2) - 1
    assert compute_cycles(s, 16, 16, "is") == 2 * 64 * (32 + 16 + 16 - 2) - 1


@settings(max_examples=50, deadline=None)
@given(conv_shapes(), st.integers(1, 4), arrays, arrays, dataflows)
def test_groups_run_one_after_another(s, batch, rows, cols, dataflow):
    one = ConvShape(s.in_h, s.in_w, s.channels // s.groups, s.filters // s.groups, s.kernel_h, s.kernel_w,
                    s.stride_h, s.stride_w, s.pad)  # fmt: skip
    single = compute_cycles(one, rows, cols, dataflow, batch) + 1
    assert compute_cycles(s, rows, cols, dataflow, batch) + 1 == s.groups * single


@settings(max_examples=50, deadline=None)
@given(conv_shapes(max_hw=12), st.integers(1, 2))
def test_output_size_matches_torch(s, batch):
    x = torch.zeros(batch, s.channels, s.in_h, s.in_w)
    x = torch.nn.functional.pad(x, (s.pad[1], s.pad[3], s.pad[0], s.pad[2]))
    w = torch.zeros(s.filters, s.channels // s.groups, s.kernel_h, s.kernel_w)
    y = torch.nn.functional.conv2d(x, w, stride=(s.stride_h, s.stride_w), groups=s.groups)
    assert y.shape == (batch, s.filters, s.out_h, s.out_w)
    # SCALE-Sim never pads: ceil((in - k + s) / s) on the touched size gives the same output
    assert math.ceil((s.touched_h - s.kernel_h + s.stride_h) / s.stride_h) == s.out_h
    assert math.ceil((s.touched_w - s.kernel_w + s.stride_w) / s.stride_w) == s.out_w


def test_invalid_inputs_are_rejected():
    with pytest.raises(ValueError):
        ConvShape(4, 4, 3, 4, groups=2)
    with pytest.raises(ValueError):
        ConvShape(2, 2, 1, 1, kernel_h=3)
    with pytest.raises(ValueError):
        compute_cycles(ConvShape(4, 4, 1, 1), 4, 4, "rs")
    with pytest.raises(ValueError):
        compute_cycles(ConvShape(4, 4, 1, 1), 0, 4, "os")


# ---------------------------------------------------------------- monotonicity and bounds

big_shapes = conv_shapes(max_hw=40, max_ch=64)
big_arrays = st.integers(1, 64)


@settings(max_examples=150, deadline=None)
@given(big_shapes, big_arrays, big_arrays, st.integers(0, 32), st.integers(0, 32), dataflows)
def test_bigger_array_never_more_folds_and_only_pays_its_fill(s, rows, cols, more_rows, more_cols, dataflow):
    small, large = fold_plan(s, rows, cols, dataflow), fold_plan(s, rows + more_rows, cols + more_cols, dataflow)
    assert large.folds <= small.folds
    # A bigger array is never slower except for its longer fill/drain: with per-fold fill f(R, C)
    # (os: R + C - 2, ws/is: 2R + C - 2) it costs at most folds_small * (f_large - f_small) more.
    extra_fill = (1 if dataflow == "os" else 2) * more_rows + more_cols
    assert compute_cycles(s, rows + more_rows, cols + more_cols, dataflow) <= (
        compute_cycles(s, rows, cols, dataflow) + small.folds * extra_fill
    )


def test_more_rows_can_be_slower_because_of_fill():
    # "more rows is never slower" does not hold: T = 9 fits 9 or 10 rows in one fold either way,
    # and the 10-row array has a longer fill/drain.
    s = ConvShape(8, 8, 1, 4, 3, 3)
    assert compute_cycles(s, 10, 4, "ws") > compute_cycles(s, 9, 4, "ws")


@settings(max_examples=150, deadline=None)
@given(big_shapes, big_arrays, big_arrays, dataflows, st.sampled_from(["in", "channels", "filters", "batch"]))
def test_more_work_is_never_faster(s, rows, cols, dataflow, grow):
    batch = 1
    if grow == "in":
        bigger = ConvShape(s.in_h + 1, s.in_w + 1, s.channels, s.filters, s.kernel_h, s.kernel_w,
                           s.stride_h, s.stride_w, s.pad, s.groups)  # fmt: skip
    elif grow == "channels":
        bigger = ConvShape(s.in_h, s.in_w, s.channels + s.groups, s.filters, s.kernel_h, s.kernel_w,
                           s.stride_h, s.stride_w, s.pad, s.groups)  # fmt: skip
    elif grow == "filters":
        bigger = ConvShape(s.in_h, s.in_w, s.channels, s.filters + s.groups, s.kernel_h, s.kernel_w,
                           s.stride_h, s.stride_w, s.pad, s.groups)  # fmt: skip
    else:
        bigger, batch = s, 2
    assert compute_cycles(bigger, rows, cols, dataflow, batch) >= compute_cycles(s, rows, cols, dataflow)


@settings(max_examples=150, deadline=None)
@given(big_shapes, big_arrays, big_arrays, dataflows, st.integers(1, 8))
def test_utilization_bounded_by_mapping_efficiency(s, rows, cols, dataflow, batch):
    cost = layer_cost(s, rows, cols, dataflow, batch)
    assert 0 < cost.utilization <= cost.mapping_efficiency <= 1
    assert cost.cycles >= math.ceil(s.macs(batch) / (rows * cols)) - 1
    assert cost.folds == fold_plan(s, rows, cols, dataflow, batch).folds


# ---------------------------------------------------------------- memory model

sram = st.integers(64, 1 << 20)
bandwidth = st.floats(0.5, 256)


@settings(max_examples=150, deadline=None)
@given(big_shapes, big_arrays, big_arrays, dataflows, sram, sram, sram, bandwidth, st.booleans())
def test_memory_cost_invariants(s, rows, cols, dataflow, if_sram, f_sram, o_sram, bw, im2col):
    mem = MemoryConfig(if_sram, f_sram, o_sram, bw, ifmap_im2col=im2col)
    cost = memory_cost(s, rows, cols, dataflow, mem)
    ifmap = s.ofmap_pixels * s.window * s.groups if im2col else s.in_h * s.in_w * s.channels
    assert cost.compute_cycles == compute_cycles(s, rows, cols, dataflow)
    assert cost.stall_cycles >= cost.prologue_cycles + cost.epilogue_cycles >= 0
    assert cost.ifmap_read_bytes >= ifmap and cost.filter_read_bytes >= s.window * s.filters
    assert cost.dram_write_bytes >= s.ofmap_pixels * s.filters
    transfer = (cost.dram_read_bytes + cost.dram_write_bytes) / bw
    assert cost.total_cycles >= max(cost.compute_cycles, transfer - 1)
    faster = memory_cost(s, rows, cols, dataflow, MemoryConfig(if_sram, f_sram, o_sram, 2 * bw, ifmap_im2col=im2col))
    assert faster.stall_cycles <= cost.stall_cycles
    bigger = MemoryConfig(2 * if_sram, 2 * f_sram, 2 * o_sram, bw, ifmap_im2col=im2col)
    assert memory_cost(s, rows, cols, dataflow, bigger).dram_read_bytes <= cost.dram_read_bytes


@settings(max_examples=100, deadline=None)
@given(big_shapes, big_arrays, big_arrays, dataflows)
def test_memory_cost_with_huge_srams_reads_everything_once(s, rows, cols, dataflow):
    mem = MemoryConfig(1 << 30, 1 << 30, 1 << 30, 1e12, bytes_per_element=2, ofmap_bytes_per_element=4)
    cost = memory_cost(s, rows, cols, dataflow, mem)
    assert cost.ifmap_read_bytes == 2 * s.in_h * s.in_w * s.channels
    assert cost.filter_read_bytes == 2 * s.window * s.filters
    assert cost.dram_write_bytes == 4 * s.ofmap_pixels * s.filters and cost.ofmap_read_bytes == 0
    assert cost.stall_cycles == 2  # one cycle of first-fold fill, one of last write-back


def test_memory_cost_bandwidth_bound_layer():
    # 1x1 conv with 4096 pixels x 64 -> 64 channels on a 32x32 array, 1 byte/cycle: DRAM dominates.
    s = ConvShape(64, 64, 64, 64)
    mem = MemoryConfig(1 << 20, 1 << 20, 1 << 20, dram_bytes_per_cycle=1)
    cost = memory_cost(s, 32, 32, "ws", mem)
    traffic = 64 * 64 * 64 + 64 * 64 + 64 * 64 * 64
    assert cost.dram_read_bytes + cost.dram_write_bytes == traffic
    assert cost.total_cycles == max(traffic, cost.compute_cycles + cost.prologue_cycles + cost.epilogue_cycles)
    assert cost.total_cycles == traffic


def test_memory_cost_small_sram_refetches_the_streamed_operand():
    s = ConvShape(32, 32, 16, 64, 3, 3, pad=(1, 1, 1, 1))
    small = MemoryConfig(1024, 1 << 20, 1 << 20, 8)
    plan = fold_plan(s, 16, 16, "ws")
    assert memory_cost(s, 16, 16, "ws", small).ifmap_read_bytes == plan.col_folds * 32 * 32 * 16
    # is re-streams filters instead
    assert memory_cost(s, 16, 16, "is", MemoryConfig(1 << 20, 1024, 1 << 20, 8)).filter_read_bytes == (
        fold_plan(s, 16, 16, "is").col_folds * 9 * 16 * 64
    )


def test_memory_cost_spills_partial_sums_that_do_not_fit():
    s = ConvShape(16, 16, 64, 32, 3, 3, pad=(1, 1, 1, 1))  # T = 576: 36 row folds on 16 rows
    ofmap = 16 * 16 * 32 * 4
    for dataflow in ("ws", "is"):
        folds = fold_plan(s, 16, 16, dataflow).row_folds
        roomy = memory_cost(s, 16, 16, dataflow, MemoryConfig(1 << 20, 1 << 20, 1 << 20, 8, ofmap_bytes_per_element=4))
        tight = memory_cost(s, 16, 16, dataflow, MemoryConfig(1 << 20, 1 << 20, 1024, 8, ofmap_bytes_per_element=4))
        assert (roomy.ofmap_read_bytes, roomy.dram_write_bytes) == (0, ofmap)
        assert (tight.ofmap_read_bytes, tight.dram_write_bytes) == ((folds - 1) * ofmap, folds * ofmap)
        assert tight.stall_cycles > roomy.stall_cycles


def test_memory_cost_spills_partial_sums_at_accumulator_width():
    s = ConvShape(16, 16, 64, 32, 3, 3, pad=(1, 1, 1, 1))
    outputs = 16 * 16 * 32
    for dataflow in ("ws", "is"):
        plan = fold_plan(s, 16, 16, dataflow)
        folds, tile = plan.row_folds, plan.temporal * min(16, plan.spatial_cols)  # a column fold's partial sums
        sram = 2 * tile * 2  # half of it holds them at 2 bytes each, not at 4
        narrow = memory_cost(s, 16, 16, dataflow, MemoryConfig(1 << 20, 1 << 20, sram, 8, psum_bytes_per_element=2))
        wide = memory_cost(s, 16, 16, dataflow, MemoryConfig(1 << 20, 1 << 20, sram, 8, psum_bytes_per_element=4))
        assert (narrow.ofmap_read_bytes, narrow.dram_write_bytes) == (0, outputs)
        assert wide.ofmap_read_bytes == (folds - 1) * 4 * outputs
        assert wide.dram_write_bytes == outputs + (folds - 1) * 4 * outputs  # final outputs at 1 byte
        assert wide.stall_cycles > narrow.stall_cycles
