"""Shared hypothesis generators for integer IR tests, and independent oracles.

Nothing here calls into ``qexport.formats`` or ``qexport.reference``: the oracles
re-derive every integer product from the fields of a weight, as the format module
docstrings describe them, so the tests compare two independent readings.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from functools import cache, lru_cache
from itertools import product

import numpy as np
from hypothesis import strategies as st

from qexport.ir.dtypes import IntType
from qexport.ir.graph import Graph, Node, QuantInfo, TensorInfo, Weight
from qexport.ir.ops import Op

FORMAT_NAMES = ("int_affine", "pot", "post", "apot", "codebook")
SIGN_FORMATS = ("pot", "post", "apot")
ARRAY_DTYPES = (np.int8, np.int16, np.int32, np.int64)
INT32 = IntType(True, 32)

# ---------------------------------------------------------------------------------------------
# scalars, names, integer types


_NAME_BODY = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.", min_size=3, max_size=9)


def names(prefix: str) -> st.SearchStrategy[str]:
    """Distinctive identifiers, so that 'the name appears in the message' is a real check."""
    return _NAME_BODY.map(lambda s: f"{prefix}{s}")


def unique_names(prefix: str, count: int) -> st.SearchStrategy[list[str]]:
    return st.lists(names(prefix), min_size=count, max_size=count, unique=True)


def float32_scales() -> st.SearchStrategy[float]:
    """Positive scales that are exact float32 numbers (as the IR requires)."""
    return st.floats(min_value=2.0**-14, max_value=8.0, allow_nan=False, allow_infinity=False).map(
        lambda v: float(np.float32(v))
    )


def int_types(min_bits: int = 1, max_bits: int = 8, signed: bool | None = None) -> st.SearchStrategy[IntType]:
    signs = [True, False] if signed is None else [signed]
    choices = [IntType(s, b) for s in signs for b in range(min_bits, max_bits + 1) if not (s and b < 2)]
    return st.sampled_from(choices)


@st.composite
def quantized_types(draw, min_bits: int = 1, max_bits: int = 8, signed: bool | None = None):
    """(dtype, zero point inside the dtype)."""
    dtype = draw(int_types(min_bits, max_bits, signed))
    zero_point = draw(st.integers(dtype.min, dtype.max))
    return dtype, zero_point


def int_arrays(draw, shape, low: int, high: int, dtype=None) -> np.ndarray:
    """A random integer array with entries in [low, high] (drawn through hypothesis)."""
    size = int(np.prod(shape)) if len(shape) else 1
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    values = rng.integers(low, high, size=size, endpoint=True, dtype=np.int64)
    # make the extremes likely
    if size and draw(st.booleans()):
        values[draw(st.integers(0, size - 1))] = draw(st.sampled_from([low, high]))
    if dtype is None:
        candidates = [d for d in ARRAY_DTYPES if np.iinfo(d).min <= low and high <= np.iinfo(d).max]
        dtype = draw(st.sampled_from(candidates))
    return values.reshape(shape).astype(dtype)


def scale_attr(draw, channels: int):
    """A scalar scale or one per output channel (python floats, JSON friendly)."""
    if draw(st.booleans()):
        return draw(float32_scales())
    return [draw(float32_scales()) for _ in range(channels)]


def scale_vector(scale, channels: int) -> list[float]:
    return [float(scale)] * channels if not isinstance(scale, list) else [float(s) for s in scale]


# ---------------------------------------------------------------------------------------------
# weights


@st.composite
def weights(
    draw, fmt: str, shape: tuple[int, ...], name: str = "w", small: bool = False, zero_channel: bool | None = None
) -> Weight:
    """A random valid weight of ``fmt``. ``small`` keeps products modest (for whole graphs)."""
    channels = shape[0]
    attrs: dict = {"scale": scale_attr(draw, channels)}
    if fmt == "int_affine":
        dtype = draw(int_types(2 if small else 1, 8 if small else 16))
        if draw(st.booleans()):
            zero_point = draw(st.integers(dtype.min, dtype.max))
        else:
            zero_point = [draw(st.integers(dtype.min, dtype.max)) for _ in range(channels)]
        values = int_arrays(draw, shape, dtype.min, dtype.max)
        attrs.update(dtype=dtype.name, zero_point=zero_point)
        arrays = {"values": values}
    elif fmt in ("pot", "post"):
        cap = (8 if fmt == "pot" else 10) if small else (30 if fmt == "pot" else 40)
        max_exponent = draw(st.integers(0, cap))
        attrs["max_exponent"] = max_exponent
        if fmt == "post":
            least = (max_exponent + 1) // 2
            attrs["lut_frac_bits"] = draw(st.integers(least, least + 2 if small else 24))
        arrays = {
            "sign": int_arrays(draw, shape, -1, 1),
            "exponent": int_arrays(draw, shape, 0, max_exponent),
        }
    elif fmt == "apot":
        max_exponent = draw(st.integers(0, 6 if small else 30))
        n_terms = draw(st.integers(1, 3))
        attrs["max_exponent"] = max_exponent
        arrays = {
            "sign": int_arrays(draw, shape, -1, 1),
            "exponent": int_arrays(draw, (*shape, n_terms), -1, max_exponent),
        }
    elif fmt == "codebook":
        n_levels = draw(st.integers(1, 9))
        bound = 100 if small else 2**20
        levels_shape = (n_levels,) if draw(st.booleans()) else (channels, n_levels)
        arrays = {
            "indices": int_arrays(draw, shape, 0, n_levels - 1),
            "levels": int_arrays(draw, levels_shape, -bound, bound),
        }
    else:  # pragma: no cover - guarded by FORMAT_NAMES
        raise ValueError(fmt)
    if zero_channel is None:
        zero_channel = draw(st.integers(0, 4)) == 0
    if zero_channel:
        make_channel_zero(arrays, attrs, fmt, draw(st.integers(0, channels - 1)))
    return Weight(name, fmt, tuple(shape), arrays, attrs)


def make_channel_zero(arrays: dict, attrs: dict, fmt: str, channel: int) -> None:
    """Turn one output channel into all-zero weights, the way each format spells zero."""
    if fmt in SIGN_FORMATS:
        arrays["sign"][channel] = 0
    elif fmt == "int_affine":
        zero_point = attrs["zero_point"]
        arrays["values"][channel] = zero_point[channel] if isinstance(zero_point, list) else zero_point
    else:
        levels = arrays["levels"].astype(np.int64)
        if levels.ndim == 1:
            levels = np.concatenate([levels, [0]])
            arrays["indices"][channel] = levels.size - 1
        else:
            levels[channel] = 0
        arrays["levels"] = levels


def bias_weight(draw, name: str, channels: int, bound: int = 1 << 16) -> Weight:
    return Weight(
        name,
        "int_affine",
        (channels,),
        {"values": int_arrays(draw, (channels,), -bound, bound)},
        {"dtype": "INT32", "scale": scale_attr(draw, channels), "zero_point": 0},
    )


# ---------------------------------------------------------------------------------------------
# independent oracles for weights


def _channel_value(attr, channel: int):
    return attr[channel] if isinstance(attr, list) else attr


@cache
def _sqrt2_power(n: int) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = 60
        return Decimal(2).sqrt() ** n


@lru_cache(maxsize=1 << 16)
def post_magnitude_product(x: int, exponent: int, frac_bits: int) -> int:
    """Nearest integer to x * sqrt(2)**(2 * frac_bits - exponent), with 50-digit decimals."""
    with localcontext() as ctx:
        ctx.prec = 50
        value = Decimal(x) * _sqrt2_power(2 * frac_bits - exponent)
        return int(value.to_integral_value(rounding=ROUND_HALF_EVEN))


def integer_weight(weight: Weight, index: tuple[int, ...]) -> int:
    """The integer weight of a *linear* format at ``index``, from the docstrings' definitions."""
    arrays, attrs, channel = weight.arrays, weight.attrs, index[0]
    if weight.format == "int_affine":
        return int(arrays["values"][index]) - int(_channel_value(attrs.get("zero_point", 0), channel))
    if weight.format == "pot":
        sign, exponent = int(arrays["sign"][index]), int(arrays["exponent"][index])
        return sign * 2 ** (int(attrs["max_exponent"]) - exponent)
    if weight.format == "apot":
        sign = int(arrays["sign"][index])
        exponents = [int(e) for e in arrays["exponent"][index]]
        return sign * sum(2 ** (int(attrs["max_exponent"]) - e) for e in exponents if e != -1)
    if weight.format == "codebook":
        levels = arrays["levels"]
        row = levels if levels.ndim == 1 else levels[channel]
        return int(row[int(arrays["indices"][index])])
    raise ValueError(f"{weight.format} is not linear")


