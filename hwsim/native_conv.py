"""hwsim's native convolutions: exact uint8 x int8 sums with the requantize in their epilogue (C, ctypes).

oneDNN (``hwsim.int8_conv``) writes float32 accumulators that a second pass requantizes; for the small
layers of mobile networks that round trip through memory costs more than the multiplies. The kernels
in ``hwsim/native/qconv.c`` keep each tile's int32 sums in registers and requantize them there with the
float32 rules of ``hwsim.channels_last`` (exact where the bound proves it, else checked: lanes near a
half redone with the IR's integer rule), counting saturations and overflows as the Numba kernels do,
and optionally fuse the residual add the output feeds with that add's requantize. They cover dense
convolutions (groups 1) and depthwise ones (one input and one output channel per group), and take
layers whose oneDNN plan (``Int8Conv``) already proved the sums exact.

The library is built when the package is installed (``setup.py``, an optional extension: without a C
compiler hwsim installs and runs its other paths). Variants: AVX-512 VNNI (what the engine uses, for
every layer, or with AMX present for 1x1, depthwise and first layers: ``plan_fast_conv``), AMX for dense
layers, and portable C (also the only one with the int64 rule as its main epilogue); tests compare each
with numpy. A thread's kernel calls can be recorded and replayed without Python (``recording``,
``run_calls``, ``hwsim.replay``). ``available()`` is True only with AVX-512
VNNI, since the portable loops are slower than oneDNN.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

import numpy as np

from hwsim.int8_conv import Int8Conv, output_size

PORTABLE, AVX512, AMX = 1, 2, 4  # qc_variants() bits; AMX: dense layers on tile registers
SOURCE_KINDS = {np.dtype(t): i for i, t in enumerate((np.uint8, np.int8, np.int16, np.int32, np.int64))}
OUT_KINDS = {np.dtype(np.uint8): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 3}
LIBRARY_STEM = "_qconv"
BLOCK = 16  # output channels per vpdpbusd register
LANE = 4  # input channels per int32 lane
KINDS = ("pointwise", "dense", "depthwise")
DEPTHWISE_PAD_PIXELS = 256  # strided depthwise inputs up to 16 x 16 are copied padded (stride 1: all of them)
DEPTHWISE_TAPS = 25  # the vector depthwise kernel holds a kernel's taps in registers: up to 5 x 5 (QC_DW_TAPS)
TILE_PIXELS = 8  # output pixels per dense register tile (QC_MAX_P): the epilogue's arrays span this many
SMALL_K = 64  # dense layers with at most this many products per output (a first layer) run on VNNI too
FAST_KINDS = ("pointwise", "depthwise")  # on an AMX CPU, where the VNNI kernels beat oneDNN + requantize


class Geometry(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_int64)
        for name in (
            "n", "hp", "wp", "cp", "o", "kh", "kw", "sh", "sw", "dh", "dw", "oh", "ow", "pad_top", "pad_left", "flip"
        )
    ]  # fmt: skip


class Residual(ctypes.Structure):
    _fields_ = [
        ("add", ctypes.c_void_p),
        ("other", ctypes.c_void_p),
        *(
            (name, ctypes.c_int64)
            for name in ("other_kind", "own_zero", "other_zero", "own_multiplier", "other_multiplier")
        ),
    ]


class Epilogue(ctypes.Structure):
    _fields_ = [
        *((name, ctypes.c_void_p) for name in ("correction", "bias", "multiplier", "shift", "up", "scale_f", "bias_f")),
        *(
            (name, ctypes.c_int64)
            for name in ("zero_point", "clip_min", "clip_max", "acc_min", "acc_max", "low_counts", "check_overflow",
                         "rule")
        ),  # fmt: skip
        ("error", ctypes.c_float),
        ("out_kind", ctypes.c_int64),
        ("offset", ctypes.c_void_p),
        ("wide_products", ctypes.c_int64),
        ("uniform_int", ctypes.c_int64),
    ]


RULE_INT, RULE_FLOAT32, RULE_CHECKED32 = 0, 1, 2
CACHE_LINE = 64  # bytes


@cache
def library() -> ctypes.CDLL | None:
    """The built kernels, or None when the package was installed without them."""
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"{LIBRARY_STEM}{suffix}"
        if path.is_file():
            lib = ctypes.CDLL(str(path))
            lib.qc_variants.restype = ctypes.c_int64
            lib.qc_source_sha256.restype = ctypes.c_char_p
            pointer = ctypes.c_void_p
            lib.qc_dense.restype = lib.qc_depthwise.restype = ctypes.c_int64
            lib.qc_dense.argtypes = [ctypes.c_int64, *[pointer] * 8]
            lib.qc_depthwise.argtypes = [ctypes.c_int64, pointer, ctypes.c_int64, pointer, pointer, pointer, pointer,
                                         pointer]  # fmt: skip
            lib.qc_depthwise_fast.restype = ctypes.c_int64
            lib.qc_depthwise_fast.argtypes = [ctypes.c_int64, *[pointer] * 9]
            lib.qc_pad_copy.restype = ctypes.c_int64
            lib.qc_pad_copy.argtypes = [pointer, *[ctypes.c_int64] * 5, pointer, ctypes.c_int64, pointer,
                                        *[ctypes.c_int64] * 5]  # fmt: skip
            lib.qc_depthwise_fast_work.restype = ctypes.c_int64
            lib.qc_depthwise_fast_work.argtypes = [pointer]
            lib.qc_run.restype = ctypes.c_int64
            lib.qc_run.argtypes = [pointer, ctypes.c_int64]
            return lib
    return None


def built_from() -> str | None:
    """The sha256 of the C source the library was built from (None without the library)."""
    lib = library()
    return None if lib is None else lib.qc_source_sha256().decode()


def variants() -> int:
    """Bit mask of the variants this machine runs (PORTABLE | AVX512 | AMX), 0 without the library."""
    lib = library()
    return 0 if lib is None else int(lib.qc_variants())


def available() -> bool:
    """True when the fast (AVX-512 VNNI) kernels run here."""
    return bool(variants() & AVX512)


CALL_KINDS = {"qc_pad_copy": 0, "qc_dense": 1, "qc_depthwise": 2, "qc_depthwise_fast": 3}  # qc_run's QC_CALL_*
CALL_WIDTH = 18  # QC_CALL_WIDTH: kind, counts, 16 arguments


@dataclass
class Tape:
    """The kernel calls one thread made while ``recording``: rows for ``qc_run``, the objects their pointers
    point into (kept alive with the rows), the counts array of each kernel call, and ``pure``: False once
    the work went through numpy too (a replay of the rows alone would skip it)."""

    rows: list[list[int]] = field(default_factory=list)
    keep: list = field(default_factory=list)
    counts: list[np.ndarray] = field(default_factory=list)
    pure: bool = True


_tapes = threading.local()


@contextmanager
def recording() -> Iterator[Tape]:
    """Record this thread's kernel calls (they still run) into a Tape."""
    tape, previous = Tape(), getattr(_tapes, "tape", None)
    _tapes.tape = tape
    try:
        yield tape
    finally:
        _tapes.tape = previous


