"""Compare every execution path of a model against the IR reference, in output LSBs.

Bounds (docs/verification.md): when every scale in the graph is a power of two the
integer paths must be bit-exact; otherwise each layer, given identical integer
inputs, may differ by at most one LSB from the reference (float requantization in
the QDQ graph vs the IR's 31-bit integer multiplier), and end-to-end differences
are reported, not bounded.

Input-adaptive (per-sample, dynamic) requantization (ASQ, docs/methods/asq.md): hwsim must still
equal the reference bit for bit; torch and onnxruntime apply the per-sample factors in float, so
they are held to the 1 LSB per-layer bound and their end-to-end differences are reported. A tensor
with a per-sample factor is compared on its static grid (torch's real values are divided by the factor).

Board code (``boards``: the target's ``c`` / ``hls``) is built on the host in a temporary directory and
run on the same integer inputs (qexport.board_verify); like hwsim it must be bit-exact (bound 0). A
path whose compiler or ap_types headers are missing is skipped with the reason, not failed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import torch

from qexport.board_verify import run_board
from qexport.export.onnx_qdq import with_intermediate_outputs
from qexport.formats import get_format
from qexport.frontend.requant import is_power_of_two
from qexport.ir.graph import Graph
from qexport.ir.ops import Op, dynamic_operands
from qexport.quant.asq import BETA_SUFFIX
from qexport.reference import quantize_input, run_graph, run_node

BATCH = 64
LAYERWISE_BOUND_LSB = 1
BOARD_PATHS = {"c": "C (host gcc)", "hls": "HLS csim (g++)"}
PASS_THROUGH = frozenset({Op.RELU, Op.CLIP, Op.MAXPOOL, Op.AVGPOOL, Op.GLOBAL_AVGPOOL, Op.FLATTEN, Op.RESHAPE})

Progress = Callable[[int], None]


@dataclass
class PathResult:
    path: str
    top1_agreement: float
    max_error_lsb: int
    bit_exact: int
    total: int
    accuracy: float | None = None
    bound_lsb: int | None = None  # None: reported, not enforced
    skipped: str | None = None  # board paths: why the path did not run (a missing tool); not a failure
    error: str | None = None  # board paths: why the build or run failed (a failure)

    @property
    def ok(self) -> bool:
        if self.error is not None:
            return False
        return self.skipped is not None or self.bound_lsb is None or self.max_error_lsb <= self.bound_lsb

    @property
    def status(self) -> str:
        if self.error is not None:
            return f"FAIL ({self.error})"
        if self.skipped is not None:
            return f"skipped: {self.skipped}"
        return "reported" if self.bound_lsb is None else ("ok" if self.ok else f"FAIL (bound {self.bound_lsb})")


@dataclass
class Verification:
    exact_expected: bool
    samples: int
    reference_accuracy: float | None
    paths: list[PathResult] = field(default_factory=list)
    layerwise: dict[str, tuple[int, float]] = field(default_factory=dict)  # path -> (max LSB, mismatch rate)

    @property
    def ok(self) -> bool:
        layer_bound = 0 if self.exact_expected else LAYERWISE_BOUND_LSB
        return all(p.ok for p in self.paths) and all(worst <= layer_bound for worst, _ in self.layerwise.values())

    def to_dict(self) -> dict:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def all_scales_power_of_two(graph: Graph) -> bool:
    """True when every activation step and weight grid step is a power of two and every weight
    format is linear (powers of sqrt(2) round each odd-exponent product in the LUT)."""
    for info in graph.tensors.values():
        if info.quant is not None and not all(is_power_of_two(float(s)) for s in np.atleast_1d(info.quant.scale)):
            return False
    if not all(get_format(weight.format).linear for weight in graph.weights.values()):
        return False
    return all(
        is_power_of_two(float(s))
        for weight in graph.weights.values()
        for s in get_format(weight.format).grid_scale(weight)
    )


def dynamic_sources(graph: Graph) -> dict[str, str]:
    """Tensor -> the [N] factor tensor its scale is multiplied by (only tensors that have one)."""
    sources: dict[str, str] = {}
    for node in graph.nodes:
        operands = dynamic_operands(node) if node.op is Op.REQUANTIZE else {}
        if "den" in operands:
            sources[node.outputs[0]] = operands["den"]
        elif node.op in PASS_THROUGH and node.inputs[0] in sources:
            sources[node.outputs[0]] = sources[node.inputs[0]]
    return sources


def has_dynamic_requant(graph: Graph) -> bool:
    return any(node.op is Op.REQUANTIZE and len(node.inputs) > 1 for node in graph.nodes)


def _to_int(graph: Graph, tensor: str, values: np.ndarray) -> np.ndarray:
    quant = graph.tensors[tensor].quant
    return np.rint(values / np.float32(quant.scale)).astype(np.int64) + quant.zero_point


def _batches(count: int):
    for start in range(0, count, BATCH):
        yield slice(start, min(start + BATCH, count))


def torch_integers(
    model: torch.nn.Module, graph: Graph, inputs: np.ndarray, progress: Progress | None = None
) -> np.ndarray:
    """The fake-quantized model's output divided by its step (exact integers when on the grid)."""
    model.eval()
    parts = []
    with torch.no_grad():
        for part in _batches(len(inputs)):
            parts.append(model(torch.from_numpy(inputs[part])).numpy())
            if progress:
                progress(part.stop - part.start)
    return _to_int(graph, graph.outputs[0], np.concatenate(parts))