def weight_product(weight: Weight, index: tuple[int, ...], x: int) -> int:
    """The exact integer MAC result of activation x (zero point removed) and one weight element."""
    if weight.format == "post":
        sign = int(weight.arrays["sign"][index])
        if sign == 0:
            return 0
        exponent = int(weight.arrays["exponent"][index])
        return sign * post_magnitude_product(x, exponent, int(weight.attrs["lut_frac_bits"]))
    return x * integer_weight(weight, index)


def real_weight(weight: Weight, index: tuple[int, ...]) -> float:
    """The real value of one weight element, from the docstrings' definitions."""
    arrays, attrs, channel = weight.arrays, weight.attrs, index[0]
    scale = float(_channel_value(attrs["scale"], channel))
    if weight.format == "int_affine":
        return scale * integer_weight(weight, index)
    if weight.format == "codebook":
        return scale * integer_weight(weight, index)
    sign = int(arrays["sign"][index])
    if weight.format == "pot":
        return sign * scale * 2.0 ** -int(arrays["exponent"][index])
    if weight.format == "apot":
        return sign * scale * sum(2.0 ** -int(e) for e in arrays["exponent"][index] if e != -1)
    if weight.format == "post":
        return sign * scale * float(_sqrt2_power(-int(arrays["exponent"][index])))
    raise ValueError(weight.format)


