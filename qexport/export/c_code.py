"""C99 board code from the IR: packed weight headers, layer descriptors, a static arena, the runtime.

``write_c(graph, out_dir)`` writes ``out_dir/c/``: ``qx_runtime.{h,c}`` and ``main.c`` (plain files of
the package), and from Jinja2 templates ``qx_config.h``, ``model.h``, ``model_data.h``, ``model.c`` and a
``Makefile``. The generated code runs one sample per ``qxm_run`` call; tensors live in one static byte
arena, each in the smallest container of its type (c_arena: lifetime-based first-fit, no heap), and
conv2d / linear layers that qualify run as int8 dot products over an im2col scratch (c_dot).
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import jinja2
import numpy as np

from qexport import __version__
from qexport.export.c_arena import Arena, containers, plan_arena
from qexport.export.c_dot import DISABLED, blocked_layout, channels_last, plan_dot
from qexport.export.c_pack import CExportError, bias_values, pack_weight, partial_sum_bound
from qexport.formats import get_format
from qexport.ir.graph import Graph, Node, TensorInfo
from qexport.ir.ops import OP_SIGNATURES, Op, dynamic_operands

PLAIN_FILES = ("qx_runtime.h", "qx_runtime.c", "main.c")
TEMPLATES = {
    "qx_config.h": "qx_config.h.j2",
    "model.h": "model.h.j2",
    "model_data.h": "model_data.h.j2",
    "model.c": "model.c.j2",
    "Makefile": "Makefile.j2",
}
DYNAMIC_MODE = {None: 0, "mul": 1, "div": 2, "muldiv": 3}
# attributes the board code implements beyond each op's required ones (qexport.ir.ops.OP_SIGNATURES);
# any other attribute changes the op's meaning in a way the kernels do not know, so it is refused
OPTIONAL_ATTRS: dict[Op, frozenset[str]] = {
    Op.CONV2D: frozenset({"bias", "acc_bits"}),
    Op.LINEAR: frozenset({"bias", "acc_bits"}),
    Op.ADD: frozenset({"acc_bits"}),
    Op.REQUANTIZE: frozenset({"dynamic"}),
}


def templates_dir() -> Path:
    return Path(str(resources.files("qexport.export").joinpath("templates")))


def environment(subdir: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir() / subdir),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["c_comment"] = lambda text: str(text).replace("*/", "* /").replace("\n", " ")
    return env


def zero_point(graph: Graph, tensor: str) -> int:
    quant = graph.tensors[tensor].quant
    return 0 if quant is None else int(quant.zero_point)


def centred_range(graph: Graph, tensor: str) -> tuple[int, int]:
    dtype, zp = graph.tensors[tensor].dtype, zero_point(graph, tensor)
    return dtype.min - zp, dtype.max - zp


def elements(info: TensorInfo) -> int:
    return math.prod(info.shape[1:])


def _io(graph: Graph, names: list[str], arena: Arena, types: dict[str, str]) -> list[dict]:
    rows, io_offset = [], 0
    for name in names:
        info = graph.tensors[name]
        scale = info.quant.scale
        if isinstance(scale, list):
            if len(set(scale)) != 1:
                raise CExportError(f"graph input/output {name!r}: per-channel scales are not supported by main.c")
            scale = scale[0]
        rows.append(
            {
                "name": name,
                "dtype": info.dtype.name,
                "shape": list(info.shape[1:]),
                "elems": elements(info),
                "scale": float(np.float32(scale)).hex() + "f",
                "zero_point": int(info.quant.zero_point),
                "min": info.dtype.min,
                "max": info.dtype.max,
                "offset": arena.offsets[name],
                "type": types[name],
                "io_offset": io_offset,
            }
        )
        io_offset += elements(info)
    return rows


class _Planner:
    def __init__(self, graph: Graph, arena: Arena, types: dict[str, str]):
        self.graph, self.arena, self.types = graph, arena, types
        self.weights: list[dict] = []
        self.codes_elems = 1
        self.scratch = {"cols": 1, "wbuf": 1, "padded": 1}  # bytes of the dot path's buffers
        self.acc64 = False
        self.lut64 = False

    def at(self, tensor: str) -> int:
        return self.arena.offsets[tensor]

    def shape(self, tensor: str) -> tuple[int, ...]:
        return tuple(self.graph.tensors[tensor].shape[1:])

    def weight(self, node: Node) -> int:
        graph = self.graph
        weight = graph.weights[node.attrs["weight"]]
        bias_name = node.attrs.get("bias")
        bias = graph.weights[bias_name] if bias_name is not None else None
        x_min, x_max = centred_range(graph, node.inputs[0])
        acc64 = partial_sum_bound(weight, bias, x_min, x_max) > (1 << 31) - 1
        bias_ints = bias_values(bias)
        dot = dict(DISABLED) if acc64 else plan_dot(graph, node, self.types[node.inputs[0]], bias_ints)
        if dot["enabled"] and node.op is Op.CONV2D:
            weight = channels_last(weight)  # the dot path reads rows in (kernel row, column, channel) order
        fields = pack_weight(weight, x_min, x_max)
        if dot["blocked"] and dot["direct"]:  # the int8 bytes themselves, in the blocked layout
            ints = get_format(weight.format).integers(weight).astype(np.int64).reshape(weight.shape[0], -1)
            fields["packed"] = [int(v) & 0xFF for v in blocked_layout(ints, node.attrs["groups"])]
        fields.update(id=len(self.weights), node=node.name, bias=bias_ints, dot=dot)
        self.weights.append(fields)
        self.codes_elems = max(self.codes_elems, fields["row_len"] * fields["terms"])
        self.acc64 |= acc64
        self.lut64 |= bool(fields["lut"]) and max(abs(v) for v in fields["lut"]) > (1 << 31) - 1
        self.scratch = {key: max(self.scratch[key], dot[key]) for key in self.scratch}
        return fields["id"]

    def step(self, index: int, node: Node) -> dict:
        x, y = node.inputs[0], node.outputs[0]
        step = {"id": index, "name": node.name, "op": node.op.value, "x": self.at(x), "y": self.at(y)}
        step.update(x_type=self.types[x], y_type=self.types[y])
        in_shape, out_shape = self.shape(x), self.shape(y)
        zp = zero_point(self.graph, x)
        if node.op is Op.CONV2D:
            w = self.weight(node)
            kernel = self.graph.weights[node.attrs["weight"]].shape[2:]
            step.update(w=w, has_bias=self.weights[w]["bias"] is not None, x_zp=zp, groups=node.attrs["groups"])
            step.update(in_c=in_shape[0], in_h=in_shape[1], in_w=in_shape[2], k_h=kernel[0], k_w=kernel[1])
            step.update(out_c=out_shape[0], out_h=out_shape[1], out_w=out_shape[2])
            step.update(stride=node.attrs["stride"], padding=node.attrs["padding"], dilation=node.attrs["dilation"])
        elif node.op is Op.LINEAR:
            w = self.weight(node)
            step.update(w=w, has_bias=self.weights[w]["bias"] is not None, x_zp=zp)
            step.update(in_n=in_shape[0], out_n=out_shape[0])
        elif node.op is Op.ADD:
            step.update(x2=self.at(node.inputs[1]), n=math.prod(out_shape), zp_a=zp)
            step.update(zp_b=zero_point(self.graph, node.inputs[1]), x2_type=self.types[node.inputs[1]])
            step.update(mul_a=node.attrs["lhs_multiplier"], mul_b=node.attrs["rhs_multiplier"])
            if max(abs(step["mul_a"]), abs(step["mul_b"])) > (1 << 31) - 1:
                raise CExportError(f"node {node.name!r}: add multipliers do not fit 32 bits")
        elif node.op is Op.REQUANTIZE:
            if "float_scale" in node.attrs or "float_add" in node.attrs:
                raise CExportError(f"node {node.name!r}: float32 requantize has no integer C form")
            operands = dynamic_operands(node)
            mode = node.attrs.get("dynamic", "mul") if operands else None
            channels = in_shape[0] if in_shape else 1
            step.update(channels=channels, inner=max(1, math.prod(in_shape[1:])), mode=DYNAMIC_MODE[mode])
            step.update(multiplier=node.attrs["multiplier"], shift=node.attrs["shift"])
            step.update(zp_out=zero_point(self.graph, y), clip_min=node.attrs["clip_min"])
            step.update(clip_max=node.attrs["clip_max"])
            step["num"] = self.at(operands["num"]) if "num" in operands else None
            step["den"] = self.at(operands["den"]) if "den" in operands else None
            step["num_type"] = self.types[operands["num"]] if "num" in operands else "QX_I32"
            step["den_type"] = self.types[operands["den"]] if "den" in operands else "QX_I32"
        elif node.op is Op.RELU:
            step.update(n=math.prod(out_shape), zp=zp)
        elif node.op is Op.CLIP:
            step.update(n=math.prod(out_shape), clip_min=node.attrs["clip_min"], clip_max=node.attrs["clip_max"])
        elif node.op in (Op.MAXPOOL, Op.AVGPOOL):
            step.update(channels=in_shape[0], in_h=in_shape[1], in_w=in_shape[2], out_h=out_shape[1])
            step.update(out_w=out_shape[2], kernel=node.attrs["kernel"], stride=node.attrs["stride"])
            step.update(padding=node.attrs["padding"], zp=zp, pad_value=self.graph.tensors[x].dtype.min)
            step["count_include_pad"] = int(bool(node.attrs.get("count_include_pad", False)))
        elif node.op is Op.GLOBAL_AVGPOOL:
            step.update(channels=in_shape[0], hw=in_shape[1] * in_shape[2], zp=zp)
        elif node.op in (Op.FLATTEN, Op.RESHAPE):
            step.update(n=max(1, math.prod(out_shape)))
        elif node.op is Op.CONCAT:
            axis = node.attrs["axis"]
            parts, offset = [], 0
            for name in node.inputs:
                chunk = math.prod(self.shape(name)[axis - 1 :])
                parts.append({"x": self.at(name), "x_type": self.types[name], "chunk": chunk, "offset": offset})
                offset += chunk
            step.update(outer=math.prod(out_shape[: axis - 1]), out_chunk=offset, parts=parts)
        else:  # pragma: no cover - the checker knows every op
            raise CExportError(f"node {node.name!r}: op {node.op.value} has no C kernel")
        return step


def check_supported(graph: Graph) -> None:
    """Refuse, naming the layer, any op attribute or tensor type the C and HLS kernels do not implement."""
    for node in graph.nodes:
        known = set(OP_SIGNATURES[node.op][1]) | OPTIONAL_ATTRS.get(node.op, frozenset())
        unknown = sorted(set(node.attrs) - known)
        if unknown:
            raise CExportError(
                f"layer {node.name!r}: {node.op.value} attribute {', '.join(unknown)} is not supported by the "
                "C/HLS board code (use a target without board_code)"
            )
        if node.op is Op.REQUANTIZE and node.attrs.get("dynamic", "mul") not in DYNAMIC_MODE:
            raise CExportError(f"layer {node.name!r}: dynamic requantize {node.attrs['dynamic']!r} has no C kernel")


def c_context(graph: Graph) -> dict:
    """Everything the templates need, computed from the IR graph alone."""
    check_supported(graph)
    types = containers(graph)
    arena = plan_arena(graph, types)
    planner = _Planner(graph, arena, types)
    steps = [planner.step(index, node) for index, node in enumerate(graph.nodes)]
    inputs, outputs = _io(graph, graph.inputs, arena, types), _io(graph, graph.outputs, arena, types)
    scratch = planner.codes_elems * 4 + sum(planner.scratch.values())
    return {
        "version": __version__,
        "name": graph.name,
        "source": graph.metadata.get("source", "-"),
        "inputs": inputs,
        "outputs": outputs,
        "input_elems": sum(t["elems"] for t in inputs),
        "output_elems": sum(t["elems"] for t in outputs),
        "steps": steps,
        "weights": planner.weights,
        "arena_bytes": arena.size,
        "arena_words": arena.size // 8,
        "codes_elems": planner.codes_elems,
        "cols_bytes": planner.scratch["cols"],
        "wbuf_bytes": planner.scratch["wbuf"],
        "padded_bytes": planner.scratch["padded"],
        "scratch_bytes": scratch,
        "acc64": planner.acc64,
        "lut64": planner.lut64,
    }


def write_c(graph: Graph, out_dir: Path) -> list[Path]:
    """Write the C library, model headers, example program and Makefile into ``out_dir/c``."""
    return render_into(Path(out_dir) / "c", "c", PLAIN_FILES, TEMPLATES, c_context(graph))


def render_into(
    target: Path, subdir: str, plain_files: tuple[str, ...] | list[str], templates: dict[str, str], context: dict
) -> list[Path]:
    """Copy ``subdir``'s plain files and render its templates with ``context`` into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name in plain_files:
        path = target / name
        path.write_bytes((templates_dir() / subdir / name).read_bytes())
        written.append(path)
    env = environment(subdir)
    for name, template in templates.items():
        path = target / name
        path.write_text(env.get_template(template).render(**context))
        written.append(path)
    return written