def torch_tensors(model: torch.fx.GraphModule, graph: Graph, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Every on-grid tensor of the fake-quantized model (captured by forward hooks) as IR integers.

    Quantizers with per-sample factors (``beta_integers``) also give their factor tensor
    ``<node>.adapter.beta``; tensors scaled by such a factor are divided by it (back to the static grid).
    """
    accumulators = {node.outputs[0] for node in graph.nodes if node.op in (Op.CONV2D, Op.LINEAR, Op.ADD)}
    wanted = {
        node.target: node.name
        for node in model.graph.nodes
        if node.op == "call_module" and node.name in graph.tensors and node.name not in accumulators
    }
    captured: dict[str, list[np.ndarray]] = {}

    def hook(module, _inputs, out, name: str) -> None:
        captured.setdefault(name, []).append(out.detach().numpy())
        factor = f"{name}{BETA_SUFFIX}"
        if hasattr(module, "beta_integers") and factor in graph.tensors:
            real = module.beta_integers() * float(graph.tensors[factor].quant.scale)
            captured.setdefault(factor, []).append(real)

    hooks = [
        model.get_submodule(target).register_forward_hook(lambda m, i, o, name=name: hook(m, i, o, name))
        for target, name in wanted.items()
    ]
    try:
        torch_integers(model, graph, inputs)
    finally:
        for hook_handle in hooks:
            hook_handle.remove()
    values = {name: np.concatenate(parts) for name, parts in captured.items()}
    for name, factor in dynamic_sources(graph).items():
        if name in values and factor in values:
            values[name] = values[name].astype(np.float64) / values[factor].reshape(
                (-1,) + (1,) * (values[name].ndim - 1)
            )
    return {name: _to_int(graph, name, value) for name, value in values.items()}


def reference_integers(graph: Graph, inputs: np.ndarray, progress: Progress | None = None) -> np.ndarray:
    info = graph.tensors[graph.inputs[0]]
    parts = []
    for part in _batches(len(inputs)):
        parts.append(run_graph(graph, {info.name: quantize_input(info, inputs[part])})[graph.outputs[0]])
        if progress:
            progress(part.stop - part.start)
    return np.concatenate(parts)


def hwsim_integers(graph: Graph, inputs: np.ndarray) -> np.ndarray:
    """hwsim's engine (exact by construction, so its bound is always 0 LSB)."""
    from hwsim.engine import Engine  # hwsim reads the IR; imported here to keep qexport importable alone

    info = graph.tensors[graph.inputs[0]]
    outputs, _ = Engine(graph).run({info.name: quantize_input(info, inputs)})
    return outputs[graph.outputs[0]]


def onnxruntime_session(model: onnx.ModelProto, optimize: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def onnxruntime_tensors(model: onnx.ModelProto, graph: Graph, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of ``model`` (run with graph optimizations disabled) as IR integers."""
    session = onnxruntime_session(model)
    names = [o.name for o in session.get_outputs()]
    feed_name = session.get_inputs()[0].name
    collected: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for part in _batches(len(inputs)):
        for name, value in zip(names, session.run(None, {feed_name: inputs[part]}), strict=True):
            collected[name].append(value)
    return {name: _to_int(graph, name, np.concatenate(parts)) for name, parts in collected.items()}


def layerwise_errors(graph: Graph, inputs: np.ndarray, observed: dict[str, np.ndarray]) -> tuple[int, float]:
    """Run each reference node on the observed path's own inputs; (max |error| LSB, mismatch rate)."""
    info = graph.tensors[graph.inputs[0]]
    values = {info.name: quantize_input(info, inputs)}
    worst, mismatches, total = 0, 0, 0
    for node in graph.nodes:
        result = run_node(graph, node, [observed.get(name, values.get(name)) for name in node.inputs])
        values[node.outputs[0]] = result
        if node.outputs[0] in observed:
            error = np.abs(result - observed[node.outputs[0]])
            worst = max(worst, int(error.max()))
            mismatches += int((error > 0).sum())
            total += error.size
    return worst, mismatches / max(total, 1)


def compare(
    path: str, reference: np.ndarray, other: np.ndarray, labels: np.ndarray | None, bound: int | None
) -> PathResult:
    error = np.abs(reference - other).reshape(len(reference), -1)
    accuracy = None if labels is None else float((other.argmax(axis=1) == labels).mean())
    return PathResult(
        path=path,
        top1_agreement=float((reference.argmax(axis=1) == other.argmax(axis=1)).mean()),
        max_error_lsb=int(error.max()),
        bit_exact=int((error == 0).sum()),
        total=int(error.size),
        accuracy=accuracy,
        bound_lsb=bound,
    )


def board_path(code: str, graph: Graph, inputs: np.ndarray, reference: np.ndarray, labels) -> PathResult:
    """The generated board code (``c``: host gcc build, ``hls``: g++ C simulation), bound 0 like hwsim."""
    info = graph.tensors[graph.inputs[0]]
    run = run_board(code, graph, {info.name: quantize_input(info, inputs)})
    name = BOARD_PATHS[code]
    if run.outputs is None:
        return PathResult(name, 0.0, 0, 0, int(reference.size), None, 0, skipped=run.skipped, error=run.error)
    return compare(name, reference, run.outputs[graph.outputs[0]], labels, 0)


def verify(
    graph: Graph,
    model: torch.nn.Module | None,
    onnx_model: onnx.ModelProto,
    inputs: np.ndarray,
    labels: np.ndarray | None = None,
    progress: Progress | None = None,
    boards: Sequence[str] = (),
) -> Verification:
    """Run the fake-quant torch model, the IR reference, onnxruntime and hwsim, and compare.

    ``boards`` adds the generated board code's paths (``"c"``, ``"hls"``: built and run on the host).
    """
    exact = all_scales_power_of_two(graph) and not has_dynamic_requant(graph)
    reference = reference_integers(graph, inputs, progress)
    result = Verification(
        exact_expected=exact,
        samples=len(inputs),
        reference_accuracy=None if labels is None else float((reference.argmax(axis=1) == labels).mean()),
    )
    observed_paths = {}
    if model is not None:
        observed_paths["torch fake-quant"] = torch_tensors(model, graph, inputs)
    if progress:
        progress(len(inputs))
    observed_paths["onnxruntime"] = onnxruntime_tensors(with_intermediate_outputs(onnx_model, graph), graph, inputs)
    if progress:
        progress(len(inputs))
    result.paths.append(compare("hwsim", reference, hwsim_integers(graph, inputs), labels, 0))
    if progress:
        progress(len(inputs))
    for code in boards:
        result.paths.append(board_path(code, graph, inputs, reference, labels))
        if progress:
            progress(len(inputs))
    bound = 0 if exact else None
    for path, observed in observed_paths.items():
        result.paths.append(compare(path, reference, observed[graph.outputs[0]], labels, bound))
        result.layerwise[path] = layerwise_errors(graph, inputs, observed)
    return result
