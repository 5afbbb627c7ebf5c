"""Analytical cycle model of a systolic MAC array, matching SCALE-Sim 3.0.0's compute cycles exactly.

A convolution is lowered to a GEMM ``O[Sr x Sc] = A[Sr x T] @ B[T x Sc]`` (im2col view):

* ``Sr`` = ofmap pixels (``out_h * out_w``, times the batch),
* ``T``  = window size (``kernel_h * kernel_w * channels / groups``),
* ``Sc`` = filters (per group).

Each dataflow keeps one operand stationary and maps two GEMM dimensions onto the ``rows x cols``
array ("spatial") and the third onto time ("temporal"). Spatial dimensions larger than the array are
folded (tiled): ``folds = ceil(spatial_rows / rows) * ceil(spatial_cols / cols)``, and every fold
costs the same number of cycles, fill and drain included (partial folds still wait for the wavefront
to cross the whole physical array):

====  ==============  ==============  ==========  ==============================
flow  spatial rows    spatial cols    temporal    cycles per fold
====  ==============  ==============  ==========  ==============================
os    Sr (pixels)     Sc (filters)    T (window)  ``T + rows + cols - 2``
ws    T (window)      Sc (filters)    Sr          ``2*rows + cols + Sr - 2``
is    T (window)      Sr (pixels)     Sc          ``2*rows + cols + Sc - 2``
====  ==============  ==============  ==========  ==============================

``ws``/``is`` spend ``rows`` cycles loading the stationary tile, then stream the temporal dimension
with a ``rows - 1`` + ``cols - 1`` skew; ``os`` streams both operands with skew and its result
read-out overlaps the last skewed MACs. SCALE-Sim's "compute cycles" is the cycle index (from 0) of
the last ofmap write, so ``compute_cycles = groups * folds * cycles_per_fold - 1``.

Groups (depthwise included), which SCALE-Sim cannot express, run as independent GEMMs one after the
other, each with ``channels / groups`` input and ``filters / groups`` output channels. A batch
multiplies ``Sr`` (the images' pixels are stacked along the GEMM's M dimension).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DATAFLOWS: tuple[str, ...] = ("os", "ws", "is")


@dataclass(frozen=True)
class ConvShape:
    """Batch-independent dimensions of a 2-D convolution (NCHW semantics, no dilation).

    ``pad`` is (top, left, bottom, right); ``filters`` is the number of output channels.
    """

    in_h: int
    in_w: int
    channels: int
    filters: int
    kernel_h: int = 1
    kernel_w: int = 1
    stride_h: int = 1
    stride_w: int = 1
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    groups: int = 1

    def __post_init__(self) -> None:
        positive = (self.in_h, self.in_w, self.channels, self.filters, self.kernel_h, self.kernel_w)
        if min(positive + (self.stride_h, self.stride_w, self.groups)) < 1:
            raise ValueError(f"conv dimensions must be positive: {self}")
        if len(self.pad) != 4 or min(self.pad) < 0:
            raise ValueError(f"pad must be four non-negative ints (top, left, bottom, right): {self.pad}")
        if self.channels % self.groups or self.filters % self.groups:
            raise ValueError(f"groups={self.groups} must divide channels={self.channels} and filters={self.filters}")
        if self.out_h < 1 or self.out_w < 1:
            raise ValueError(f"kernel larger than the padded input: {self}")

    @classmethod
    def linear(cls, in_features: int, out_features: int) -> ConvShape:
        """A fully connected layer as a 1x1 convolution on a 1x1 input."""
        return cls(in_h=1, in_w=1, channels=in_features, filters=out_features)

    @property
    def out_h(self) -> int:
        """Output height: ``floor((in_h + pad_top + pad_bottom - kernel_h) / stride_h) + 1``."""
        return (self.in_h + self.pad[0] + self.pad[2] - self.kernel_h) // self.stride_h + 1

    @property
    def out_w(self) -> int:
        """Output width: ``floor((in_w + pad_left + pad_right - kernel_w) / stride_w) + 1``."""
        return (self.in_w + self.pad[1] + self.pad[3] - self.kernel_w) // self.stride_w + 1

    @property
    def touched_h(self) -> int:
        """Padded input rows the windows actually read: ``(out_h - 1) * stride_h + kernel_h``."""
        return (self.out_h - 1) * self.stride_h + self.kernel_h

    @property
    def touched_w(self) -> int:
        """Padded input columns the windows actually read: ``(out_w - 1) * stride_w + kernel_w``."""
        return (self.out_w - 1) * self.stride_w + self.kernel_w

    @property
    def ofmap_pixels(self) -> int:
        """GEMM ``Sr`` for one image: ``out_h * out_w``."""
        return self.out_h * self.out_w

    @property
    def window(self) -> int:
        """GEMM ``T`` (reduction length): ``kernel_h * kernel_w * channels / groups``."""
        return self.kernel_h * self.kernel_w * (self.channels // self.groups)

    @property
    def filters_per_group(self) -> int:
        """GEMM ``Sc`` of one group (``filters`` itself when ``groups == 1``)."""
        return self.filters // self.groups

    def macs(self, batch: int = 1) -> int:
        """Useful multiply-accumulates of the layer."""
        return batch * self.ofmap_pixels * self.window * self.filters


@dataclass(frozen=True)
class FoldPlan:
    """How one layer is tiled over the array for a dataflow."""

    dataflow: str
    rows: int
    cols: int
    spatial_rows: int
    spatial_cols: int
    temporal: int
    groups: int

    @property
    def row_folds(self) -> int:
        """Tiles along the array's rows: ``ceil(spatial_rows / rows)``."""
        return math.ceil(self.spatial_rows / self.rows)

    @property
    def col_folds(self) -> int:
        """Tiles along the array's columns: ``ceil(spatial_cols / cols)``."""
        return math.ceil(self.spatial_cols / self.cols)

    @property
    def folds(self) -> int:
        """Folds of the whole layer, all groups included."""
        return self.groups * self.row_folds * self.col_folds

    @property
    def fill_drain(self) -> int:
        """Cycles of a fold that are not the temporal stream: preload, skew, fill and drain."""
        preload = 0 if self.dataflow == "os" else self.rows
        return preload + self.rows + self.cols - 2

    @property
    def cycles_per_fold(self) -> int:
        """``temporal + fill_drain``: the table in the module docstring."""
        return self.temporal + self.fill_drain