def _not_replayable() -> None:
    """Mark the recording tape impure: this call's work is not all in its kernel calls."""
    tape = getattr(_tapes, "tape", None)
    if tape is not None:
        tape.pure = False


def _call(name: str, args: tuple, keep: tuple = (), counts: np.ndarray | None = None) -> int:
    """Run one kernel, and record it on this thread's tape (``recording``) with what its pointers need."""
    status = getattr(library(), name)(*args)
    tape = getattr(_tapes, "tape", None)
    if tape is not None:
        row = [CALL_KINDS[name], 0 if counts is None else counts.ctypes.data, *(int(a or 0) for a in args)]
        tape.rows.append(row + [0] * (CALL_WIDTH - len(row)))
        tape.keep.extend(keep)
        if counts is not None:
            tape.counts.append(counts)
    return status


def run_calls(rows: np.ndarray) -> None:
    """Replay recorded kernel calls (int64 [n, CALL_WIDTH]) in one C call, without the interpreter between them."""
    status = library().qc_run(rows.ctypes.data, len(rows))
    if status != 0:
        raise RuntimeError(f"native convolution: a replayed kernel call failed ({status})")


@dataclass
class EpilogueArgs:
    """A C epilogue and the arrays it points into (kept alive with it)."""

    struct: Epilogue
    form: object
    int_form: object
    arrays: list

    @classmethod
    def of(cls, form, int_form, out_dtype: np.dtype, correction: np.ndarray) -> EpilogueArgs:
        """The epilogue of a requantize form (``hwsim.channels_last``): float32 forms run as they are (exact,
        or checked with ``int_form`` for the elements near a half), any other in int64 (``int_form``).
        ``correction``: per output channel, subtracted from the int32 sums first. Every per-channel array
        repeats TILE_PIXELS times (the dense kernel requantizes a pixel group's outputs as one run)."""
        rule = RULE_INT
        if form.kind in ("float", "checked") and form.dtype is np.float32:
            rule = RULE_FLOAT32 if form.kind == "float" else RULE_CHECKED32
        if rule != RULE_FLOAT32 and int_form is None:
            raise ValueError("native kernels: this requantize needs its int64 form")
        channels = correction.size

        def tiled(values, dtype) -> np.ndarray:
            return np.ascontiguousarray(np.tile(np.asarray(values)[:channels], TILE_PIXELS), dtype=dtype)

        sums_correction = tiled(correction, np.int32)
        ints = [tiled(getattr(int_form, name) if int_form is not None else np.zeros(channels), np.int64)
                for name in ("bias", "multiplier", "shift", "up")]  # fmt: skip
        floats = form if rule != RULE_INT else None
        scale, float_bias = (tiled(getattr(floats, name) if floats is not None else np.zeros(channels), np.float32)
                             for name in ("scale", "bias"))  # fmt: skip
        # the float rules' bias is an integer (exact in float32): bias - correction, wrapped to int32 like the sums
        integer_bias = float_bias.astype(np.int64) if floats is not None else ints[0]
        offset = ((integer_bias - sums_correction) & 0xFFFFFFFF).astype(np.uint32).view(np.int32)
        arrays = [sums_correction, *ints, scale, float_bias, offset]  # the struct's pointer fields, in order
        limits = (floats or int_form).limits
        error = float(limits[7]) if rule == RULE_CHECKED32 else 0.0
        # the checked vector epilogue clamps each product to +-2**30 before converting it, unless none reaches 2**29
        wide_products = rule == RULE_CHECKED32 and not getattr(form, "products", math.inf) < 2**29
        struct = Epilogue(
            *(a.ctypes.data for a in arrays[:-1]), *(int(value) for value in limits[:7]), rule, error,
            OUT_KINDS[out_dtype], offset.ctypes.data, wide_products, rule == RULE_INT and uniform_int_rule(*ints),
        )  # fmt: skip
        return cls(struct, form, int_form, arrays)


