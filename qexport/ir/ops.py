"""The IR's op set: one enum, and per op the attributes it needs (tinygrad's one-enum idea)."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qexport.ir.graph import Node


class Op(StrEnum):
    CONV2D = "conv2d"
    LINEAR = "linear"
    ADD = "add"
    REQUANTIZE = "requantize"
    RELU = "relu"
    CLIP = "clip"
    MAXPOOL = "maxpool"
    AVGPOOL = "avgpool"
    GLOBAL_AVGPOOL = "global_avgpool"
    FLATTEN = "flatten"
    RESHAPE = "reshape"
    CONCAT = "concat"


# op -> (number of data inputs (min, max), {required attribute: python type})
OP_SIGNATURES: dict[Op, tuple[tuple[int, int], dict[str, type]]] = {
    Op.CONV2D: ((1, 1), {"weight": str, "stride": list, "padding": list, "dilation": list, "groups": int}),
    Op.LINEAR: ((1, 1), {"weight": str}),
    Op.ADD: ((2, 2), {"lhs_multiplier": int, "rhs_multiplier": int}),
    Op.REQUANTIZE: ((1, 3), {"multiplier": list, "shift": list, "clip_min": int, "clip_max": int}),
    Op.RELU: ((1, 1), {}),
    Op.CLIP: ((1, 1), {"clip_min": int, "clip_max": int}),
    Op.MAXPOOL: ((1, 1), {"kernel": list, "stride": list, "padding": list}),
    Op.AVGPOOL: ((1, 1), {"kernel": list, "stride": list, "padding": list, "count_include_pad": bool}),
    Op.GLOBAL_AVGPOOL: ((1, 1), {}),
    Op.FLATTEN: ((1, 1), {}),
    Op.RESHAPE: ((1, 1), {"shape": list}),
    Op.CONCAT: ((1, 64), {"axis": int}),
}

# requantize's per-sample operands after the accumulator, by its "dynamic" attribute ("mul" when absent)
DYNAMIC_OPERANDS: dict[str, tuple[str, ...]] = {"mul": ("num",), "div": ("den",), "muldiv": ("num", "den")}


def dynamic_operands(node: Node) -> dict[str, str]:
    """{"num": tensor, "den": tensor} (either may be missing) of a requantize node, in input order."""
    if len(node.inputs) < 2:
        return {}
    roles = DYNAMIC_OPERANDS.get(node.attrs.get("dynamic", "mul"), ())
    return dict(zip(roles, node.inputs[1:], strict=False))


# requantize's optional float32-exact form (ONNX Runtime's QOperator kernels): attrs["float_scale"]
FLOAT_SCALE = "float_scale"


FLOAT_ADD = "float_add"


def float_scale(node: Node) -> list[float] | None:
    """The float32 scales of a requantize in float form, or None for the integer form."""
    return node.attrs.get(FLOAT_SCALE)


def float_add(node: Node) -> list[float] | None:
    """[r_a, r_b, k] of a requantize in float32 add form (onnxruntime's QLinearAdd), or None."""
    return node.attrs.get(FLOAT_ADD)


def float_form(node: Node) -> bool:
    """A requantize whose arithmetic is float32 (``float_scale`` or ``float_add``): no integer C/HLS form."""
    return node.op is Op.REQUANTIZE and (FLOAT_SCALE in node.attrs or FLOAT_ADD in node.attrs)


# ops whose weights are named in attrs["weight"] and optional bias in attrs["bias"]
WEIGHTED_OPS = frozenset({Op.CONV2D, Op.LINEAR})