def _check_array(rows: int, cols: int, dataflow: str, batch: int) -> None:
    if rows < 1 or cols < 1 or batch < 1:
        raise ValueError(f"rows, cols and batch must be positive (got {rows}, {cols}, {batch})")
    if dataflow not in DATAFLOWS:
        raise ValueError(f"unknown dataflow {dataflow!r} (known: {', '.join(DATAFLOWS)})")


def fold_plan(shape: ConvShape, rows: int, cols: int, dataflow: str, batch: int = 1) -> FoldPlan:
    """Map the layer's GEMM (per group) onto a ``rows x cols`` array for ``dataflow`` (os, ws, is)."""
    _check_array(rows, cols, dataflow, batch)
    sr, t, sc = batch * shape.ofmap_pixels, shape.window, shape.filters_per_group
    spatial = {"os": (sr, sc, t), "ws": (t, sc, sr), "is": (t, sr, sc)}[dataflow]
    return FoldPlan(dataflow, rows, cols, *spatial, groups=shape.groups)


def compute_cycles(shape: ConvShape, rows: int, cols: int, dataflow: str, batch: int = 1) -> int:
    """Compute cycles of a layer on a ``rows x cols`` systolic array, as SCALE-Sim 3.0.0 counts them.

    ``groups * folds * cycles_per_fold - 1`` with, per fold (see the module docstring):
    os: ``T + rows + cols - 2``; ws: ``2*rows + cols + Sr - 2``; is: ``2*rows + cols + Sc - 2``.
    """
    plan = fold_plan(shape, rows, cols, dataflow, batch)
    return plan.folds * plan.cycles_per_fold - 1


@dataclass(frozen=True)
class LayerCost:
    """Compute-side cost of one layer.

    ``cycles`` is SCALE-Sim's compute-cycle count (the index of the last busy cycle, one less than
    the number of cycles); ``utilization`` divides the useful MACs by the PE-cycles of all
    ``cycles + 1`` cycles, so it never exceeds ``mapping_efficiency``.
    """

    cycles: int
    folds: int
    macs: int
    mapping_efficiency: float
    utilization: float


