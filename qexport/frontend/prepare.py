"""Turn a float model into a QAT model: fold batch norm, swap layers, insert quantizers."""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from qexport.errors import LoweringError
from qexport.frontend.patterns import ACTIVATIONS, GRID_PRESERVING, WEIGHTED, describe, node_kind, set_module
from qexport.quant.config import QuantConfig
from qexport.quant.lsq import ActQuant
from qexport.quant.modules import QAvgPool2d, QConv2d, QLinear
from qexport.quant.registry import make_act_quantizer


def _fold_batchnorm(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        if node_kind(gm, node) != "bn":
            continue
        source = node.args[0]
        if node_kind(gm, source) not in ("conv", "linear") or len(source.users) != 1:
            raise LoweringError(f"layer {describe(gm, node)}: batch norm must directly follow a conv or linear")
        layer, bn = gm.get_submodule(source.target), gm.get_submodule(node.target)
        with torch.no_grad():
            factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
            folded_bias = (bias - bn.running_mean) * factor + bn.bias
            weight = layer.weight * factor.reshape((-1,) + (1,) * (layer.weight.dim() - 1))
        folded = copy.deepcopy(layer)
        folded.weight = nn.Parameter(weight.detach().clone())
        folded.bias = nn.Parameter(folded_bias.detach().clone())
        set_module(gm, source.target, folded)
        node.replace_all_uses_with(source)
        gm.graph.erase_node(node)
        gm.delete_submodule(node.target)


def _swap_weighted(gm: fx.GraphModule, config: QuantConfig) -> None:
    weighted = [node for node in gm.graph.nodes if node_kind(gm, node) in ("conv", "linear")]
    for index, node in enumerate(weighted):
        edge = index in (0, len(weighted) - 1)  # first and last layers stay LSQ integers at their own widths
        bits = config.first_bits if index == 0 else config.last_bits if edge else config.weight_bits
        module = gm.get_submodule(node.target)
        cls = QConv2d if isinstance(module, nn.Conv2d) else QLinear
        try:
            quantized = cls.from_float(
                module,
                weight_bits=bits,
                weight_method="lsq" if edge else config.weight_method,
                config=config,
            )
        except ValueError as error:
            raise LoweringError(f"layer {describe(gm, node)}: {error}") from None
        set_module(gm, node.target, quantized)


def _insert_after(gm: fx.GraphModule, node: fx.Node, name: str, module: nn.Module) -> fx.Node:
    gm.add_submodule(name, module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, (node,))
    node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    return new


def _insert_before(gm: fx.GraphModule, user: fx.Node, operand: fx.Node, name: str, module: nn.Module) -> None:
    gm.add_submodule(name, module)
    with gm.graph.inserting_before(user):
        new = gm.graph.call_module(name, (operand,))
    user.replace_input_with(operand, new)


def quant_sources(gm: fx.GraphModule) -> dict[fx.Node, nn.Module]:
    """For every node whose value lies on a quantizer's grid, that quantizer."""
    sources: dict[fx.Node, nn.Module] = {}
    for node in gm.graph.nodes:
        kind = node_kind(gm, node)
        if kind == "quant":
            sources[node] = gm.get_submodule(node.target)
        elif kind in GRID_PRESERVING and node.args and node.args[0] in sources:
            sources[node] = sources[node.args[0]]
    return sources


def _insert_quantizers(gm: fx.GraphModule, config: QuantConfig) -> None:
    def quant(bits: int, signed: bool) -> ActQuant:
        return ActQuant(bits, signed, pow2=config.pow2_scales)

    def act_quant(bits: int) -> nn.Module:
        return make_act_quantizer(config.act_method, bits, False, config)

    for node in list(gm.graph.nodes):
        kind = node_kind(gm, node)
        users = list(node.users)
        if kind == "placeholder":
            _insert_after(gm, node, f"{node.name}_quant", quant(config.input_bits, True))
        elif kind in ACTIVATIONS:
            _insert_after(gm, node, f"{node.name}_quant", act_quant(config.act_bits))
        elif kind in WEIGHTED or kind == "add":
            if len(users) == 1 and node_kind(gm, users[0]) in ACTIVATIONS | {"add"}:
                continue
            output_user = any(user.op == "output" for user in users)
            bits = config.output_bits if output_user else config.residual_bits if kind == "add" else config.act_bits
            _insert_after(gm, node, f"{node.name}_quant", quant(bits, True))
    sources = quant_sources(gm)
    for node in list(gm.graph.nodes):
        if node_kind(gm, node) != "add":
            continue
        for index, operand in enumerate(node.args[:2]):
            if isinstance(operand, fx.Node) and operand not in sources:
                _insert_before(gm, node, operand, f"{node.name}_in{index}_quant", quant(config.residual_bits, True))


def _swap_avgpools(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        kind = node_kind(gm, node)
        if kind == "gap":
            pool = QAvgPool2d()
        elif kind == "avgpool":
            if node.op != "call_module":
                raise LoweringError(f"layer {describe(gm, node)}: use nn.AvgPool2d for average pools")
            module = gm.get_submodule(node.target)
            if module.ceil_mode or module.divisor_override is not None:
                raise LoweringError(f"layer {describe(gm, node)}: ceil_mode and divisor_override are not supported")
            pool = QAvgPool2d(module.kernel_size, module.stride, module.padding, module.count_include_pad)
        else:
            continue
        name = f"{node.name}_qpool"
        gm.add_submodule(name, pool)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)


def link_input_quantizers(gm: fx.GraphModule) -> None:
    """Tell every quantized layer which quantizer's grid its input lies on."""
    sources = quant_sources(gm)
    for node in gm.graph.nodes:
        if node_kind(gm, node) in ("qconv", "qlinear", "qavgpool"):
            source = sources.get(node.args[0])
            if source is None:
                raise LoweringError(f"layer {describe(gm, node)}: its input is not quantized")
            gm.get_submodule(node.target).set_input_quant(source)


def prepare_qat(model: nn.Module, config: QuantConfig) -> fx.GraphModule:
    """A traced copy of ``model`` with BN folded, fake-quantized layers and activation quantizers."""
    model = copy.deepcopy(model).eval()
    try:
        gm = fx.symbolic_trace(model)
    except Exception as error:  # noqa: BLE001 - fx raises many types; report them in one line
        raise LoweringError(f"model {type(model).__name__}: torch.fx cannot trace it ({error})") from None
    for node in gm.graph.nodes:
        if node_kind(gm, node) == "unsupported":
            raise LoweringError(f"layer {describe(gm, node)}: unsupported operation for integer lowering")
    _fold_batchnorm(gm)
    _swap_weighted(gm, config)
    _swap_avgpools(gm)
    _insert_quantizers(gm, config)
    gm.graph.lint()
    gm.recompile()
    link_input_quantizers(gm)
    return gm