def indices(shape: tuple[int, ...]):
    return product(*(range(n) for n in shape))


# ---------------------------------------------------------------------------------------------
# graphs


def tensor(name: str, dtype: IntType, shape: tuple[int, ...], zero_point: int = 0, scale=1.0) -> TensorInfo:
    return TensorInfo(name, dtype, tuple(shape), QuantInfo(scale, zero_point))


def single_node_graph(
    op: Op,
    inputs: list[TensorInfo],
    output: TensorInfo,
    attrs: dict,
    weights_: dict[str, Weight] | None = None,
    graph_inputs: list[str] | None = None,
) -> Graph:
    tensors = {info.name: info for info in [*inputs, output]}
    names_in = graph_inputs if graph_inputs is not None else list(dict.fromkeys(i.name for i in inputs))
    node = Node(op, f"{op.value}_node", [i.name for i in inputs], [output.name], attrs)
    return Graph(f"{op.value}_graph", names_in, [output.name], tensors, [node], dict(weights_ or {}))


def random_feed(draw, info: TensorInfo, batch: int) -> np.ndarray:
    shape = (batch, *info.shape[1:])
    return int_arrays(draw, shape, info.dtype.min, info.dtype.max, dtype=np.int64)


@st.composite
def requant_params(draw, channels: int):
    """Per-tensor or per-channel (multiplier, shift) like the frontend produces."""
    count = 1 if draw(st.booleans()) else channels
    multipliers, shifts = [], []
    for _ in range(count):
        if draw(st.booleans()):
            multipliers.append(1)
            shifts.append(draw(st.integers(-2, 12)))
        else:
            multipliers.append(draw(st.integers(1 << 30, (1 << 31) - 1)))
            shifts.append(draw(st.integers(31, 48)))
    return multipliers, shifts