def mapping_efficiency(plan: FoldPlan) -> float:
    """Share of PEs holding useful work, averaged over folds (SCALE-Sim's "mapping efficiency")."""
    used = plan.spatial_rows * plan.spatial_cols
    return used / (plan.row_folds * plan.rows * plan.col_folds * plan.cols)


def layer_cost(shape: ConvShape, rows: int, cols: int, dataflow: str, batch: int = 1) -> LayerCost:
    """Cycles, folds, MACs, mapping efficiency and utilization (useful MACs / PE-cycles) of a layer."""
    plan = fold_plan(shape, rows, cols, dataflow, batch)
    cycles = plan.folds * plan.cycles_per_fold - 1
    macs = shape.macs(batch)
    utilization = macs / (rows * cols * (cycles + 1))
    return LayerCost(cycles, plan.folds, macs, mapping_efficiency(plan), utilization)


@dataclass(frozen=True)
class MemoryConfig:
    """On-chip SRAMs (bytes, each double buffered: half serves the array, half is being refilled)
    and one DRAM channel shared by all operands (bytes per cycle).

    With ``ifmap_im2col`` the ifmap SRAM and DRAM traffic hold the im2col-expanded matrix
    (``Sr x T``, as SCALE-Sim does); otherwise the raw ifmap, expanded by the address generator.
    Partial sums (ws/is, accumulated over row folds) are ``psum_bytes_per_element`` wide (the
    accumulator; default: the ofmap element), final outputs ``ofmap_bytes_per_element``.
    """

    ifmap_sram_bytes: int
    filter_sram_bytes: int
    ofmap_sram_bytes: int
    dram_bytes_per_cycle: float
    bytes_per_element: int = 1
    ofmap_bytes_per_element: int | None = None
    ifmap_im2col: bool = False
    psum_bytes_per_element: int | None = None

    @property
    def out_bytes(self) -> int:
        """Bytes of a final ofmap element."""
        return self.ofmap_bytes_per_element or self.bytes_per_element

    @property
    def psum_bytes(self) -> int:
        """Bytes of a partial sum (an accumulator)."""
        return self.psum_bytes_per_element or self.out_bytes


@dataclass(frozen=True)
class MemoryCost:
    """DRAM traffic and stalls of one layer; ``total_cycles = compute_cycles + stall_cycles``."""

    compute_cycles: int
    ifmap_read_bytes: int
    filter_read_bytes: int
    ofmap_read_bytes: int
    ofmap_write_bytes: int
    prologue_cycles: int
    epilogue_cycles: int
    stall_cycles: int

    @property
    def dram_read_bytes(self) -> int:
        """All DRAM reads (ifmap, filters and spilled partial sums)."""
        return self.ifmap_read_bytes + self.filter_read_bytes + self.ofmap_read_bytes

    @property
    def dram_write_bytes(self) -> int:
        """All DRAM writes (ofmap and spilled partial sums)."""
        return self.ofmap_write_bytes

    @property
    def total_cycles(self) -> int:
        """Latency: compute plus stalls (first-fold fill, bandwidth stalls, last write-back)."""
        return self.compute_cycles + self.stall_cycles


@dataclass(frozen=True)
class _Traffic:
    ifmap: int
    filters: int
    psum_reads: int
    ofmap: int
    first_tile: int
    last_tile: int


