"""Classify torch.fx nodes into the few kinds the front end understands (a table, not branches)."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from qexport.quant.base import ActivationQuantizer
from qexport.quant.lsq import LsqQuantizer
from qexport.quant.modules import QAvgPool2d, QConv2d, QLinear

MODULE_KINDS: list[tuple[type, str]] = [
    (LsqQuantizer, "quant"),
    (ActivationQuantizer, "quant"),
    (QConv2d, "qconv"),
    (QLinear, "qlinear"),
    (QAvgPool2d, "qavgpool"),
    (nn.Conv2d, "conv"),
    (nn.Linear, "linear"),
    (nn.BatchNorm2d, "bn"),
    (nn.BatchNorm1d, "bn"),
    (nn.ReLU, "relu"),
    (nn.ReLU6, "relu6"),
    (nn.MaxPool2d, "maxpool"),
    (nn.AvgPool2d, "avgpool"),
    (nn.AdaptiveAvgPool2d, "gap"),
    (nn.Flatten, "flatten"),
    (nn.Dropout, "identity"),
    (nn.Identity, "identity"),
]

FUNCTION_KINDS = {
    F.relu: "relu",
    torch.relu: "relu",
    F.relu6: "relu6",
    operator.add: "add",
    operator.iadd: "add",
    torch.add: "add",
    torch.flatten: "flatten",
    F.max_pool2d: "maxpool",
    F.adaptive_avg_pool2d: "gap",
    F.avg_pool2d: "avgpool",
    F.dropout: "identity",
}

METHOD_KINDS = {"relu": "relu", "flatten": "flatten", "add": "add"}

WEIGHTED = frozenset({"conv", "linear", "qconv", "qlinear"})
ACTIVATIONS = frozenset({"relu", "relu6"})
GRID_PRESERVING = frozenset({"maxpool", "flatten", "identity", "qavgpool"})


def node_kind(gm: fx.GraphModule, node: fx.Node) -> str:
    """One of the kinds above, 'placeholder', 'output', or 'unsupported'."""
    if node.op in ("placeholder", "output"):
        return node.op
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        for cls, kind in MODULE_KINDS:
            if isinstance(module, cls):
                if kind == "gap" and module.output_size not in (1, (1, 1)):
                    return "unsupported"
                return kind
        return "unsupported"
    if node.op == "call_function":
        kind = FUNCTION_KINDS.get(node.target, "unsupported")
        if kind == "gap" and node.args[1:2] not in ((1,), ((1, 1),)):
            return "unsupported"
        return kind
    if node.op == "call_method":
        return METHOD_KINDS.get(node.target, "unsupported")
    return "unsupported"


def describe(gm: fx.GraphModule, node: fx.Node) -> str:
    """A human name for error messages: module path and type, or the function name."""
    if node.op == "call_module":
        return f"{node.target} ({type(gm.get_submodule(node.target)).__name__})"
    target = getattr(node.target, "__name__", str(node.target))
    return f"{node.name} ({target})"


def set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent_name, _, child = target.rpartition(".")
    setattr(gm.get_submodule(parent_name) if parent_name else gm, child, module)
