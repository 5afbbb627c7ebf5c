"""hwsim.cost.scalesim_memory against a direct transcription of SCALE-Sim 3.0.0's buffers.

The reference below builds SCALE-Sim's matrices the way its compute modules do (fold by fold, skew
column by column, prefetch diagonals element by element) and serves the demands address by address,
cycle by cycle, with the read buffers' hashed lines and window limits and the write buffer's trace lines,
as ``scalesim/memory/{read_buffer,write_buffer,double_buffered_scratchpad_mem}.py`` do. The model must
equal it exactly. A few layers are also checked against numbers measured with SCALE-Sim 3.0.0.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwsim.cost.scalesim_memory import (
    ScaleSimMemoryConfig,
    scalesim_memory_cost,
    simulate,
    streams,
)
from hwsim.cost.systolic import DATAFLOWS, ConvShape, compute_cycles

# ---------------------------------------------------------------- reference: SCALE-Sim's matrices


def ref_operands(shape: ConvShape) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    c, kw, w = shape.channels, shape.kernel_w, shape.in_w
    ifmap, filters, ofmap = [], [], []
    for p in range(shape.ofmap_pixels):
        orow, ocol = divmod(p, shape.out_w)
        row = []
        for j in range(shape.window):
            krow, kcol, ch = j // (kw * c), (j % (kw * c)) // c, j % c
            row.append(((orow * shape.stride_h + krow) * w + ocol * shape.stride_w + kcol) * c + ch)
        ifmap.append(row)
        ofmap.append([p * shape.filters + f for f in range(shape.filters)])
    filters = [[f * shape.window + j for f in range(shape.filters)] for j in range(shape.window)]
    return ifmap, filters, ofmap


def tile(mat: list[list[int]], r0: int, rows: int, c0: int, cols: int) -> np.ndarray:
    out = np.full((rows, cols), -1)
    for r in range(rows):
        for c in range(cols):
            if r0 + r < len(mat) and c0 + c < len(mat[0]):
                out[r, c] = mat[r0 + r][c0 + c]
    return out


def ref_skew(m: np.ndarray) -> np.ndarray:
    out = np.full((m.shape[0] + m.shape[1] - 1, m.shape[1]), -1)
    for c in range(m.shape[1]):
        out[c : c + m.shape[0], c] = m[:, c]
    return out


def ref_diagonal(m: np.ndarray) -> np.ndarray:
    rows, cols = m.shape
    seq = []
    for d in range(rows + cols):
        top, bottom = max(0, d - cols + 1), min(d, rows - 1)
        for r in range(bottom, top - 1, -1):
            seq.append(m[r, d - r])
    return np.array(seq)


def transpose(m: list[list[int]]) -> list[list[int]]:
    return [list(col) for col in zip(*m, strict=True)]


def gap(rows: int, cols: int) -> np.ndarray:
    return np.full((rows, cols), -1)


def ref_streams(shape: ConvShape, R: int, C: int, df: str):  # noqa: N803 (SCALE-Sim's names)
    ifmap, filt, ofmap = ref_operands(shape)
    px, t, sc = len(ifmap), len(filt), len(filt[0])
    di, dfl, do = [], [], []
    if df == "os":
        it = transpose(ifmap)
        pre_i = ref_diagonal(np.concatenate([tile(it, 0, t, f * R, R) for f in range(math.ceil(px / R))]))
        pre_f = ref_diagonal(np.concatenate([tile(filt, 0, t, f * C, C) for f in range(math.ceil(sc / C))]))
        for fc in range(math.ceil(sc / C)):
            for fr in range(math.ceil(px / R)):
                di.append(ref_skew(np.concatenate([tile(it, 0, t, fr * R, R), gap(C - 1, R)])))
                dfl.append(ref_skew(np.concatenate([tile(filt, 0, t, fc * C, C), gap(R - 1, C)])))
                do.append(ref_skew(np.concatenate([gap(t - 1, C), np.flip(tile(ofmap, fr * R, R, fc * C, C), 0)])))
    elif df == "ws":
        pre_i = ref_diagonal(np.concatenate([tile(ifmap, 0, px, f * R, R) for f in range(math.ceil(t / R))]))
        pre_f = np.concatenate([tile(filt, 0, t, f * C, C) for f in range(math.ceil(sc / C))])
        for fc in range(math.ceil(sc / C)):
            for fr in range(math.ceil(t / R)):
                di.append(ref_skew(np.concatenate([gap(R, R), tile(ifmap, 0, px, fr * R, R), gap(C - 1, R)])))
                f_tile = np.flip(tile(filt, fr * R, R, fc * C, C), 0)
                dfl.append(np.concatenate([f_tile, gap(R + C + px - 2, C)]))
                do.append(ref_skew(np.concatenate([gap(2 * R - 1, C), tile(ofmap, 0, px, fc * C, C)])))
    else:
        it, ft, ot = transpose(ifmap), transpose(filt), transpose(ofmap)
        pre_i = np.concatenate([tile(it, 0, t, f * C, C) for f in range(math.ceil(px / C))])
        pre_f = ref_diagonal(np.concatenate([tile(ft, 0, sc, f * R, R) for f in range(math.ceil(t / R))]))
        for fc in range(math.ceil(px / C)):
            for fr in range(math.ceil(t / R)):
                di.append(np.concatenate([np.flip(tile(it, fr * R, R, fc * C, C), 0), gap(R + C + sc - 2, C)]))
                dfl.append(ref_skew(np.concatenate([gap(R, R), tile(ft, 0, sc, fr * R, R), gap(C - 1, R)])))
                do.append(ref_skew(np.concatenate([gap(2 * R - 1, C), tile(ot, 0, sc, fc * C, C)])))
    return pre_i, pre_f, np.concatenate(di), np.concatenate(dfl), np.concatenate(do)


# ---------------------------------------------------------------- reference: SCALE-Sim's buffers


class RefReadBuffer:
    """read_buffer.py: hashed lines, active/prefetch window limits, the offset update as written."""

    def __init__(self, prefetch: np.ndarray, size: int, bw: int) -> None:
        self.bw, self.active = bw, math.ceil(size * 0.5)
        self.spare = size - self.active
        flat = list(np.asarray(prefetch).ravel())
        self.fetch_rows = math.ceil(len(flat) / bw)
        per_set, self.sets, current, count = math.ceil(size / 100), [], set(), 0
        for elem in flat:  # prepare_hashed_buffer: a line per `per_set` valid elements, duplicates included
            if elem != -1:
                current.add(int(elem))
                count += 1
            if not count < per_set:
                self.sets.append(current)
                current, count = set(), 0
        self.sets.append(current)
        n = len(self.sets)
        self.a = min(math.ceil(self.active / per_set), n)
        self.p = min(math.ceil(self.spare / per_set), n - self.a)
        self.limits, self.accesses, self.last, self.filled = (0, self.a), 0, -1, False

    def hit(self, addr: int) -> bool:
        start, end = self.limits
        lines = range(start, end) if start < end else [*range(start, len(self.sets)), *range(end)]
        return any(addr in self.sets[i] for i in lines)

    def new_prefetch(self) -> None:
        n = len(self.sets)
        start = (self.limits[0] + self.p) % n
        self.limits = (start, (start + self.a) % n)
        lines = math.ceil(self.spare / self.bw)
        self.accesses += lines * self.bw
        self.last = max(self.last + i + 1 + 1 for i in range(lines))  # read_port latency 1

    def serve(self, row: np.ndarray, cycle: int) -> int:
        if not self.filled:  # prefetch_active_buffer at the first row
            self.accesses += min(math.ceil(self.active / self.bw), self.fetch_rows) * self.bw
            self.last, self.filled = cycle - 1, True
        offset = 1
        for addr in row:
            if addr == -1:
                continue
            while not self.hit(int(addr)):
                self.new_prefetch()
                potential = self.last - (cycle + offset)
                offset += potential
                if potential > 0:
                    offset += potential
        return cycle + offset


class RefWriteBuffer:
    """write_buffer.py with its trace lines kept as lists (a line closed early keeps its -1 slots)."""

    def __init__(self, size: int, bw: int) -> None:
        self.size, self.bw = size, bw
        self.active = math.ceil(size * 0.5)
        self.drain_size = size - self.active
        self.free, self.drain_end, self.accesses = size, 0, 0
        self.trace: list[list[int]] = []
        self.line: list[int] = []
        self.drain_start = 0

    def store(self, elem: int) -> None:
        self.line.append(elem)
        self.free -= 1
        if len(self.line) == self.bw:
            self.trace.append(self.line)
            self.line = []

    def flush(self) -> None:
        if self.line:
            self.trace.append(self.line + [-1] * (self.bw - len(self.line)))
            self.line = []

    def drain(self, start: int) -> int:
        end = min(self.drain_start + math.ceil(self.drain_size / self.bw), len(self.trace))
        chunk = self.trace[self.drain_start : end]
        words = len(chunk) * self.bw - chunk[-1].count(-1)
        self.accesses += words
        self.free += words
        self.drain_start = end
        return start + len(chunk) - 1

    def serve(self, row: np.ndarray, cycle: int) -> int:
        current = cycle
        for elem in row:
            if elem == -1:
                continue
            self.store(int(elem))
            if current < self.drain_end:
                if not self.free > 0:
                    current = self.drain_end
            elif self.free < self.size - self.drain_size:
                self.flush()
                self.drain_end = self.drain(current)
        return current

    def finish(self) -> None:
        self.flush()
        while self.drain_start < len(self.trace):
            self.drain(0)


def ref_simulate(pre_i, pre_f, dem_i, dem_f, dem_o, mem: ScaleSimMemoryConfig) -> tuple[int, ...]:
    """double_buffered_scratchpad.service_memory_requests, row by row."""
    ib = RefReadBuffer(pre_i, mem.ifmap_sram_words, mem.ifmap_words_per_cycle)
    fb = RefReadBuffer(pre_f, mem.filter_sram_words, mem.filter_words_per_cycle)
    ob = RefWriteBuffer(mem.ofmap_sram_words, mem.ofmap_words_per_cycle)
    stalls, outs = 0, []
    for i in range(dem_o.shape[0]):
        cycle = i + stalls
        i_stall = ib.serve(dem_i[i], cycle) - cycle - 1
        f_stall = fb.serve(dem_f[i], cycle) - cycle - 1
        out = ob.serve(dem_o[i], cycle)
        outs.append(out)
        stalls += int(max(i_stall, f_stall, out - cycle))
    ob.finish()
    return stalls, max(outs), ib.accesses, fb.accesses, ob.accesses


# ---------------------------------------------------------------- tests


def touched(h: int, w: int, c: int, f: int, kh: int, kw: int, s: int) -> ConvShape:
    """A layer given, as SCALE-Sim is, the input its windows touch."""
    full = ConvShape(max(h, kh), max(w, kw), c, f, kh, kw, s, s)
    return ConvShape(full.touched_h, full.touched_w, c, f, kh, kw, s, s)


layers = st.builds(
    touched,
    st.integers(1, 7),
    st.integers(1, 7),
    st.integers(1, 3),
    st.integers(1, 6),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 2),
)
memories = st.builds(  # small enough that most examples prefetch, stall or drain several times
    ScaleSimMemoryConfig,
    st.integers(2, 120),
    st.integers(2, 120),
    st.integers(2, 120),
    st.integers(1, 12),
    st.integers(1, 12),
    st.integers(1, 12),
)


@settings(max_examples=40, deadline=None)
@given(layers, st.integers(1, 6), st.integers(1, 6), st.sampled_from(DATAFLOWS))
def test_streams_equal_scalesims_construction(shape, rows, cols, dataflow):
    s = streams(shape, rows, cols, dataflow)
    pre_i, pre_f, dem_i, dem_f, dem_o = ref_streams(shape, rows, cols, dataflow)
    np.testing.assert_array_equal(s.ifmap_prefetch, pre_i.ravel())
    np.testing.assert_array_equal(s.filter_prefetch, pre_f.ravel())
    np.testing.assert_array_equal(s.ifmap_demand, dem_i)
    np.testing.assert_array_equal(s.filter_demand, dem_f)
    np.testing.assert_array_equal(s.ofmap_demand, dem_o)
    assert dem_o.shape[0] == compute_cycles(shape, rows, cols, dataflow) + 1


@settings(max_examples=150, deadline=None)
@given(layers, st.integers(1, 6), st.integers(1, 6), st.sampled_from(DATAFLOWS), memories)
def test_model_equals_cycle_by_cycle_reference(shape, rows, cols, dataflow, mem):
    ref = ref_simulate(*ref_streams(shape, rows, cols, dataflow), mem)
    assert simulate(streams(shape, rows, cols, dataflow), mem) == ref


@settings(max_examples=40, deadline=None)
@given(layers, st.integers(1, 4), st.integers(1, 4), st.sampled_from(DATAFLOWS), st.integers(2, 40))
def test_tiny_buffers_equal_reference(shape, rows, cols, dataflow, words):
    """Buffers of a few words: a prefetch or a drain on almost every row."""
    mem = ScaleSimMemoryConfig(words, words, words, 1, 2, 3)
    ref = ref_simulate(*ref_streams(shape, rows, cols, dataflow), mem)
    assert simulate(streams(shape, rows, cols, dataflow), mem) == ref


# Measured with SCALE-Sim 3.0.0 (numpy 2.3, USER bandwidth mode, 10 words/cycle, 256 kB SRAMs), given the
# touched input: (layer, array, dataflow) -> (stalls, its compute cycles, ifmap reads, filter reads, ofmap writes)
MEASURED = {
    (ConvShape(34, 34, 16, 16, 3, 3), 8, "ws"): (38886, 76541, 655400, 2310, 294912),
    (ConvShape(34, 34, 16, 16, 3, 3), 32, "os"): (14486, 21077, 262160, 4610, 16384),
    (ConvShape(4, 4, 320, 1280), 8, "ws"): (0, 243199, 5120, 1704040, 819200),
}


@pytest.mark.parametrize(("key", "expected"), MEASURED.items(), ids=lambda v: str(v)[:40])
def test_matches_scalesim_measurements(key, expected):
    shape, array, dataflow = key
    mem = ScaleSimMemoryConfig(256 << 10, 256 << 10, 256 << 10)
    got = scalesim_memory_cost(shape, array, array, dataflow, mem)
    assert (got.stall_cycles, got.total_cycles, got.ifmap_dram_reads, got.filter_dram_reads) == expected[:4]
    assert got.ofmap_dram_writes == expected[4]
    assert got.total_cycles == got.compute_cycles + got.stall_cycles


def test_groups_and_batch_are_separate_runs():
    depthwise = ConvShape(8, 8, 4, 4, 3, 3, pad=(1, 1, 1, 1), groups=4)
    one = ConvShape(10, 10, 1, 1, 3, 3)
    mem = ScaleSimMemoryConfig(64, 64, 64, 2, 2, 2)
    single = scalesim_memory_cost(one, 4, 4, "ws", mem)
    both = scalesim_memory_cost(depthwise, 4, 4, "ws", mem, batch=3)
    assert both.stall_cycles == 12 * single.stall_cycles > 0
    assert both.ifmap_dram_reads == 12 * single.ifmap_dram_reads
    assert both.total_cycles + 1 == 12 * (single.total_cycles + 1)


def test_rejects_buffers_scalesim_cannot_run():
    with pytest.raises(ValueError, match="at least 2 words"):
        ScaleSimMemoryConfig(1, 64, 64)
    with pytest.raises(ValueError, match="whole words"):
        ScaleSimMemoryConfig(64, 64, 64, 0)


@pytest.fixture(scope="module")
def digits_spec(tmp_path_factory: pytest.TempPathFactory, digits_checkpoint) -> Path:
    from cli_runner import invoke

    from qexport.cli import app as qexport_app

    out = tmp_path_factory.mktemp("export") / "digits"
    result = invoke(qexport_app, *[str(digits_checkpoint), "--target", "asic", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    return out / "layer_spec.json"


def test_estimate_memory_model_from_target_and_option(digits_spec: Path, tmp_path: Path):
    from cli_runner import invoke

    from hwsim.cli import app
    from hwsim.cost.model import conv_shape
    from qexport.ir.serialize import read_spec

    text = (
        (resources.files("qexport.targets") / "asic.toml")
        .read_text()
        .replace('dataflow = "ws"', 'dataflow = "ws"\nmemory_model = "scalesim"')
    )
    for key in ("ifmap_sram_bytes", "filter_sram_bytes", "ofmap_sram_bytes"):
        text = text.replace(f"{key} = 1048576", f"{key} = 600")
    target = tmp_path / "small.toml"
    target.write_text(text.replace("dram_bytes_per_cycle = 16.0", "dram_bytes_per_cycle = 2.0"))
    args = ["estimate", str(digits_spec), "--target", str(target), "--array", "8x8", "--batch", "2"]
    reports = {}
    for model in ("scalesim", "hwsim"):
        override = [] if model == "scalesim" else ["--memory-model", "hwsim"]  # the target says scalesim
        result = invoke(app, *args, *override, "--json", str(tmp_path / f"{model}.json"))
        assert result.exit_code == 0, result.stderr
        reports[model] = json.loads((tmp_path / f"{model}.json").read_text())
    mem = ScaleSimMemoryConfig(600, 600, 600, 2, 2, 2)
    graph = read_spec(digits_spec)
    layers = {row["name"]: row for row in reports["scalesim"]["layers"]}
    stalled = 0
    for node in graph.nodes:
        if node.op.value in ("conv2d", "linear"):
            want = scalesim_memory_cost(conv_shape(graph, node), 8, 8, "ws", mem, batch=2)
            traffic = want.ifmap_dram_reads + want.filter_dram_reads + want.ofmap_dram_writes
            assert (layers[node.name]["stall_cycles"], layers[node.name]["dram_bytes"]) == (want.stall_cycles, traffic)
            stalled += want.stall_cycles > 0
    assert stalled >= 2
    assert reports["scalesim"]["memory_model"] == "scalesim" and reports["hwsim"]["memory_model"] == "hwsim"
    assert reports["scalesim"]["totals"]["stall_cycles"] != reports["hwsim"]["totals"]["stall_cycles"]
    bad = invoke(app, *args, "--memory-model", "dramsim")
    assert bad.exit_code != 0 and "expected hwsim or scalesim" in bad.stderr