@dataclass
class NativeConv:
    """One convolution layer for the native kernels: packed weights and the input's uint8 mapping."""

    depthwise: bool
    weights: np.ndarray  # dense: int8 [O/16, kh, kw, Cp/4, 16, 4] (AMX: pack_amx); depthwise: int16 [kh * kw, C]
    weight_sums: np.ndarray  # int64 [O]: sum of each output's weights (dense: the zero point correction)
    out_channels: int
    channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, left, bottom, right
    offset: int  # stored activation + offset = the uint8 the kernels read
    zero_point: int  # the uint8 that means 0
    variant: int = AVX512
    pad_pixels: int | None = None  # the vector depthwise kernel reads inputs up to this size padded (None: the rule)
    # made once here, never replaced: worker threads share the layer and C reads these arrays unlocked
    zero_row: np.ndarray = field(init=False)  # C bytes at the zero point: what a depthwise tap outside reads
    lane_weights: np.ndarray = field(init=False)  # depthwise: int32 lanes holding (uint16) w, for vpdpwssd
    _epilogues: dict = field(default_factory=dict)  # (id(form), id(int_form), out type) -> EpilogueArgs
    _work: threading.local = field(default_factory=threading.local)  # per thread: the padded input
    _addresses: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.zero_row = np.full(self.channels, self.zero_point, dtype=np.uint8)
        if self.pad_pixels is None:  # measured (docs/hwsim.md#performance): a padded copy pays for itself where
            # border pixels, which the vector kernel runs one at a time, are many (small images) or where
            # the outputs are as many as the inputs (stride 1); a strided layer's copy costs more than it saves
            self.pad_pixels = 2**62 if self.stride == (1, 1) else DEPTHWISE_PAD_PIXELS
        self.lane_weights = self.weights.astype(np.int32) & 0xFFFF if self.depthwise else self.zero_row[:0]
        # the constant arrays' addresses, taken once (ndarray.ctypes.data costs ~1 us a call)
        self._addresses = {name: getattr(self, name).ctypes.data for name in ("weights", "zero_row", "lane_weights")}

    @property
    def pointwise(self) -> bool:
        """A dense 1x1 convolution with stride 1 and no padding: a GEMM over the batch's pixels."""
        return not self.depthwise and self.kernel == (1, 1) and self.stride == (1, 1) and not any(self.padding)

    @property
    def padded_channels(self) -> int:
        return self.channels if self.depthwise else round_up(self.channels, LANE)

    def reads_every_tap(self, float_rule: bool) -> bool:
        """True when the kernel sums every tap of every window (dense layers, and the vector depthwise one,
        whose taps outside the input read zero points), so the epilogue subtracts zero point * sum(w); the
        portable depthwise kernel, which any rule reaches, skips those taps and sums centred values."""
        return not self.depthwise or (self.variant == AVX512 and float_rule)

    def output_hw(self, height: int, width: int) -> tuple[int, int]:
        top, left, bottom, right = self.padding
        return (
            output_size(height, self.kernel[0], self.stride[0], top, bottom, self.dilation[0]),
            output_size(width, self.kernel[1], self.stride[1], left, right, self.dilation[1]),
        )

    def epilogue(self, form, int_form, out_dtype: np.dtype) -> Epilogue:
        """The C epilogue of a requantize form for this layer, made once per form and output type. The
        entry keeps the forms alive (so their ids stay unique) and is never replaced: a worker thread's
        kernel may be reading its arrays while another thread asks for it."""
        key = (id(form), id(int_form), out_dtype.str)
        cached = self._epilogues.get(key)
        if cached is None:
            every_tap = self.reads_every_tap(native_fits(form, int_form))
            correction = self.zero_point * self.weight_sums if every_tap else np.zeros(self.out_channels, np.int64)
            made = EpilogueArgs.of(form, int_form, out_dtype, correction)
            cached = self._epilogues.setdefault(key, made)  # atomic: the first thread's entry wins
        return cached.struct

    @property
    def four_taps(self) -> bool:
        """A depthwise 3 x 3 layer with dilation 1 and stride 1 along x: the vector kernel sums four taps per
        vpdpbusd, rearranging each input row itself (``qc_depthwise_quad512``)."""
        return self.depthwise and self.kernel == (3, 3) and self.dilation == (1, 1) and self.stride[1] == 1

    def _stored_as_is(self, x: np.ndarray) -> bool:
        """True when the kernels can read ``x`` where it is: channels-last uint8 that needs no offset."""
        return x.dtype == np.uint8 and self.offset == 0 and x.transpose(0, 2, 3, 1).flags.c_contiguous

    def _input(self, x: np.ndarray, padded: bool) -> tuple[np.ndarray, int, int, int]:
        """The uint8 channels-last input the kernel reads (``padded``: borders at the zero point, channels
        to a multiple of 4 for dense layers), its (height, width) as stored, and 1 when it is the int8
        input itself, which the dense VNNI and portable kernels read as uint8 v + 128 (``flip``)."""
        channels_last = x.transpose(0, 2, 3, 1)
        batch, height, width, channels = channels_last.shape
        # the input as it is, where the kernel needs no padding (AMX always reads a padded copy)
        as_is = not padded or (self.variant != AMX and not any(self.padding) and self.padded_channels == channels)
        if as_is and self._stored_as_is(x):
            return channels_last, height, width, 0
        int8_in_place = x.dtype == np.int8 and self.offset == 128 and not self.depthwise  # no flip in depthwise
        if as_is and int8_in_place and channels_last.flags.c_contiguous:
            return channels_last.view(np.uint8), height, width, 1
        if not padded:
            shape = (batch, height, width, channels)
            converted = self._scratch("converted", shape)
            np.add(channels_last, np.int32(self.offset), out=converted, casting="unsafe")
            _not_replayable()
            return converted, height, width, 0
        top, left, bottom, right = self.padding
        padded_channels = self.padded_channels
        amx = self.variant == AMX
        shape = (batch, height + top + bottom, width + left + right, padded_channels)
        padded = self._scratch("padded", shape, self.amx_slack if amx else 0)
        kind = SOURCE_KINDS.get(x.dtype)
        if kind is None:
            inner = padded[:, top : top + height, left : left + width, :channels]
            np.add(channels_last, np.int32(self.offset), out=inner, casting="unsafe")
            _not_replayable()
        else:  # in C: numpy's strided uint8 copy ran at ~4 GB/s
            strides = np.array(channels_last.strides, dtype=np.int64) // x.itemsize
            _call("qc_pad_copy", (
                channels_last.ctypes.data, kind, batch, height, width, channels, strides.ctypes.data, self.offset,
                padded.ctypes.data, *shape[1:], top, left,
            ), keep=(channels_last, strides, padded))  # fmt: skip
        return padded, shape[1], shape[2], 0

    def _sums(self, size: int) -> int:
        """The address of a per-thread int32 work array of at least ``size`` elements (the kernels' sums
        before requantizing)."""
        sums = self._work.__dict__.get("sums")
        if sums is None or sums.size < size:
            sums = self._work.sums = np.empty(size, dtype=np.int32)
            self._work.sums_at = sums.ctypes.data
        return self._work.sums_at

    def _scratch(self, role: str, shape: tuple[int, ...], slack: int = 0) -> np.ndarray:
        """A per-thread uint8 buffer filled with the zero point once (its borders never change), with
        ``slack`` more bytes past its end (AMX tiles read past the last pixel)."""
        buffers = self._work.__dict__.setdefault("buffers", {})
        array = buffers.get(role)
        if array is None or array.shape != shape:
            flat = np.full(int(np.prod(shape)) + slack, self.zero_point, dtype=np.uint8)
            array = buffers[role] = flat[: flat.size - slack].reshape(shape)
        return array

    @property
    def amx_slack(self) -> int:
        """Bytes qc_dense_amx may read past the padded input: 64 per K chunk and 16 pixel steps."""
        chunks = -(-self.kernel[1] * self.padded_channels // 64)
        return 64 * chunks + 16 * self.stride[1] * self.padded_channels

    def requantize_into(
        self, x: np.ndarray, form, int_form, out: np.ndarray, residual: ResidualAdd | None = None
    ) -> tuple[int, ...]:
        """x: logical [N, C, H, W] integers; out: [N, OH, OW, O] (C order) of the output type. Writes the
        convolution requantized by ``form`` (``int_form``: its int64 form) into ``out``, or with ``residual``
        the requantized residual add that this result feeds. Returns (saturations, overflows), with a
        residual also the add's (saturations, overflows)."""
        epilogue = self.epilogue(form, int_form, out.dtype if residual is None else np.dtype(np.int32))
        if self.variant == AMX and epilogue.rule == RULE_INT:
            raise ValueError("native convolution: the AMX kernel needs a float32 requantize form")
        fast_depthwise = self.depthwise and self.reads_every_tap(epilogue.rule != RULE_INT)
        # border pixels run one by one in the vector kernel: read the input padded where that pays (pad_pixels)
        padded = not self.depthwise or (fast_depthwise and x.shape[2] * x.shape[3] <= self.pad_pixels)
        if padded and fast_depthwise and self.four_taps and self._stored_as_is(x):
            padded = False  # its kernel rearranges each input row itself, borders included: no padded copy
        source, height, width, flip = self._input(x, padded=padded)
        geometry, out_shape = self._geometry(x.shape, height, width, flip, padded)
        if out.shape != out_shape or not out.flags.c_contiguous:
            raise ValueError(f"native convolution: output {out.shape} does not match the layer")
        work = self._work.__dict__
        counts = work.get("counts")
        if counts is None:
            counts = self._work.counts = cache_line_array(4)
            self._work.counts_at = counts.ctypes.data
        counts[:] = 0
        counts_at, addresses = work["counts_at"], self._addresses
        address = ctypes.addressof
        bound = None if residual is None else residual.bind(out)
        extra = None if bound is None else address(bound)
        common = (geometry, epilogue, bound, residual, source, out)  # what the pointers below point into
        if fast_depthwise:
            sums = self._sums(library().qc_depthwise_fast_work(address(geometry)))  # a row's sums, and scratch
            status = _call("qc_depthwise_fast", (
                self.variant, source.ctypes.data, addresses["zero_row"], addresses["lane_weights"],
                address(geometry), address(epilogue), extra, out.ctypes.data, counts_at, sums,
            ), (*common, self._work.sums), counts)  # fmt: skip
        elif self.depthwise and residual is None:
            status = _call("qc_depthwise", (  # the portable loops: taps outside the input skipped, any rule
                PORTABLE, source.ctypes.data, self.zero_point, addresses["weights"], address(geometry),
                address(epilogue), out.ctypes.data, counts_at,
            ), common, counts)  # fmt: skip
        elif not self.depthwise:
            # int32 sums of a pixel group, then its flipped bytes
            scratch = self._sums(TILE_PIXELS * (self.out_channels + round_up(self.padded_channels, LANE) // LANE))
            status = _call("qc_dense", (
                self.variant, source.ctypes.data, addresses["weights"], address(geometry), address(epilogue),
                extra, out.ctypes.data, counts_at, scratch,
            ), (*common, self._work.sums), counts)  # fmt: skip
        else:
            status = -2
        if status != 0:
            raise RuntimeError(f"native convolution: variant {self.variant} cannot run this layer here ({status})")
        return tuple(counts.tolist()[: 2 if residual is None else 4])

    def _geometry(
        self, shape: tuple[int, ...], height: int, width: int, flip: int, padded: bool
    ) -> tuple[Geometry, tuple[int, ...]]:
        """The kernels' geometry for an input of logical ``shape`` stored (height, width), read as int8
        when ``flip``, ``padded`` or not, and the output shape; made once per shape and thread (a run of
        the engine asks for it once per layer)."""
        cache = self._work.__dict__.setdefault("geometries", {})
        key = (shape, height, width, flip, padded)
        made = cache.get(key)
        if made is None:
            batch = shape[0]
            out_h, out_w = self.output_hw(shape[2], shape[3])
            top, left, _, _ = (0, 0, 0, 0) if padded else self.padding
            geometry = Geometry(
                batch, height, width, self.padded_channels, self.out_channels, *self.kernel, *self.stride,
                *self.dilation, out_h, out_w, top, left, flip,
            )  # fmt: skip
            if self.pointwise:  # every pixel of the batch in one row: full register tiles
                geometry.n, geometry.hp, geometry.oh = 1, 1, 1
                geometry.wp = geometry.ow = batch * height * width
            made = cache[key] = (geometry, (batch, out_h, out_w, self.out_channels))
        return made


@dataclass
class ResidualAdd:
    """The residual add a native convolution's requantized output feeds, with the add's requantize: the
    kernel computes (own - own zero) * own multiplier + (other - other zero) * other multiplier in int32
    and requantizes that, so the convolution's result is never stored. The add's requantize: its float32
    form (which keeps the sum below 2**24), else the IR's integer rule in int64 lanes."""

    args: EpilogueArgs  # the add's requantize
    alignment: tuple[int, int, int, int]  # own zero point, other's, own multiplier, other's
    other: np.ndarray | None = None  # flat channels-last rows of the other operand, set by ``with_other``

    @classmethod
    def of(cls, add_form, add_int_form, out_dtype, channels: int, alignment, bound: int) -> ResidualAdd | None:
        """None unless the add's requantize has a float32 form (``native_fits``), or an int64 form and the
        add's largest |sum| (``bound``) fits int32."""
        if not native_fits(add_form, add_int_form):
            if add_int_form is None or bound >= 2**31:
                return None
            add_form = add_int_form  # the kernels' int64 rule
        args = EpilogueArgs.of(add_form, add_int_form, np.dtype(out_dtype), np.zeros(channels, np.int64))
        return cls(args, tuple(int(value) for value in alignment))

    def with_other(self, other: np.ndarray) -> ResidualAdd:
        """This add for one call: ``other`` converted to a type the kernels read if it is not one."""
        if other.dtype not in OUT_KINDS or not other.flags.c_contiguous:
            other = np.ascontiguousarray(other, dtype=np.int32)
            _not_replayable()
        return replace(self, other=other)

    def bind(self, out: np.ndarray) -> Residual:
        """The C struct for one call (the caller keeps this object, and so ``other``, alive through it)."""
        if self.other is None or self.other.size != out.size:
            raise ValueError("native residual: the other operand does not match the output")
        return Residual(
            ctypes.addressof(self.args.struct), self.other.ctypes.data, OUT_KINDS[self.other.dtype], *self.alignment
        )


def uniform_int_rule(bias: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, up: np.ndarray) -> bool:
    """True when the int64 rule has one multiplier (|m| < 2**31) and shift (>= 32) for every channel and no
    bias: the vector epilogue then multiplies 32 x 32 -> 64 bits and shifts by one count (a residual add's
    requantize, which is per tensor)."""
    return bool(
        not bias.any() and np.ptp(multiplier) == 0 and np.ptp(shift) == 0 and np.ptp(up) == 0
        and abs(int(multiplier[0])) < 2**31 and int(shift[0]) >= 32
    )  # fmt: skip


def cache_line_array(size: int) -> np.ndarray:
    """Zeroed int64s alone on their cache lines: the kernels add to their counts as they go, and two worker
    threads' counts in one line would make each add wait for the other core."""
    line = CACHE_LINE // 8
    spare = np.zeros(size + 3 * line, dtype=np.int64)
    start = line + (-spare.ctypes.data // 8) % line
    return spare[start : start + size]


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def pack_amx(weight: np.ndarray) -> np.ndarray:
    """int8 [O, C, kh, kw] -> qc_dense_amx's [kh, nk, ceil(O/16), 16, 16, 4]: for kernel row u, K index t =
    v * Cp + c (Cp: C rounded up to 4) in 64-byte chunks k, t = 64k + 4r + b -> [u, k, block, r, j, b] holds
    w[16 * block + j, c, u, v], 0 past the taps, channels or outputs."""
    out_channels, channels, kernel_h, kernel_w = weight.shape
    padded_channels = round_up(channels, LANE)
    chunks, blocks = -(-kernel_w * padded_channels // 64), -(-out_channels // BLOCK)
    taps = np.zeros((kernel_h, kernel_w, padded_channels, blocks * BLOCK), dtype=np.int8)
    taps[:, :, :channels, :out_channels] = weight.transpose(2, 3, 1, 0)
    span = np.zeros((kernel_h, chunks * 64, blocks * BLOCK), dtype=np.int8)
    span[:, : kernel_w * padded_channels] = taps.reshape(kernel_h, kernel_w * padded_channels, blocks * BLOCK)
    return np.ascontiguousarray(span.reshape(kernel_h, chunks, 16, 4, blocks, BLOCK).transpose(0, 1, 4, 2, 5, 3))


def pack_dense(weight: np.ndarray) -> np.ndarray:
    """int8 [O, C, kh, kw] -> [ceil(O/16), kh, kw, ceil(C/4), 16, 4], zeros where O or C run out."""
    out_channels, channels, kernel_h, kernel_w = weight.shape
    blocks, groups = -(-out_channels // BLOCK), -(-channels // LANE)
    padded = np.zeros((blocks * BLOCK, groups * LANE, kernel_h, kernel_w), dtype=np.int8)
    padded[:out_channels, :channels] = weight
    blocked = padded.reshape(blocks, BLOCK, groups, LANE, kernel_h, kernel_w)
    return np.ascontiguousarray(blocked.transpose(0, 4, 5, 2, 1, 3))


def native_fits(form, int_form) -> bool:
    """True when the fast kernels run this requantize: a float32 form (checked ones with their int64 form)."""
    return form.dtype is np.float32 and (form.kind == "float" or (form.kind == "checked" and int_form is not None))


def plan_fast_conv(conv: Int8Conv) -> NativeConv | None:
    """The engine's choice: every 1x1, depthwise and dense layer on the AVX-512 VNNI kernels (in the engine
    each runs 1.0-1.5x faster than oneDNN + its requantize pass, and their calls replay without Python:
    docs/hwsim.md#performance), except on a CPU with AMX, where oneDNN runs the dense layers on AMX tiles:
    there only the small ones (a first layer, at most SMALL_K products per output) run on VNNI. (The AMX
    kernel, ``AMX``, 1.1-1.5x faster than oneDNN + requantize alone, measured no faster inside the engine,
    where each layer first copies its input into a padded buffer.)"""
    native = plan_native_conv(conv, AVX512, FAST_KINDS if variants() & AMX else KINDS)
    if native is None and conv.weight is not None:
        _, per_group, kernel_h, kernel_w = conv.weight.shape
        if conv.groups == 1 and kernel_h * kernel_w * round_up(per_group, LANE) <= SMALL_K:
            native = plan_native_conv(conv, AVX512, ("dense",))
    return native


def plan_native_conv(conv: Int8Conv, variant: int = AVX512, kinds: tuple[str, ...] = FAST_KINDS) -> NativeConv | None:
    """The native form of a layer oneDNN's plan accepted (same exactness proof: |sums| < 2**24 here,
    255 * sum|w| < 2**31 for the uint8 sums), or None: no library, or grouped but not depthwise."""
    if not variants() & variant or conv.weight is None or (variant == AMX and conv.dilation[1] != 1):
        return None
    weight = conv.weight.numpy().astype(np.int8)
    out_channels, per_group, kernel_h, kernel_w = weight.shape
    groups = conv.groups
    depthwise = groups > 1 and per_group == 1 and out_channels == groups
    if groups > 1 and not depthwise:
        return None
    if any(conv.explicit_padding):
        padding = tuple(conv.explicit_padding)
    else:
        padding = (conv.padding[0], conv.padding[1], conv.padding[0], conv.padding[1])
    pointwise = (kernel_h, kernel_w) == (1, 1) and tuple(conv.stride) == (1, 1) and not any(padding)
    kind = "depthwise" if depthwise else ("pointwise" if pointwise else "dense")
    if kind not in kinds:
        return None
    channels = groups if depthwise else per_group
    if depthwise and variant != PORTABLE and kernel_h * kernel_w > DEPTHWISE_TAPS:
        return None  # e.g. a global average pool lowered to a depthwise convolution
    if depthwise:
        packed = np.ascontiguousarray(weight.reshape(out_channels, kernel_h * kernel_w).T, dtype=np.int16)
        variant = AVX512 if variant == AMX else variant  # depthwise layers have no AMX form
    elif variant == AMX:
        packed = pack_amx(weight)
    else:
        packed = pack_dense(weight)
    sums = weight.reshape(out_channels, -1).astype(np.int64).sum(axis=1)
    return NativeConv(
        depthwise, packed, sums, out_channels, channels, (kernel_h, kernel_w), tuple(conv.stride),
        tuple(conv.dilation), padding, conv.offset, conv.zero_point, variant,
    )  # fmt: skip