def _operand_bytes(shape: ConvShape, plan: FoldPlan, mem: MemoryConfig, batch: int) -> tuple[int, int, int]:
    """Per-group bytes of the ifmap (raw or im2col), the filters and the ofmap."""
    sr, t, sc = batch * shape.ofmap_pixels, shape.window, shape.filters_per_group
    raw = batch * shape.in_h * shape.in_w * (shape.channels // shape.groups)
    ifmap = (sr * t if mem.ifmap_im2col else raw) * mem.bytes_per_element
    return ifmap, t * sc * mem.bytes_per_element, sr * sc * mem.out_bytes


def _reads(total: int, fits: bool, times: int) -> int:
    """An operand (or a block of it) is fetched once if it fits in half its SRAM, else ``times`` times."""
    return total if fits else total * times


def _halves(mem: MemoryConfig) -> tuple[int, int, int]:
    """Working (active) half of each double-buffered SRAM."""
    return mem.ifmap_sram_bytes // 2, mem.filter_sram_bytes // 2, mem.ofmap_sram_bytes // 2


def _traffic_os(shape: ConvShape, plan: FoldPlan, mem: MemoryConfig, batch: int) -> _Traffic:
    """os: the ifmap is re-streamed per column fold; a ``T x cols`` filter block serves all row folds."""
    a, b, o = _operand_bytes(shape, plan, mem, batch)
    half_a, half_b, _ = _halves(mem)
    r, c, el = min(plan.rows, plan.spatial_rows), min(plan.cols, plan.spatial_cols), mem.bytes_per_element
    block = plan.temporal * c * el
    ifmap = _reads(a, a <= half_a, plan.col_folds)
    filters = _reads(b, block <= half_b, plan.row_folds)
    # before the first MAC: one ifmap and one filter vector; the R x C results leave at the end of the fold
    return _Traffic(ifmap, filters, 0, o, (r + c) * el, r * c * mem.out_bytes)


def _traffic_stationary(shape: ConvShape, plan: FoldPlan, mem: MemoryConfig, batch: int) -> _Traffic:
    """ws/is: stationary tiles are fetched once, the streamed operand once per column fold unless it
    fits, and a column fold's partial sums (``temporal x cols`` accumulators) spill when they exceed half
    the ofmap SRAM: written and read back at accumulator width once per extra row fold."""
    a, b, o = _operand_bytes(shape, plan, mem, batch)
    half_a, half_b, half_o = _halves(mem)
    r, c, el = min(plan.rows, plan.spatial_rows), min(plan.cols, plan.spatial_cols), mem.bytes_per_element
    psum_tile = plan.temporal * c * mem.psum_bytes
    psums = o // mem.out_bytes * mem.psum_bytes
    spill = 0 if psum_tile <= half_o else psums * (plan.row_folds - 1)
    if plan.dataflow == "ws":  # filters stationary, ifmap streamed
        ifmap, filters = _reads(a, a <= half_a, plan.col_folds), b
    else:  # is: ifmap stationary, filters streamed
        ifmap, filters = a, _reads(b, b <= half_b, plan.col_folds)
    # before the first MAC: the stationary tile and one streamed vector; the last output row leaves last
    return _Traffic(ifmap, filters, spill, o + spill, (r * c + r) * el, c * mem.out_bytes)


def memory_cost(shape: ConvShape, rows: int, cols: int, dataflow: str, mem: MemoryConfig, batch: int = 1) -> MemoryCost:
    """DRAM traffic, stall cycles and latency of a layer under a double-buffering model.

    Traffic: each operand is fetched once when it fits in half its SRAM; otherwise the operand that
    the dataflow re-streams (os/ws: ifmap, is: filters) is fetched once per column fold (and in os a
    filter block that does not fit is fetched once per row fold). ws/is accumulate partial sums over
    the row folds; when a column fold's partial sums do not fit in half the ofmap SRAM they are
    spilled (written and read back, at accumulator width) each row fold.

    Timing: what the first MAC needs is fetched before compute starts (prologue: os one ifmap and
    one filter vector, ws/is the stationary tile and one streamed vector) and what the last cycle
    produces is written after it ends (epilogue: os the R x C result tile, ws/is one output row);
    everything else streams over the DRAM channel while the array computes (double buffering), so
    ``total = prologue + max(compute, transfer - prologue - epilogue) + epilogue`` with
    ``transfer = all DRAM bytes / dram_bytes_per_cycle``, and ``stalls = total - compute``.
    """
    if mem.dram_bytes_per_cycle <= 0:
        raise ValueError("dram_bytes_per_cycle must be positive")
    plan = fold_plan(shape, rows, cols, dataflow, batch)
    tr = (_traffic_os if dataflow == "os" else _traffic_stationary)(shape, plan, mem, batch)
    g, bw = shape.groups, mem.dram_bytes_per_cycle
    compute = plan.folds * plan.cycles_per_fold - 1
    prologue, epilogue = math.ceil(tr.first_tile / bw), math.ceil(tr.last_tile / bw)
    transfer = math.ceil(g * (tr.ifmap + tr.filters + tr.psum_reads + tr.ofmap) / bw)
    overlapped = max(0, transfer - prologue - epilogue)
    stalls = prologue + max(0, overlapped - compute) + epilogue
    traffic = (g * tr.ifmap, g * tr.filters, g * tr.psum_reads, g * tr.ofmap)
    return MemoryCost(compute, *traffic, prologue, epilogue, stalls)