@st.composite
def chain_graphs(draw, conv_format: str | None = None, linear_format: str | None = None) -> Graph:
    """A small random network: conv -> requantize -> relu [-> add -> requantize] [-> pool]
    [-> concat] -> flatten -> linear -> requantize, with random names and types."""
    tn = iter(draw(unique_names("t_", 14)))
    nn = iter(draw(unique_names("n_", 12)))
    wn = iter(draw(unique_names("w_", 4)))
    conv_format = conv_format or draw(st.sampled_from(FORMAT_NAMES))
    linear_format = linear_format or draw(st.sampled_from(FORMAT_NAMES))
    c_in, c_out = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    h, w = draw(st.integers(3, 6)), draw(st.integers(3, 6))
    k = draw(st.integers(1, 3))
    x_dtype, x_zp = draw(quantized_types(2, 8))
    act_dtype, act_zp = draw(quantized_types(4, 8))
    graph = Graph(draw(names("g_")), [], [], {}, [], {}, {})
    if draw(st.booleans()):
        graph.metadata = {"source": draw(names("m_")), "epochs": draw(st.integers(0, 100))}

    def add(op: Op, inputs: list[str], dtype: IntType, shape, quant: QuantInfo | None, **attrs) -> str:
        out = next(tn)
        graph.tensors[out] = TensorInfo(out, dtype, tuple(shape), quant)
        graph.nodes.append(Node(op, next(nn), list(inputs), [out], attrs))
        return out

    x = next(tn)
    graph.tensors[x] = TensorInfo(x, x_dtype, (-1, c_in, h, w), QuantInfo(draw(float32_scales()), x_zp))
    graph.inputs.append(x)
    conv_w = next(wn)
    graph.weights[conv_w] = draw(weights(conv_format, (c_out, c_in, k, k), conv_w, small=True))
    bias = None
    if draw(st.booleans()):
        bias = next(wn)
        graph.weights[bias] = bias_weight(draw, bias, c_out)
    pad = draw(st.lists(st.integers(0, k - 1), min_size=4, max_size=4))
    oh, ow = h + pad[0] + pad[2] - k + 1, w + pad[1] + pad[3] - k + 1
    acc = add(
        Op.CONV2D,
        [x],
        INT32,
        (-1, c_out, oh, ow),
        QuantInfo([1.0] * c_out, 0),
        weight=conv_w,
        bias=bias,
        stride=[1, 1],
        padding=pad,
        dilation=[1, 1],
        groups=1,
    )
    mult, shift = draw(requant_params(c_out))
    act_quant = QuantInfo(draw(float32_scales()), act_zp)
    q = add(
        Op.REQUANTIZE,
        [acc],
        act_dtype,
        (-1, c_out, oh, ow),
        act_quant,
        multiplier=mult,
        shift=shift,
        clip_min=act_dtype.min,
        clip_max=act_dtype.max,
    )
    q = add(Op.RELU, [q], act_dtype, (-1, c_out, oh, ow), act_quant)
    if draw(st.booleans()):
        summed = add(
            Op.ADD,
            [q, q],
            INT32,
            (-1, c_out, oh, ow),
            QuantInfo(1.0, 0),
            lhs_multiplier=draw(st.integers(1, 4)),
            rhs_multiplier=draw(st.integers(1, 4)),
        )
        mult, shift = draw(requant_params(c_out))
        q = add(
            Op.REQUANTIZE,
            [summed],
            act_dtype,
            (-1, c_out, oh, ow),
            act_quant,
            multiplier=mult,
            shift=shift,
            clip_min=draw(st.integers(act_dtype.min, act_zp)),
            clip_max=act_dtype.max,
        )
    pool = draw(st.sampled_from(["none", "maxpool", "avgpool", "global_avgpool"]))
    if pool in ("maxpool", "avgpool"):
        pk = draw(st.integers(1, min(2, oh, ow)))
        extra = {"count_include_pad": draw(st.booleans())} if pool == "avgpool" else {}
        ph, pw = draw(st.integers(0, pk - 1)), draw(st.integers(0, pk - 1))
        oh, ow = (oh + 2 * ph - pk) // pk + 1, (ow + 2 * pw - pk) // pk + 1
        q = add(
            Op(pool),
            [q],
            act_dtype,
            (-1, c_out, oh, ow),
            act_quant,
            kernel=[pk, pk],
            stride=[pk, pk],
            padding=[ph, pw, ph, pw],
            **extra,
        )
    elif pool == "global_avgpool":
        oh = ow = 1
        q = add(Op.GLOBAL_AVGPOOL, [q], act_dtype, (-1, c_out, 1, 1), act_quant)
    channels = c_out
    if draw(st.booleans()):
        channels = 2 * c_out
        q = add(Op.CONCAT, [q, q], act_dtype, (-1, channels, oh, ow), act_quant, axis=1)
    features = channels * oh * ow
    q = add(Op.FLATTEN, [q], act_dtype, (-1, features), act_quant)
    n_out = draw(st.integers(1, 4))
    fc_w = next(wn)
    graph.weights[fc_w] = draw(weights(linear_format, (n_out, features), fc_w, small=True))
    fc_b = None
    if draw(st.booleans()):
        fc_b = next(wn)
        graph.weights[fc_b] = bias_weight(draw, fc_b, n_out)
    acc = add(Op.LINEAR, [q], INT32, (-1, n_out), QuantInfo(1.0, 0), weight=fc_w, bias=fc_b)
    out_dtype, out_zp = draw(quantized_types(4, 8))
    mult, shift = draw(requant_params(n_out))
    y = add(
        Op.REQUANTIZE,
        [acc],
        out_dtype,
        (-1, n_out),
        QuantInfo(draw(float32_scales()), out_zp),
        multiplier=mult,
        shift=shift,
        clip_min=out_dtype.min,
        clip_max=out_dtype.max,
    )
    graph.outputs.append(y)
    return graph


# ---------------------------------------------------------------------------------------------
# random CNN graphs for the differential tests (every convolution geometry class)

