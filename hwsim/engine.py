"""Run an IR graph on the hwsim kernels, batched, collecting per-layer counters.

Two modes, both bit-exact and both tested against the IR reference:

* ``faithful``: every product goes through the MAC unit of its weight format (multiplier,
  shift, shift + LUT, codebook product LUT or per-level accumulation) in @njit kernels.
* ``fast`` (default): linear formats, and each exponent class of powers of sqrt(2), are integer
  products whose static bound on every partial sum is known. A convolution runs, by preference,
  on oneDNN's int8 kernels (``hwsim.int8_conv``: int8 weights, activations spanning <= 256
  values), as one float convolution of its stacked terms (``hwsim.float_conv``), or as float32
  (float64) BLAS GEMMs over im2col, each exact below 2**24 (2**53); layers past the bounds use
  the faithful kernels. Requantizes and residual adds are fused into the step before them
  (``hwsim.channels_last``: float where proven exact, else int64).

With several workers each runs the whole graph on its slice of the batch (``run``).

The fast paths keep activations channels-last in their narrowest numpy type between layers;
every other op sees int64 arrays, and ``run`` returns int64 NCHW arrays.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache

import numba
import numpy as np
from threadpoolctl import ThreadpoolController

from hwsim.buffer_slots import assign_slots
from hwsim.channels_last import (
    ChannelsLastStep,
    NativeResidualStep,
    ResidualStep,
    add_alignment,
    channels_last_rows,
    exact_requant,
    int_requant,
)
from hwsim.counters import LayerCounts, fresh_counts, layer_counts
from hwsim.exact import float_type
from hwsim.float_conv import FloatConv, plan_float_conv
from hwsim.float_requant import run_float_form
from hwsim.int8_conv import Int8Conv, plan_int8_conv, torch_threads
from hwsim.kernels import im2col as im2col_kernels
from hwsim.kernels import mac, pool, requant
from hwsim.kernels.config import set_threads
from hwsim.kernels.im2col import im2col
from hwsim.memory import retain_freed_memory
from hwsim.native_conv import native_fits, plan_fast_conv, recording
from hwsim.replay import Program, ReplayedNode, rooted_in
from hwsim.weights import MacWeights, decode, product_lut, sqrt2_lut
from qexport.errors import QExportError
from qexport.ir.checker import check_graph
from qexport.ir.dtypes import IntType
from qexport.ir.graph import Graph, Node
from qexport.ir.ops import Op, dynamic_operands, float_form

CPU_COUNT = os.cpu_count() or 1
REPLAYED_SHAPES = 4  # batch shapes per thread with their own slot arrays and replay program
CACHE_BLOCK_BYTES = 1 << 20  # im2col block size: a few images' windows, about half of a core's L2
_POOL: list[ThreadPoolExecutor] = []


@cache
def _blas_controller() -> ThreadpoolController:
    """The BLAS libraries loaded in this process, found once (a fresh search per run costs a millisecond)."""
    return ThreadpoolController()


@contextmanager
def _serial_numba() -> Iterator[None]:
    """Numba's parallel kernels single-threaded in the calling thread inside the block (restored after)."""
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def _gemm_pool() -> ThreadPoolExecutor:
    """One shared pool: BLAS runs single-threaded, each worker multiplies one slice of the batch."""
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(CPU_COUNT, thread_name_prefix="hwsim-gemm"))
    return _POOL[0]


CONV_PATHS = ("auto", "onednn", "float", "blas")
STORAGE_TYPES = (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.int64)


def storage_type(dtype: IntType) -> type:
    """The narrowest numpy integer type holding every value of an IR type."""
    return next(t for t in STORAGE_TYPES if np.iinfo(t).min <= dtype.min and dtype.max <= np.iinfo(t).max)


@dataclass
class GemmTerm:
    table: np.ndarray | None  # activation -> product (None: identity)
    coeff: np.ndarray  # [O, K] float, K in (c, kh, kw) order
    dtype: type


@dataclass
class WeightedPlan:
    mac: MacWeights
    x_min: int
    x_max: int
    zero_point: int
    bias: np.ndarray
    groups: int
    kernel: tuple[int, int]
    gemm_terms: list[GemmTerm] | None  # None: use the faithful kernel
    lut: np.ndarray | None = None
    product_table: np.ndarray | None = None
    conv: Int8Conv | FloatConv | None = None  # one torch convolution for the layer (fast mode)
    acc_bound: int = 0  # largest |accumulator + bias| any input can give


