"""SCALE-Sim 3.0.0's memory model ("scalesim" memory mode): its stall cycles and DRAM traffic, reproduced.

SCALE-Sim (``scalesim/memory/double_buffered_scratchpad_mem.py``) serves, cycle by cycle, three demand
matrices built by its compute module (``scalesim/compute/systolic_compute_{os,ws,is}.py``): per fold, the
ifmap, filter and ofmap addresses each array edge touches in each cycle, with the fill/drain gaps and skew
that make the fold last ``cycles_per_fold`` rows. Two read buffers (``memory/read_buffer.py``) and one
write buffer (``memory/write_buffer.py``) sit between those demands and DRAM (below, ``sram/2`` is rounded
up for the active half and down for the other half):

* **Read buffer** (ifmap, filters). Its contents follow the operand's *prefetch* sequence, the
  im2col-expanded operand matrix of every fold (diagonally ordered for some operands), cut into 100
  "lines" of ``ceil(sram_words / 100)`` valid words (``prepare_hashed_buffer``; the last line may be
  short or empty). The active half is a window of ``a = ceil(sram/2 / line)`` lines (all lines when they
  fit); a request hits when its address is in any line of the window. A miss calls ``new_prefetch``
  until it hits: the window moves on by ``p = ceil(sram/2 / line)`` lines (at most the lines outside
  it), cyclically, and ``ceil(sram/2 / bw)`` DRAM lines of ``bw`` words are counted as read. The
  prefetches are chained: the k-th completes at cycle ``k * (ceil(sram/2 / bw) + 1) - 1`` whatever the
  array does (the first fill completes at cycle -1). The miss's cycle offset is updated with that
  completion as ``offset = d + max(0, d - offset)`` (``d`` = completion - request cycle; SCALE-Sim adds
  the wait twice), and the row's stall is ``offset - 1``. Reads = the first fill (``ceil(sram/2 / bw)``
  lines, at most the whole sequence) + ``bw * ceil(sram/2 / bw)`` per prefetch.
* **Write buffer** (ofmap). Outputs are stored into ``bw``-word lines; once more than half the SRAM is
  used and the previous drain is over, the open line is closed and the next ``ceil(sram/2 / bw)`` lines
  are drained (one per cycle), counting their words less the empty slots of the last line. A store
  into a full buffer while a drain is running waits for its end. At the end everything left is drained.
* **Stalls**: per demand row, the largest of the three buffers' delays is added to a running stall
  count that shifts the cycle of every later row.

The hit/miss sequence does not depend on time, so :func:`scalesim_memory_cost` computes it with
vectorised scans (the window only moves on a miss), then runs the timing recursion only over the rows
where something happens: rows with prefetches and the rows where the write buffer starts a drain or
blocks (found with cumulative output counts). ``tests/test_scalesim_memory.py`` checks it against a
direct per-address, per-cycle transcription of SCALE-Sim's buffers.

USER bandwidth mode: the read buffers' ``bw`` is the ifmap/filter SRAM bank bandwidth setting, the write
buffer's is the ``Bandwidth`` setting. Word size 1 (SCALE-Sim's); groups and batch images run as separate
SCALE-Sim layers (it has neither), each with fresh buffers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from hwsim.cost.systolic import DATAFLOWS, ConvShape, compute_cycles

LINES = 100  # SCALE-Sim splits a read buffer into 100 lookup lines (read_buffer.prepare_hashed_buffer)


@dataclass(frozen=True)
class ScaleSimMemoryConfig:
    """SRAM sizes in words (SCALE-Sim's word is a byte) and USER-mode DRAM fill rates in words per cycle."""

    ifmap_sram_words: int
    filter_sram_words: int
    ofmap_sram_words: int
    ifmap_words_per_cycle: int = 10
    filter_words_per_cycle: int = 10
    ofmap_words_per_cycle: int = 10

    def __post_init__(self) -> None:
        if min(self.ifmap_sram_words, self.filter_sram_words, self.ofmap_sram_words) < 2:
            raise ValueError(f"SCALE-Sim SRAMs need at least 2 words each: {self}")
        rates = (self.ifmap_words_per_cycle, self.filter_words_per_cycle, self.ofmap_words_per_cycle)
        if min(rates) < 1 or any(int(r) != r for r in rates):
            raise ValueError(f"SCALE-Sim fill rates are positive whole words per cycle: {self}")


@dataclass(frozen=True)
class ScaleSimMemoryCost:
    """One layer as SCALE-Sim reports it (all groups and images): words, and cycles.

    ``compute_cycles`` is the stall-free count (``hwsim.cost.systolic.compute_cycles``); SCALE-Sim's own
    "compute cycles" is ``total_cycles`` (stalls included).
    """

    compute_cycles: int
    stall_cycles: int
    total_cycles: int
    ifmap_dram_reads: int
    filter_dram_reads: int
    ofmap_dram_writes: int


@dataclass(frozen=True)
class Streams:
    """SCALE-Sim's prefetch sequences (1-D, -1 = empty slot) and demand matrices (rows x edge, -1 = none)."""

    ifmap_prefetch: np.ndarray
    filter_prefetch: np.ndarray
    ifmap_demand: np.ndarray
    filter_demand: np.ndarray
    ofmap_demand: np.ndarray


def operand_matrices(shape: ConvShape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SCALE-Sim's operand matrices of one group and image (``compute/operand_matrix.py``, offsets 0):
    ifmap ``px x window`` (NHWC addresses of the touched input, channel fastest), filter ``window x
    filters`` and ofmap ``px x filters``."""
    c = shape.channels // shape.groups
    w, ow = shape.touched_w, shape.out_w
    px, j = np.arange(shape.ofmap_pixels)[:, None], np.arange(shape.window)[None, :]
    orow, ocol = np.divmod(px, ow)
    krow, rest = np.divmod(j, shape.kernel_w * c)
    kcol, ch = np.divmod(rest, c)
    ifmap = ((orow * shape.stride_h + krow) * w + ocol * shape.stride_w + kcol) * c + ch
    filters = np.arange(shape.filters_per_group)[None, :] * shape.window + np.arange(shape.window)[:, None]
    ofmap = np.arange(shape.ofmap_pixels)[:, None] * shape.filters_per_group + np.arange(shape.filters_per_group)
    return ifmap.astype(np.int64), filters.astype(np.int64), ofmap.astype(np.int64)


def _block(mat: np.ndarray, r0: int, rows: int, c0: int, cols: int) -> np.ndarray:
    """``mat[r0:r0+rows, c0:c0+cols]`` padded with -1 to ``rows x cols``."""
    out = np.full((rows, cols), -1, dtype=np.int64)
    part = mat[r0 : r0 + rows, c0 : c0 + cols]
    out[: part.shape[0], : part.shape[1]] = part
    return out


def _col_folds(mat: np.ndarray, width: int) -> np.ndarray:
    """Column chunks of ``width`` (padded with -1) stacked vertically."""
    folds = math.ceil(mat.shape[1] / width)
    return np.concatenate([_block(mat, 0, mat.shape[0], f * width, width) for f in range(folds)])


def diagonal_order(mat: np.ndarray) -> np.ndarray:
    """Anti-diagonals in turn, each from its bottom row up (the compute modules' prefetch order)."""
    r, c = np.indices(mat.shape)
    order = np.lexsort((-r.ravel(), (r + c).ravel()))
    return mat.ravel()[order]


def skew(mat: np.ndarray) -> np.ndarray:
    """Column ``j`` delayed by ``j`` rows (``skew_matrix``)."""
    rows, cols = mat.shape
    out = np.full((rows + cols - 1, cols), -1, dtype=np.int64)
    r, c = np.indices(mat.shape)
    out[r + c, c] = mat
    return out


def _gap(rows: int, cols: int) -> np.ndarray:
    return np.full((rows, cols), -1, dtype=np.int64)


def streams(shape: ConvShape, rows: int, cols: int, dataflow: str) -> Streams:
    """The prefetch and demand matrices SCALE-Sim builds for one group and image."""
    if dataflow not in DATAFLOWS:
        raise ValueError(f"unknown dataflow {dataflow!r} (known: {', '.join(DATAFLOWS)})")
    ifmap, filt, ofmap = operand_matrices(shape)
    px, t, sc = ifmap.shape[0], ifmap.shape[1], filt.shape[1]
    dem_i, dem_f, dem_o = [], [], []
    # a fold's demand that depends on one fold index only is built once
    if dataflow == "os":  # array rows: pixels, columns: filters, time: window
        it = ifmap.T
        pre_i, pre_f = diagonal_order(_col_folds(it, rows)), diagonal_order(_col_folds(filt, cols))
        row_folds, col_folds = math.ceil(px / rows), math.ceil(sc / cols)
        by_row = [
            skew(np.concatenate([_block(it, 0, t, r * rows, rows), _gap(cols - 1, rows)])) for r in range(row_folds)
        ]
        by_col = [
            skew(np.concatenate([_block(filt, 0, t, c * cols, cols), _gap(rows - 1, cols)])) for c in range(col_folds)
        ]
        for fc in range(col_folds):
            for fr in range(row_folds):
                dem_i.append(by_row[fr])
                dem_f.append(by_col[fc])
                tile = _block(ofmap, fr * rows, rows, fc * cols, cols)[::-1]
                dem_o.append(skew(np.concatenate([_gap(t - 1, cols), tile])))
    elif dataflow == "ws":  # array rows: window, columns: filters, time: pixels
        pre_i, pre_f = diagonal_order(_col_folds(ifmap, rows)), _col_folds(filt, cols).ravel()
        row_folds, col_folds = math.ceil(t / rows), math.ceil(sc / cols)
        by_row = [
            skew(np.concatenate([_gap(rows, rows), _block(ifmap, 0, px, r * rows, rows), _gap(cols - 1, rows)]))
            for r in range(row_folds)
        ]
        by_col = [
            skew(np.concatenate([_gap(2 * rows - 1, cols), _block(ofmap, 0, px, c * cols, cols)]))
            for c in range(col_folds)
        ]
        for fc in range(col_folds):
            for fr in range(row_folds):
                dem_i.append(by_row[fr])
                tile = _block(filt, fr * rows, rows, fc * cols, cols)[::-1]
                dem_f.append(np.concatenate([tile, _gap(rows + cols + px - 2, cols)]))
                dem_o.append(by_col[fc])
    else:  # is: array rows: window, columns: pixels, time: filters
        it, ft, ot = ifmap.T, filt.T, ofmap.T
        pre_i, pre_f = _col_folds(it, cols).ravel(), diagonal_order(_col_folds(ft, rows))
        row_folds, col_folds = math.ceil(t / rows), math.ceil(px / cols)
        by_row = [
            skew(np.concatenate([_gap(rows, rows), _block(ft, 0, sc, r * rows, rows), _gap(cols - 1, rows)]))
            for r in range(row_folds)
        ]
        by_col = [
            skew(np.concatenate([_gap(2 * rows - 1, cols), _block(ot, 0, sc, c * cols, cols)]))
            for c in range(col_folds)
        ]
        for fc in range(col_folds):
            for fr in range(row_folds):
                tile = _block(it, fr * rows, rows, fc * cols, cols)[::-1]
                dem_i.append(np.concatenate([tile, _gap(rows + cols + sc - 2, cols)]))
                dem_f.append(by_row[fr])
                dem_o.append(by_col[fc])
    return Streams(pre_i, pre_f, np.concatenate(dem_i), np.concatenate(dem_f), np.concatenate(dem_o))


@dataclass(frozen=True)
class ReadBufferRun:
    """A read buffer's misses: ``prefetches[row]`` new prefetches made while serving demand row ``row``."""

    prefetches: np.ndarray
    first_fill_words: int
    words_per_prefetch: int
    cycles_per_prefetch: int

    @property
    def dram_reads(self) -> int:
        return self.first_fill_words + int(self.prefetches.sum()) * self.words_per_prefetch


def read_buffer_run(prefetch: np.ndarray, demand: np.ndarray, sram_words: int, bw: int) -> ReadBufferRun:
    """Which demand rows miss, and how many prefetches each needs, for one SCALE-Sim read buffer."""
    active, spare = math.ceil(sram_words * 0.5), sram_words - math.ceil(sram_words * 0.5)
    fetch_lines = math.ceil(prefetch.size / bw)
    first_fill = min(math.ceil(active / bw), fetch_lines) * bw
    per = math.ceil(spare / bw)
    counts = np.zeros(demand.shape[0], dtype=np.int64)
    run = ReadBufferRun(counts, first_fill, per * bw, per + 1)
    valid = prefetch[prefetch >= 0]
    per_line = math.ceil(sram_words / LINES)
    n = valid.size // per_line + 1
    a = min(math.ceil(active / per_line), n)
    p = min(math.ceil(spare / per_line), n - a)
    if a == n:
        return run
    if p == 0:
        raise ValueError(f"SCALE-Sim read buffer of {sram_words} words cannot move its window")
    # lines holding each address (an im2col address sits in up to kernel_h * kernel_w lines)
    keys = np.unique(valid * n + np.arange(valid.size) // per_line)  # (address, line) pairs, sorted
    pair_addr, pair_line = np.divmod(keys, n)
    addrs, first = np.unique(pair_addr, return_index=True)
    rank = np.arange(keys.size) - np.repeat(first, np.diff(np.append(first, keys.size)))
    table = np.full((addrs.size, int(rank.max()) + 1), -1, dtype=np.int64)
    table[np.searchsorted(addrs, pair_addr), rank] = pair_line
    entry_rows, entry_cols = np.nonzero(demand >= 0)
    wanted = demand[entry_rows, entry_cols]
    where = np.searchsorted(addrs, wanted)
    if where.size and (where.max() >= addrs.size or np.any(addrs[where] != wanted)):
        raise ValueError("a demanded address is not in the prefetch sequence")
    lines = table[where]
    present = lines >= 0
    pos, k, chunk = 0, 0, 256
    while pos < lines.shape[0]:
        block = lines[pos : pos + chunk]
        hit = (((block - k * p) % n < a) & present[pos : pos + chunk]).any(axis=1)
        if hit.all():
            pos, chunk = pos + block.shape[0], min(chunk * 2, 1 << 16)
            continue
        miss = pos + int(np.argmin(hit))
        mine = lines[miss][present[miss]]
        before = k
        while not np.any((mine - k * p) % n < a):
            k += 1
        counts[entry_rows[miss]] += k - before
        pos, chunk = miss + 1, 256
    return run


def read_stall(run: ReadBufferRun, done_before: int, row: int, cycle: int) -> int:
    """SCALE-Sim's read stall for a row whose misses start after ``done_before`` prefetches."""
    misses = int(run.prefetches[row])
    if not misses:
        return 0
    offset = 1
    for k in range(done_before + 1, done_before + misses + 1):
        d = k * run.cycles_per_prefetch - 1 - cycle
        offset = d + max(0, d - offset)
    return offset - 1


class WriteBuffer:
    """SCALE-Sim's ofmap write buffer, state kept as counts (lines, open-line fill, short lines)."""

    def __init__(self, sram_words: int, bw: int) -> None:
        self.total, self.bw = sram_words, bw
        self.active = math.ceil(sram_words * 0.5)
        self.drain_lines = math.ceil((sram_words - self.active) / bw)
        self.free, self.drain_end, self.writes = sram_words, 0, 0
        self.lines, self.open, self.drained = 0, 0, 0
        self.short: dict[int, int] = {}  # line index -> valid words of a line closed before it was full

    def store(self, words: int) -> None:
        """Store ``words`` outputs that trigger nothing."""
        self.free -= words
        self.lines += (self.open + words) // self.bw
        self.open = (self.open + words) % self.bw

    def drain(self, cycle: int) -> int:
        """``empty_drain_buf``: drain the next lines from ``cycle``, return the cycle of the last one."""
        end = min(self.drained + self.drain_lines, self.lines)
        if end <= self.drained:
            raise ValueError("SCALE-Sim write buffer: nothing to drain")
        words = (end - self.drained) * self.bw - (self.bw - self.short.get(end - 1, self.bw))
        self.writes, self.free = self.writes + words, self.free + words
        last = cycle + end - self.drained - 1
        self.drained = end
        return last

    def close_open_line(self) -> None:
        if self.open:
            self.short[self.lines] = self.open
            self.lines, self.open = self.lines + 1, 0

    def row(self, words: int, cycle: int) -> int:
        """Serve one demand row of ``words`` outputs at ``cycle``; return its delay (``service_writes``)."""
        current = cycle
        for _ in range(words):
            self.store(1)
            if current < self.drain_end:
                if self.free <= 0:
                    current = self.drain_end
            elif self.free < self.active:
                self.close_open_line()
                self.drain_end = self.drain(current)
        return current - cycle

    def finish(self) -> None:
        """``empty_all_buffers``: drain everything left."""
        self.close_open_line()
        while self.drained < self.lines:
            self.drain(0)


def _quiet_rows(wb: WriteBuffer, cum: np.ndarray, start: int, stop: int, shift: int) -> int:
    """First row in ``[start, stop)`` where the write buffer may act (block or drain); ``stop`` if none.

    Row ``j`` runs at cycle ``j + shift``. Rows before ``wb.drain_end - shift`` run while a drain is going
    on and act only once the buffer is full; later rows act once more than half of it is used. Rows
    without outputs never act.
    """
    base, switch = cum[start], min(max(wb.drain_end - shift, start), stop)

    def first_row(target: int, lo: int) -> int:  # first row >= lo with outputs whose stores reach target
        return int(np.searchsorted(cum, max(target, cum[lo] + 1), side="left")) - 1

    if switch > start:
        row = first_row(base + wb.free, start)
        if row < switch:
            return row
    if switch < stop:
        return min(first_row(base + wb.free - wb.active + 1, switch), stop)
    return stop


def simulate(s: Streams, mem: ScaleSimMemoryConfig) -> tuple[int, int, int, int, int]:
    """Stalls, total cycles (last ofmap write), ifmap reads, filter reads and ofmap writes of one run."""
    runs = (
        read_buffer_run(s.ifmap_prefetch, s.ifmap_demand, mem.ifmap_sram_words, mem.ifmap_words_per_cycle),
        read_buffer_run(s.filter_prefetch, s.filter_demand, mem.filter_sram_words, mem.filter_words_per_cycle),
    )
    wb = WriteBuffer(mem.ofmap_sram_words, mem.ofmap_words_per_cycle)
    words = (s.ofmap_demand >= 0).sum(axis=1)
    cum = np.concatenate([[0], np.cumsum(words)])
    nrows = words.size
    misses = (runs[0].prefetches > 0) | (runs[1].prefetches > 0)
    events = sorted(set(np.flatnonzero(misses).tolist()) | {nrows - 1})
    done = [np.concatenate([[0], np.cumsum(r.prefetches)]) for r in runs]
    stalls, row, total = 0, 0, 0
    for event in events:
        while row < event:  # no read misses: skip to the write buffer's next action
            quiet = _quiet_rows(wb, cum, row, event, stalls)
            wb.store(int(cum[quiet] - cum[row]))
            row = quiet
            if row < event:
                stalls += wb.row(int(words[row]), row + stalls)
                row += 1
        cycle = row + stalls
        delays = [read_stall(r, int(d[row]), row, cycle) for r, d in zip(runs, done, strict=True)]
        out = wb.row(int(words[row]), cycle)
        total = max(total, cycle + out)
        stalls += int(max(*delays, out))
        row += 1
    wb.finish()
    return stalls, total, runs[0].dram_reads, runs[1].dram_reads, wb.writes


@lru_cache(maxsize=4096)
def _layer(shape: ConvShape, rows: int, cols: int, dataflow: str, mem: ScaleSimMemoryConfig) -> tuple[int, ...]:
    return simulate(streams(shape, rows, cols, dataflow), mem)


def scalesim_memory_cost(
    shape: ConvShape, rows: int, cols: int, dataflow: str, mem: ScaleSimMemoryConfig, batch: int = 1
) -> ScaleSimMemoryCost:
    """Stalls and DRAM traffic of a layer as SCALE-Sim 3.0.0 (USER bandwidth mode) reports them.

    Each group and image is a separate SCALE-Sim layer run; the counts are summed over them.
    """
    if rows < 1 or cols < 1 or batch < 1:
        raise ValueError(f"rows, cols and batch must be positive (got {rows}, {cols}, {batch})")
    single = ConvShape(shape.touched_h, shape.touched_w, shape.channels // shape.groups, shape.filters_per_group,
                       shape.kernel_h, shape.kernel_w, shape.stride_h, shape.stride_w)  # fmt: skip
    stalls, total, reads_i, reads_f, writes = _layer(single, rows, cols, dataflow, mem)
    runs, compute = shape.groups * batch, batch * (compute_cycles(shape, rows, cols, dataflow) + 1) - 1
    totals = (runs * stalls, runs * (total + 1) - 1, runs * reads_i, runs * reads_f, runs * writes)
    return ScaleSimMemoryCost(compute, *totals)