GROUPINGS = ("dense", "grouped", "depthwise")
PADDINGS = ("within_kernel", "past_kernel", "asymmetric")


def _out_size(size: int, kernel: int, stride: int, before: int, after: int, dilation: int) -> int:
    return (size + before + after - dilation * (kernel - 1) - 1) // stride + 1


@st.composite
def conv_geometry(draw, channels: int, height: int, width: int) -> dict:
    """Convolution attributes for an input [*, channels, height, width], each geometry class drawn on its
    own: grouping (dense, grouped, depthwise with 1-2 outputs per channel), padding (within the kernel,
    past it: windows wholly in padding, asymmetric), dilation 1-3, stride 1 or past the kernel.
    Returns kernel, stride, padding (top, left, bottom, right), dilation, groups, out_channels, out."""
    kernel = draw(st.integers(1, 3))
    dilation = draw(st.sampled_from([1, 1, 2, 3]))
    stride = draw(st.sampled_from([1, 1, 2, kernel + 1, kernel + 2]))
    grouping = draw(st.sampled_from(GROUPINGS))
    if grouping == "dense":
        groups, out_channels = 1, draw(st.integers(1, 4))
    else:
        divisors = [g for g in range(1, channels + 1) if channels % g == 0]
        groups = channels if grouping == "depthwise" else draw(st.sampled_from(divisors))
        out_channels = groups * draw(st.integers(1, 2 if grouping == "depthwise" else 3))
    extent = (kernel - 1) * dilation + 1
    padding_class = draw(st.sampled_from(PADDINGS))
    if padding_class == "asymmetric":
        padding = draw(st.lists(st.integers(0, extent + 1), min_size=4, max_size=4))
    else:
        low, high = (extent, extent + 2) if padding_class == "past_kernel" else (0, extent - 1)
        padding = [draw(st.integers(low, high))] * 4
    oh = _out_size(height, kernel, stride, padding[0], padding[2], dilation)
    ow = _out_size(width, kernel, stride, padding[1], padding[3], dilation)
    if oh < 1 or ow < 1:  # too small for this window: fall back to a plain 1x1
        kernel, stride, dilation, padding, oh, ow = 1, 1, 1, [0, 0, 0, 0], height, width
    return dict(
        kernel=kernel,
        stride=[stride, stride],
        padding=list(padding),
        dilation=[dilation, dilation],
        groups=groups,
        out_channels=out_channels,
        out=(oh, ow),
    )