def _gemm_terms(mac_weights: MacWeights, x_min: int, x_max: int, shape: tuple[int, ...]) -> list[GemmTerm] | None:
    """Split the layer into exact GEMMs: one for linear formats, one per exponent for sqrt(2) powers."""
    largest_x = max(abs(x_min), abs(x_max))
    if mac_weights.integer is not None:
        pieces = [(None, mac_weights.integer, largest_x)]
    else:
        lut = sqrt2_lut(mac_weights.frac_bits, int(mac_weights.exponent.max(initial=0)), x_min, x_max)
        xs = np.arange(x_min, x_max + 1, dtype=np.int64)
        pieces = []
        for e in np.unique(mac_weights.exponent[mac_weights.sign != 0]):
            table = xs << (mac_weights.frac_bits - e // 2) if e % 2 == 0 else lut[:, e // 2]
            coeff = np.where(mac_weights.exponent == e, mac_weights.sign, 0)
            pieces.append((table, coeff, int(np.abs(table).max())))
    terms = []
    for table, coeff, largest in pieces:
        dtype = float_type(largest * int(np.abs(coeff).sum(axis=1).max(initial=0)))
        if dtype is None:
            return None
        terms.append(GemmTerm(table, np.ascontiguousarray(coeff.astype(dtype)), dtype))
    return terms


class Engine:
    """Bit-accurate executor of a checked IR graph. It reuses work buffers between runs: one engine per thread."""

    def __init__(
        self,
        graph: Graph,
        mode: str = "fast",
        codebook_style: str = "lut",
        threads: int | None = None,
        conv: str = "auto",
    ):
        """``conv`` (fast mode): ``auto`` runs 1x1 and depthwise convolutions with their requantize on hwsim's
        C kernels (``hwsim.native_conv``) where they apply, the others on oneDNN's int8 kernels where exact,
        else as one exact float convolution, else as BLAS GEMMs; ``onednn`` skips the C kernels, ``float``
        the int8 kernels too, ``blas`` both torch paths."""
        if mode not in ("fast", "faithful"):
            raise QExportError(f"hwsim: unknown mode {mode!r} (fast, faithful)")
        if codebook_style not in ("lut", "per_level"):
            raise QExportError(f"hwsim: unknown codebook style {codebook_style!r} (lut, per_level)")
        self.graph = check_graph(graph)
        if conv not in CONV_PATHS:
            raise QExportError(f"hwsim: unknown convolution path {conv!r} ({', '.join(CONV_PATHS)})")
        self.mode, self.codebook_style, self.threads, self.conv = mode, codebook_style, threads, conv
        self.plans = {node.name: self._plan(node) for node in graph.nodes if node.op in (Op.CONV2D, Op.LINEAR)}
        self.channels_last: dict[str, ChannelsLastStep] = {}  # fused nodes with an exact channels-last form
        self.fused = self._fusable_requants()
        self.residuals = self._residual_steps()
        self._slots = self._output_slots()
        self._positions = {node.name: index for index, node in enumerate(graph.nodes)}
        if self.channels_last:
            retain_freed_memory()  # its per-layer buffers would otherwise page-fault in some processes
        self._local = threading.local()  # per thread: work buffers, worker count inside a batch slice
        self._counts: dict[int, list[LayerCounts]] = {}
        self._workers = max(1, min(threads or CPU_COUNT, CPU_COUNT))

    def _fusable_requants(self) -> dict[str, Node]:
        """Single-GEMM layers and adds whose accumulator feeds exactly one requantize: one fused step."""
        fused = {}
        for node in self.graph.nodes:
            plan = self.plans.get(node.name)
            single_gemm = plan is not None and (
                plan.conv is not None or (plan.gemm_terms is not None and len(plan.gemm_terms) == 1)
            )
            if not (single_gemm or node.op is Op.ADD):
                continue
            consumers = self.graph.consumers(node.outputs[0])
            if (
                len(consumers) == 1
                and consumers[0].op is Op.REQUANTIZE
                and len(consumers[0].inputs) == 1
                and not float_form(consumers[0])  # the float32 forms run unfused (hwsim.float_requant)
                and node.outputs[0] not in self.graph.outputs
            ):
                channels_last = node.op is Op.ADD or plan.conv is not None
                form = self._float_requant(node, consumers[0], plan) if channels_last else None
                shape = self.graph.tensors[node.outputs[0]].shape
                layout = ((*shape[2:], shape[1]), storage_type(self.graph.tensors[consumers[0].outputs[0]].dtype))
                int_form = self._float_requant(node, consumers[0], plan, int_requant) if form is not None else None
                if form is not None and node.op is Op.ADD:
                    zero_points = (self._zero_point(node.inputs[0]), self._zero_point(node.inputs[1]))
                    multipliers = (node.attrs["lhs_multiplier"], node.attrs["rhs_multiplier"])
                    alignment = add_alignment(form, zero_points, multipliers)
                    step = ChannelsLastStep(form, *layout, alignment=alignment, int_form=int_form)
                    self.channels_last[node.name] = step
                elif form is not None and plan.conv is not None:
                    step = ChannelsLastStep(form, *layout, conv=plan.conv, int_form=int_form)
                    native = self.conv == "auto" and isinstance(plan.conv, Int8Conv)
                    if native and native_fits(step.form, step.integer_form()):
                        step.native = plan_fast_conv(plan.conv)
                    self.channels_last[node.name] = step
                elif plan is not None and plan.conv is not None:
                    continue  # its accumulators then take the unfused integer path
                fused[node.name] = consumers[0]
        return fused

    def _residual_steps(self) -> dict[str, tuple[ResidualStep, Node, Node, Node]]:
        """Fused torch convolutions whose requantized output only feeds a fused residual add whose other
        operand is computed earlier: conv name -> (step, its requantize, the add, the add's requantize)."""
        order = {node.name: i for i, node in enumerate(self.graph.nodes)}
        for name, requant_node in self.fused.items():
            order[requant_node.name] = order[name]  # a fused requantize runs with its producer
        producer = {out: node.name for node in self.graph.nodes for out in node.outputs}
        steps = {}
        for name, requant_node in self.fused.items():
            conv_step = self.channels_last.get(name)
            tensor = requant_node.outputs[0]
            consumers = self.graph.consumers(tensor)
            if conv_step is None or conv_step.conv is None or len(consumers) != 1 or tensor in self.graph.outputs:
                continue
            add = consumers[0]
            add_step = self.channels_last.get(add.name)
            if add_step is None or add.op is not Op.ADD or add.inputs[0] == add.inputs[1]:
                continue
            side = add.inputs.index(tensor)
            other = add.inputs[1 - side]
            if other in producer and order[producer[other]] > order[name]:
                continue  # not computed yet when the convolution runs
            if conv_step.native is not None:
                step = NativeResidualStep.of(conv_step, add_step, other, side, self._add_bound(add))
            else:
                step = ResidualStep.of(conv_step, add_step, other, side)
            if step is not None:
                steps[name] = (step, requant_node, add, self.fused[add.name])
        return steps

    def _output_slots(self) -> dict[str, int]:
        """The shared output array of each channels-last step (``hwsim.buffer_slots``), by buffer name."""
        position = {node.name: index for index, node in enumerate(self.graph.nodes)}
        steps = {name: (position[name], self.fused[name].outputs[0]) for name in self.channels_last}
        for name, (_, _, add, add_requant) in self.residuals.items():  # the add runs with the convolution
            steps[add.name] = (min(position[name], steps[add.name][0]), add_requant.outputs[0])
        return assign_slots(self.graph, steps)

    def _float_requant(self, node: Node, requant_node: Node, plan: WeightedPlan | None, make=exact_requant):
        """The exact channels-last form (``make``: float where exact, else int64; or only one) or None."""
        channels = self.graph.tensors[node.outputs[0]].shape[1]
        out_info = self.graph.tensors[requant_node.outputs[0]]
        acc_type = self.graph.tensors[node.outputs[0]].dtype
        return make(
            *self._requant_vectors(requant_node, channels),
            plan.bias if plan else np.zeros(channels, dtype=np.int64),
            plan.acc_bound if plan else self._add_bound(node),
            out_info.quant.zero_point if out_info.quant else 0,
            (requant_node.attrs["clip_min"], requant_node.attrs["clip_max"]),
            (acc_type.min, acc_type.max),
        )

    def _add_bound(self, node: Node) -> int:
        """Largest |aligned sum| an add can produce from its input types."""
        bound = 0
        for tensor, multiplier in zip(
            node.inputs, (node.attrs["lhs_multiplier"], node.attrs["rhs_multiplier"]), strict=True
        ):
            info = self.graph.tensors[tensor]
            zero = self._zero_point(tensor)
            bound += max(abs(info.dtype.min - zero), abs(info.dtype.max - zero)) * abs(multiplier)
        return bound

    def _static_counts(self, batch: int) -> list[LayerCounts]:
        """The graph-only counters for a batch size (computed once, copied per run)."""
        if batch not in self._counts:
            self._counts[batch] = layer_counts(self.graph, batch, self.codebook_style)
        return self._counts[batch]

    def _requant_vectors(self, node: Node, channels: int) -> tuple[np.ndarray, np.ndarray]:
        multiplier = np.broadcast_to(np.asarray(node.attrs["multiplier"], dtype=np.int64), (channels,)).copy()
        shift = np.broadcast_to(np.asarray(node.attrs["shift"], dtype=np.int64), (channels,)).copy()
        return multiplier, shift

    def _fused_requant(self, node: Node, requant_node: Node, inputs: list[np.ndarray], counts: list[LayerCounts]):
        step = self.channels_last.get(node.name)
        if step is not None and step.accepts(inputs):
            out = self._output(node.name, step.out_shape(inputs[0].shape[0]), step.out_type)
            self._record(counts, [step(inputs, out)])
            return out.transpose(0, 3, 1, 2) if out.ndim == 4 else out
        out_info = self.graph.tensors[requant_node.outputs[0]]
        acc_info = self.graph.tensors[node.outputs[0]]
        out_shape = (inputs[0].shape[0], *acc_info.shape[1:])
        channels = out_shape[1]
        multiplier, shift = self._requant_vectors(requant_node, channels)
        zero_point = out_info.quant.zero_point if out_info.quant else 0
        limits = (
            requant_node.attrs["clip_min"],
            requant_node.attrs["clip_max"],
            acc_info.dtype.min,
            acc_info.dtype.max,
        )
        flat = (out_shape[0], channels, math.prod(out_shape[2:]))
        plan = self.plans.get(node.name)
        out = np.empty(flat, dtype=storage_type(out_info.dtype))
        inputs = [v.astype(np.int64, copy=False) for v in inputs]
        if node.op is Op.ADD:
            lhs, rhs = (np.ascontiguousarray(v.reshape(flat)) for v in inputs)
            zeros = (self._zero_point(node.inputs[0]), self._zero_point(node.inputs[1]))
            alignment = (node.attrs["lhs_multiplier"], node.attrs["rhs_multiplier"])

            def work(part: slice) -> tuple[int, int]:
                return requant.add_requantize(
                    lhs[part], rhs[part], *zeros, *alignment, multiplier, shift, zero_point, *limits, out[part]
                )
        else:
            gemm = self._gemm_step(node, inputs[0], plan, plan.gemm_terms[0], out_shape)

            def work(part: slice) -> tuple[int, int]:
                return requant.requantize_exact_float(
                    gemm(part), plan.bias, multiplier, shift, zero_point, *limits, out[part]
                )

        self._record(counts, self._map_batch(work, out_shape[0]))
        return out.reshape(out_shape)

    @staticmethod
    def _record(counts: list[LayerCounts], results: list[tuple[int, int]]) -> None:
        counts[1].saturations = int(sum(r[0] for r in results))
        counts[0].overflow_events = int(sum(r[1] for r in results))

    def _map_batch(self, work, batch: int) -> list:
        """Run ``work(slice)`` on contiguous slices of the batch, one per worker thread (kernels release the GIL)."""
        count = min(getattr(self._local, "workers", self._workers), batch)
        parts = [slice(batch * i // count, batch * (i + 1) // count) for i in range(count)]
        others = [_gemm_pool().submit(work, part) for part in parts[1:]]
        first = work(parts[0])  # the calling thread takes a share too
        return [first, *(future.result() for future in others)]

    def _plan(self, node: Node) -> WeightedPlan:
        graph = self.graph
        info = graph.tensors[node.inputs[0]]
        zero_point = info.quant.zero_point if info.quant else 0
        x_min, x_max = info.dtype.min - zero_point, info.dtype.max - zero_point
        weight = graph.weights[node.attrs["weight"]]
        mac_weights = decode(weight)
        bias = np.zeros(mac_weights.rows, dtype=np.int64)
        if node.attrs.get("bias"):
            bias_weight = graph.weights[node.attrs["bias"]]
            bias = decode(bias_weight).integer.reshape(-1)
        groups = node.attrs.get("groups", 1)
        kernel = tuple(weight.shape[2:]) if node.op is Op.CONV2D else (1, 1)
        terms = _gemm_terms(mac_weights, x_min, x_max, tuple(weight.shape)) if self.mode == "fast" else None
        plan = WeightedPlan(mac_weights, x_min, x_max, zero_point, bias, groups, kernel, terms if groups == 1 else None)
        if mac_weights.integer is not None:
            largest_x = max(abs(x_min), abs(x_max))
            plan.acc_bound = int((np.abs(mac_weights.integer).sum(axis=1) * largest_x + np.abs(bias)).max(initial=0))
        if node.op is Op.CONV2D and self.mode == "fast":
            self._plan_conv(plan, node, info, terms, tuple(weight.shape))
        if mac_weights.kind == "shift_lut":
            plan.lut = sqrt2_lut(mac_weights.frac_bits, int(weight.attrs["max_exponent"]), x_min, x_max)
        if mac_weights.kind == "codebook" and self.codebook_style == "lut":
            plan.product_table = product_lut(mac_weights.levels, x_min, x_max)
        return plan

    def _plan_conv(self, plan: WeightedPlan, node: Node, info, terms: list[GemmTerm] | None, shape: tuple) -> None:
        """Pick the layer's torch convolution: oneDNN int8 where exact, else one exact float convolution
        (each planner also probes the layer's geometry once, cached, and refuses it on any difference)."""
        zero_point = plan.zero_point
        size = tuple(info.shape[2:])
        geometry = (node.attrs["stride"], node.attrs["padding"], node.attrs["dilation"], plan.groups, size)
        if self.conv in ("auto", "onednn") and plan.mac.integer is not None:
            integer = plan.mac.integer.reshape(shape)
            plan.conv = plan_int8_conv(integer, info.dtype.min, info.dtype.max, zero_point, *geometry)
        if self.conv != "blas" and plan.conv is None and terms is not None:
            identity = np.arange(plan.x_min, plan.x_max + 1, dtype=np.int64)
            stacked = [(identity if t.table is None else t.table, t.coeff.astype(np.int64)) for t in terms]
            planned = plan_float_conv(stacked, shape, info.dtype.min, zero_point, *geometry)
            if planned is not None:
                plan.conv, bound = planned
                plan.acc_bound = bound + int(np.abs(plan.bias).max(initial=0))

    def _output(self, layer: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A channels-last step's output: a view of its slot's array, which steps whose tensors are never
        live at the same time share (``hwsim.buffer_slots``), so writes land in recently used memory."""
        arrays = self._local.slots
        slot = self._slots[layer]
        size = math.prod(shape) * np.dtype(dtype).itemsize
        array = arrays.get(slot)
        if array is None or array.size < size:
            array = arrays[slot] = np.empty(size, dtype=np.uint8)  # a live tensor never holds an old one
        return array[:size].view(dtype).reshape(shape)

    def _buffer(self, layer: str, role: str, shape: tuple[int, ...], dtype, zero: bool = False) -> np.ndarray:
        """A work array reused across runs of the same shape (padding borders stay zero)."""
        key = (layer, role, np.dtype(dtype).str)
        buffers = self._local.__dict__.setdefault("buffers", {})
        array = buffers.get(key)
        if array is None or array.shape != shape:
            array = np.zeros(shape, dtype=dtype) if zero else np.empty(shape, dtype=dtype)
            buffers[key] = array
        return array

    # --- weighted layers -------------------------------------------------------------
    def _patches(self, node: Node, x: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray:
        if node.op is Op.LINEAR:
            return np.ascontiguousarray(x)
        plan = self.plans[node.name]
        stride, dilation, padding = node.attrs["stride"], node.attrs["dilation"], node.attrs["padding"]
        return im2col(
            np.ascontiguousarray(x),
            plan.kernel[0],
            plan.kernel[1],
            stride[0],
            stride[1],
            dilation[0],
            dilation[1],
            padding[0],
            padding[1],
            out_shape[2],
            out_shape[3],
            x.dtype.type(0),
        )

    def _gemm_step(self, node: Node, x: np.ndarray, plan: WeightedPlan, term: GemmTerm, out_shape):
        """A function of a batch slice: pad, im2col and one exact float GEMM per image -> acc[slice, O, P]."""
        batch = x.shape[0]
        if node.op is Op.LINEAR:
            centred = x - plan.zero_point
            values = (centred if term.table is None else term.table[centred - plan.x_min]).astype(term.dtype)
            return lambda part: (values[part] @ term.coeff.T)[:, :, None]
        top, left, bottom, right = node.attrs["padding"]
        _, channels, height, width = x.shape
        padded = self._buffer(
            node.name, "padded", (batch, channels, height + top + bottom, width + left + right), term.dtype, zero=True
        )
        pixels = out_shape[2] * out_shape[3]
        acc = self._buffer(node.name, "acc", (batch, term.coeff.shape[0], pixels), term.dtype)
        stride, dilation = node.attrs["stride"], node.attrs["dilation"]
        table = None if term.table is None else term.table.astype(term.dtype)
        # im2col a few images at a time so the expanded windows stay in cache for the GEMM
        per_block = max(1, CACHE_BLOCK_BYTES // (plan.mac.window * pixels * np.dtype(term.dtype).itemsize))

        def step(part: slice) -> np.ndarray:
            if table is None:
                im2col_kernels.pad_centred(x[part], plan.zero_point, top, left, padded[part])
            else:
                im2col_kernels.pad_table(x[part], table, plan.zero_point + plan.x_min, top, left, padded[part])
            cols = self._buffer(node.name, f"cols{part.start}", (per_block, plan.mac.window, pixels), term.dtype)
            for start in range(part.start, part.stop, per_block):
                block = slice(start, min(start + per_block, part.stop))
                count = block.stop - block.start
                im2col_kernels.im2col_batched(
                    padded[block],
                    plan.kernel[0],
                    plan.kernel[1],
                    stride[0],
                    stride[1],
                    dilation[0],
                    dilation[1],
                    out_shape[2],
                    out_shape[3],
                    cols[:count],
                )
                np.matmul(term.coeff, cols[:count], out=acc[block])
            return acc[part]

        return step

    def _gemm(self, node: Node, x: np.ndarray, plan: WeightedPlan, term: GemmTerm, out_shape) -> np.ndarray:
        """acc [N, O, OH * OW] (linear: [N, O, 1]) of one GEMM term, computed slice by slice in threads."""
        step = self._gemm_step(node, x, plan, term, out_shape)
        return np.concatenate(self._map_batch(step, x.shape[0]), axis=0)

    def _faithful(self, plan: WeightedPlan, patches: np.ndarray, rows: slice) -> np.ndarray:
        w = plan.mac
        if w.kind == "multiply":
            return mac.mac_multiply(patches, w.integer[rows])
        if w.kind == "shift" and w.shift is not None:
            return mac.mac_shift(patches, w.sign[rows], w.shift[rows])
        if w.kind == "shift":  # apot: several shifts per weight, summed into one integer weight
            return mac.mac_multiply(patches, w.integer[rows])
        if w.kind == "shift_lut":
            return mac.mac_shift_lut(patches, w.sign[rows], w.exponent[rows], w.frac_bits, plan.lut, plan.x_min)
        if self.codebook_style == "per_level":
            return mac.mac_per_level(patches, w.indices[rows], w.levels[rows])
        return mac.mac_product_lut(patches, w.indices[rows], plan.product_table[rows], plan.x_min)

    def _weighted(self, node: Node, x: np.ndarray) -> np.ndarray:
        plan = self.plans[node.name]
        out_shape = (x.shape[0], *self.graph.tensors[node.outputs[0]].shape[1:])
        if plan.conv is not None:
            return (plan.conv(x).astype(np.int64) + plan.bias).transpose(0, 3, 1, 2)
        x = x.astype(np.int64, copy=False)
        centred = x - plan.zero_point
        if plan.gemm_terms is not None:
            acc = np.zeros(out_shape, dtype=np.int64)  # stays zero when every weight is zero
            for term in plan.gemm_terms:
                acc += self._gemm(node, x, plan, term, out_shape).astype(np.int64).reshape(out_shape)
        else:
            channels_per_group = x.shape[1] // plan.groups
            rows_per_group = plan.mac.rows // plan.groups
            parts = []
            for g in range(plan.groups):
                group_input = centred[:, g * channels_per_group : (g + 1) * channels_per_group]
                patches = self._patches(node, np.ascontiguousarray(group_input), out_shape)
                parts.append(self._faithful(plan, patches, slice(g * rows_per_group, (g + 1) * rows_per_group)))
            acc = np.concatenate(parts, axis=1)
            if node.op is Op.CONV2D:
                acc = acc.reshape(out_shape[0], out_shape[2], out_shape[3], out_shape[1]).transpose(0, 3, 1, 2)
        acc = acc + plan.bias.reshape((1, -1) + (1,) * (len(out_shape) - 2))
        return np.ascontiguousarray(acc)

    # --- other ops ---------------------------------------------------------------------
    def _zero_point(self, tensor: str) -> int:
        quant = self.graph.tensors[tensor].quant
        return quant.zero_point if quant else 0

    def _requantize(self, node: Node, values: list[np.ndarray]) -> tuple[np.ndarray, int]:
        acc = values[0]
        if float_form(node):
            return run_float_form(self.graph, node, acc)
        channels = acc.shape[1] if acc.ndim > 1 else 1
        multiplier, shift = self._requant_vectors(node, channels)
        empty = np.zeros(0, dtype=np.int64)
        operands = dict(zip(dynamic_operands(node), values[1:], strict=False))
        num, den = (operands[k].astype(np.int64).reshape(-1) if k in operands else empty for k in ("num", "den"))
        if den.size and den.min() <= 0:
            raise QExportError(f"hwsim: node {node.name!r}: dynamic divisor must be positive, got {den.min()}")
        shaped = np.ascontiguousarray(acc.reshape(acc.shape[0], channels, -1), dtype=np.int64)
        out, clipped = requant.requantize(
            shaped,
            multiplier,
            shift,
            num,
            den,
            self._zero_point(node.outputs[0]),
            node.attrs["clip_min"],
            node.attrs["clip_max"],
        )
        return out.reshape(acc.shape), int(clipped)

    def _pool(self, node: Node, x: np.ndarray) -> np.ndarray:
        out_shape = self.graph.tensors[node.outputs[0]].shape
        if node.op is Op.GLOBAL_AVGPOOL:
            kernel, stride, padding, count_pad = x.shape[2:], (1, 1), (0, 0), True
        else:
            kernel, stride = node.attrs["kernel"], node.attrs["stride"]
            padding, count_pad = node.attrs["padding"], node.attrs.get("count_include_pad", True)
        return pool.pool2d(
            np.ascontiguousarray(x),
            kernel[0],
            kernel[1],
            stride[0],
            stride[1],
            padding[0],
            padding[1],
            out_shape[2],
            out_shape[3],
            node.op is Op.MAXPOOL,
            count_pad,
            self._zero_point(node.inputs[0]),
        )

    def _residual(self, name: str, x: np.ndarray, values: dict, by_name: dict, skip: set) -> bool:
        """Run a ResidualStep when the add's other operand is channels-last; False: run the nodes one by one."""
        step, requant_node, add, add_requant = self.residuals[name]
        other_rows = channels_last_rows(values[step.other])
        if other_rows is None:
            return False
        out = self._output(add.name, step.add.out_shape(x.shape[0]), step.add.out_type)
        results = step(x, other_rows, out)
        by_name[name].overflow_events, by_name[requant_node.name].saturations = int(results[1]), int(results[0])
        by_name[add.name].overflow_events, by_name[add_requant.name].saturations = int(results[3]), int(results[2])
        values[add_requant.outputs[0]] = out.transpose(0, 3, 1, 2) if out.ndim == 4 else out
        skip.update((requant_node.name, add.name, add_requant.name))
        return True

    def _run_node(self, node: Node, values: list[np.ndarray], counts: LayerCounts) -> np.ndarray:
        op = node.op
        if op in (Op.CONV2D, Op.LINEAR):
            return self._weighted(node, values[0])
        if op is Op.GLOBAL_AVGPOOL and (rows := channels_last_rows(values[0])) is not None:
            batch, channels = values[0].shape[:2]
            pooled = pool.global_avgpool_channels_last(
                rows.reshape(batch, -1, channels), self._zero_point(node.inputs[0])
            )
            return pooled.reshape(batch, channels, 1, 1)
        values = [v.astype(np.int64, copy=False) for v in values]
        if op is Op.REQUANTIZE:
            out, counts.saturations = self._requantize(node, values)
            return out
        if op is Op.ADD:
            lhs = values[0] - self._zero_point(node.inputs[0])
            rhs = values[1] - self._zero_point(node.inputs[1])
            return lhs * node.attrs["lhs_multiplier"] + rhs * node.attrs["rhs_multiplier"]
        if op in (Op.MAXPOOL, Op.AVGPOOL, Op.GLOBAL_AVGPOOL):
            return self._pool(node, values[0])
        if op is Op.RELU:
            return np.maximum(values[0], self._zero_point(node.inputs[0]))
        if op is Op.CLIP:
            return np.clip(values[0], node.attrs["clip_min"], node.attrs["clip_max"])
        if op is Op.FLATTEN:
            return values[0].reshape(values[0].shape[0], -1)
        if op is Op.RESHAPE:
            return values[0].reshape(values[0].shape[0], *node.attrs["shape"])
        return np.concatenate(values, axis=node.attrs["axis"])

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[LayerCounts]]:
        """Execute on integer inputs; return (outputs, per-layer counters for this batch).

        With several workers the batch is cut into one slice per worker and each worker runs the whole
        graph on its slice, single-threaded (oneDNN included): no barrier per layer, and the fused
        requantize kernels run on every core. Every op is per sample, so the slices are independent.
        """
        set_threads(self.threads)
        batch = len(next(iter(feeds.values())))
        counts = fresh_counts(self._static_counts(batch))
        values: dict[str, np.ndarray] = {}
        for name in self.graph.inputs:
            feed = np.asarray(feeds[name], dtype=np.int64)
            if feed.shape[1:] != tuple(self.graph.tensors[name].shape[1:]):
                raise QExportError(
                    f"hwsim: input {name!r} has shape {feed.shape}, expected {self.graph.tensors[name].shape}"
                )
            values[name] = feed
        count = min(self._workers, batch)
        parts = [slice(batch * i // count, batch * (i + 1) // count) for i in range(count)]
        with _blas_controller().limit(limits=1, user_api="blas"):
            if count == 1:
                uses_torch = any(plan.conv is not None for plan in self.plans.values())
                with torch_threads(self._workers if uses_torch else None):
                    results = [self._run_nodes(values, counts)]
            else:
                with torch_threads(1), _serial_numba():
                    others = [_gemm_pool().submit(self._run_part, values, part) for part in parts[1:]]
                    results = [self._run_part(values, parts[0])]  # the calling thread takes a share too
                    results += [future.result() for future in others]
                for layer, *shares in zip(counts, *(part_counts for _, part_counts in results), strict=True):
                    layer.overflow_events = sum(share.overflow_events for share in shares)
                    layer.saturations = sum(share.saturations for share in shares)
        outputs = {
            name: np.ascontiguousarray(np.concatenate([out[name] for out, _ in results]), dtype=np.int64)
            if count > 1
            else np.array(results[0][0][name], dtype=np.int64, order="C")
            for name in self.graph.outputs
        }
        return outputs, counts

    def _run_part(self, values: dict[str, np.ndarray], part: slice) -> tuple[dict[str, np.ndarray], list[LayerCounts]]:
        """One worker's slice of the batch, run single-threaded in this thread (work buffers are per thread)."""
        import torch

        torch.set_num_threads(1)  # this thread's OpenMP team size (oneDNN's), not only the global setting
        set_threads(1)
        self._local.workers = 1  # no nested batch splitting inside a slice
        counts = fresh_counts(self._static_counts(part.stop - part.start))
        try:
            return self._run_nodes({name: value[part] for name, value in values.items()}, counts)
        finally:
            del self._local.workers

    def _run_nodes(self, values: dict[str, np.ndarray], counts: list[LayerCounts]):
        """The graph's nodes in order on ``values`` (the inputs); fills the data-dependent counters. Each
        batch shape on a thread has its own slot arrays; its second run records the native kernel calls,
        and later runs replay them (``hwsim.replay``)."""
        shapes = self._local.__dict__.setdefault("shapes", {})
        key = tuple((values[name].shape, values[name].dtype.str, values[name].strides) for name in self.graph.inputs)
        state = shapes.get(key)
        if state is None and len(shapes) < REPLAYED_SHAPES:
            state = shapes[key] = _ShapeState()
        if state is None:  # too many shapes on this thread: shared slot arrays, no replays
            self._local.slots = self._local.__dict__.setdefault("shared_slots", {})
            return self._walk(values, counts, None)
        self._local.slots = state.slots
        if state.program is not None:
            return self._replay(state.program, values, counts)
        state.runs += 1
        if state.runs == 1 or not self.channels_last:  # the first run sizes the slot arrays
            return self._walk(values, counts, None)
        steps: list[int | ReplayedNode] = []
        result = self._walk(values, counts, steps)
        state.program = Program.of(steps)
        return result

    def _walk(self, values: dict[str, np.ndarray], counts: list[LayerCounts], steps: list | None):
        """Run every node in Python; with ``steps``, also record what each one did (an index, or a ReplayedNode)."""
        by_name = {layer.name: layer for layer in counts}
        skip: set[str] = set()
        owners = None if steps is None else {id(array) for array in self._local.slots.values()}
        for index, (node, layer) in enumerate(zip(self.graph.nodes, counts, strict=True)):
            if node.name in skip:
                continue
            if steps is None:
                self._step(node, layer, values, by_name, skip)
                continue
            before = dict(values)
            with recording() as tape:
                self._step(node, layer, values, by_name, skip)
            written = {name: value for name, value in values.items() if before.get(name) is not value}
            steps.append(self._replayable(index, node, tape, written, values, owners) or index)
        return {name: values[name] for name in self.graph.outputs}, counts

    def _replayable(self, index: int, node: Node, tape, written: dict, values: dict, owners: set[int]):
        """The node as a ReplayedNode when its work was one native kernel call (and input copies) reading and
        writing only slot arrays, else None."""
        if not tape.pure or len(tape.counts) != 1 or not written:
            return None
        position = self._positions
        reads = list(node.inputs)
        residual = self.residuals.get(node.name)
        if residual is not None and residual[3].outputs[0] in written:
            step, requant_node, add, add_requant = residual
            reads.append(step.other)
            counters = [
                (index, "overflow_events", 1),
                (position[requant_node.name], "saturations", 0),
                (position[add.name], "overflow_events", 3),
                (position[add_requant.name], "saturations", 2),
            ]
        elif node.name in self.fused:
            counters = [(position[self.fused[node.name].name], "saturations", 0), (index, "overflow_events", 1)]
        else:
            return None
        arrays = [values[name] for name in reads] + list(written.values())
        if not all(rooted_in(array, owners) for array in arrays):
            return None
        return ReplayedNode(tape, written, counters)

    def _replay(self, program: Program, values: dict[str, np.ndarray], counts: list[LayerCounts]):
        by_name = {layer.name: layer for layer in counts}
        skip: set[str] = set()
        nodes = self.graph.nodes
        for item in program.items:
            if isinstance(item, int):
                self._step(nodes[item], counts[item], values, by_name, skip)
            else:
                item.run(values, counts)
        return {name: values[name] for name in self.graph.outputs}, counts

    def _step(self, node: Node, layer: LayerCounts, values: dict, by_name: dict, skip: set) -> None:
        """One node (with the ones fused into it, which join ``skip``)."""
        inputs = [values[name] for name in node.inputs]
        if node.name in self.residuals and self._residual(node.name, inputs[0], values, by_name, skip):
            return
        if node.name in self.fused:
            requant_node = self.fused[node.name]
            pair = [layer, by_name[requant_node.name]]
            values[requant_node.outputs[0]] = self._fused_requant(node, requant_node, inputs, pair)
            skip.add(requant_node.name)
            return
        result = self._run_node(node, inputs, layer)
        info = self.graph.tensors[node.outputs[0]]
        layer.overflow_events = int(np.count_nonzero((result < info.dtype.min) | (result > info.dtype.max)))
        values[node.outputs[0]] = result


@dataclass
class _ShapeState:
    """Per thread and batch shape: its slot arrays, how many runs it had, and its replay program."""

    slots: dict = field(default_factory=dict)
    runs: int = 0
    program: Program | None = None


def quantize(graph: Graph, name: str, values: np.ndarray) -> np.ndarray:
    """ONNX QuantizeLinear's rule (float32 division, ties to even, saturate)."""
    info = graph.tensors[name]
    scaled = np.rint(np.asarray(values, dtype=np.float32) / np.float32(info.quant.scale))
    return np.clip(scaled.astype(np.int64) + info.quant.zero_point, info.dtype.min, info.dtype.max)


def dequantize(graph: Graph, name: str, values: np.ndarray) -> np.ndarray:
    """ONNX DequantizeLinear's rule: float32(q - zero_point) * float32(scale)."""
    quant = graph.tensors[name].quant
    return (values - quant.zero_point).astype(np.float32) * np.float32(quant.scale)


__all__ = ["Engine", "dequantize", "quantize"]