@st.composite
def cnn_graphs(draw, formats: tuple[str, ...] = FORMAT_NAMES, pow2: bool | None = None) -> Graph:
    """A random small CNN: 1-3 blocks of conv (any geometry class and weight format) -> requantize
    [-> relu] [-> residual conv -> requantize -> add -> requantize] [-> pool], then global average pool
    or flatten, linear, requantize. Activations are signed or unsigned with any zero point; ``pow2``
    (drawn when None) makes every requantization a pure shift (power-of-two scales)."""
    counter = iter(range(1000))
    pow2 = draw(st.booleans()) if pow2 is None else pow2
    graph = Graph("cnn", [], [], {}, [], {}, {})

    def add(op: Op, inputs: list[str], dtype: IntType, shape, quant: QuantInfo | None, **attrs) -> str:
        out = f"t{next(counter)}"
        graph.tensors[out] = TensorInfo(out, dtype, tuple(shape), quant)
        graph.nodes.append(Node(op, f"n{next(counter)}", list(inputs), [out], attrs))
        return out

    def requantize(acc: str, channels: int, shape, dtype: IntType, quant: QuantInfo) -> str:
        if pow2:
            mult, shift = [1], [draw(st.integers(0, 10))]
        else:
            mult, shift = draw(requant_params(channels))
        return add(
            Op.REQUANTIZE,
            [acc],
            dtype,
            shape,
            quant,
            multiplier=mult,
            shift=shift,
            clip_min=dtype.min,
            clip_max=dtype.max,
        )

    def conv(x: str, channels: int, h: int, w: int, geometry: dict) -> tuple[str, int, int, int]:
        c_out, (oh, ow) = geometry["out_channels"], geometry["out"]
        k, groups = geometry["kernel"], geometry["groups"]
        name = f"w{next(counter)}"
        graph.weights[name] = draw(
            weights(draw(st.sampled_from(formats)), (c_out, channels // groups, k, k), name, True)
        )
        bias = None
        if draw(st.booleans()):
            bias = f"b{next(counter)}"
            graph.weights[bias] = bias_weight(draw, bias, c_out)
        attrs = {key: geometry[key] for key in ("stride", "padding", "dilation", "groups")}
        acc = add(
            Op.CONV2D, [x], INT32, (-1, c_out, oh, ow), QuantInfo([1.0] * c_out, 0), weight=name, bias=bias, **attrs
        )
        return acc, c_out, oh, ow

    channels, h, w = draw(st.integers(1, 4)), draw(st.integers(2, 8)), draw(st.integers(2, 8))
    x_dtype, x_zp = draw(quantized_types(2, 8))
    x = "input"
    graph.tensors[x] = TensorInfo(x, x_dtype, (-1, channels, h, w), QuantInfo(draw(float32_scales()), x_zp))
    graph.inputs.append(x)
    for _ in range(draw(st.integers(1, 3))):
        acc, channels, h, w = conv(x, channels, h, w, draw(conv_geometry(channels, h, w)))
        dtype, zp = draw(quantized_types(2, 8))
        quant = QuantInfo(draw(float32_scales()), zp)
        x = requantize(acc, channels, (-1, channels, h, w), dtype, quant)
        if draw(st.booleans()):
            x = add(Op.RELU, [x], dtype, (-1, channels, h, w), quant)
        if draw(st.booleans()):  # residual: a shape-preserving convolution added to its input
            k = draw(st.sampled_from([1, 3]))
            same = dict(kernel=k, stride=[1, 1], padding=[k // 2] * 4, dilation=[1, 1], groups=1)
            if draw(st.booleans()):
                same["groups"] = channels
            same.update(out_channels=channels, out=(h, w))
            racc, _, _, _ = conv(x, channels, h, w, same)
            branch = requantize(racc, channels, (-1, channels, h, w), dtype, quant)
            summed = add(
                Op.ADD,
                [x, branch],
                INT32,
                (-1, channels, h, w),
                QuantInfo(1.0, 0),
                lhs_multiplier=draw(st.integers(1, 4)),
                rhs_multiplier=draw(st.integers(1, 4)),
            )
            x = requantize(summed, channels, (-1, channels, h, w), dtype, quant)
        pool = draw(st.sampled_from(["none", "none", "maxpool", "avgpool"]))
        if pool != "none" and min(h, w) >= 2:
            pk = 2
            pad = draw(st.integers(0, 1))
            h, w = (h + 2 * pad - pk) // pk + 1, (w + 2 * pad - pk) // pk + 1
            extra = {"count_include_pad": draw(st.booleans())} if pool == "avgpool" else {}
            x = add(
                Op(pool),
                [x],
                dtype,
                (-1, channels, h, w),
                quant,
                kernel=[pk] * 2,
                stride=[pk] * 2,
                padding=[pad] * 4,
                **extra,
            )
    if draw(st.booleans()):
        x = add(Op.GLOBAL_AVGPOOL, [x], dtype, (-1, channels, 1, 1), quant)
        h = w = 1
    features = channels * h * w
    x = add(Op.FLATTEN, [x], dtype, (-1, features), quant)
    n_out = draw(st.integers(1, 4))
    name = f"w{next(counter)}"
    graph.weights[name] = draw(weights(draw(st.sampled_from(formats)), (n_out, features), name, True))
    acc = add(Op.LINEAR, [x], INT32, (-1, n_out), QuantInfo(1.0, 0), weight=name, bias=None)
    out_dtype, out_zp = draw(quantized_types(4, 8))
    graph.outputs.append(requantize(acc, n_out, (-1, n_out), out_dtype, QuantInfo(draw(float32_scales()), out_zp)))
    return graph


def add_operands(lhs_type, rhs_type, multipliers, shape, rng: np.random.Generator):
    """Random operands of an add of two (IntType, zero point) pairs, and the largest |aligned sum|
    (lhs - zero) * multipliers[0] + (rhs - zero) * multipliers[1] their types allow."""
    (lhs_dtype, _), (rhs_dtype, _) = lhs_type, rhs_type
    lhs = rng.integers(lhs_dtype.min, lhs_dtype.max, size=shape, endpoint=True)
    rhs = rng.integers(rhs_dtype.min, rhs_dtype.max, size=shape, endpoint=True)
    bound = sum(
        max(abs(t.min - z), abs(t.max - z)) * abs(m)
        for (t, z), m in zip((lhs_type, rhs_type), multipliers, strict=True)
    )
    return lhs, rhs, bound
