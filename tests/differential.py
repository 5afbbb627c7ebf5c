"""The differential checks shared by tests/test_differential.py and benchmarks/differential_campaign.py:
hwsim in every mode and convolution path against the IR reference, bit for bit, and onnxruntime with
default SessionOptions loading and running the ONNX export."""

from __future__ import annotations

import numpy as np

from hwsim.engine import Engine
from qexport.ir.graph import Graph
from qexport.reference import run_graph

HWSIM_MODES = (  # check name -> Engine keyword arguments
    ("fast/auto", {"mode": "fast", "conv": "auto"}),
    ("fast/onednn", {"mode": "fast", "conv": "onednn"}),
    ("fast/float", {"mode": "fast", "conv": "float"}),
    ("fast/blas", {"mode": "fast", "conv": "blas"}),
    ("faithful", {"mode": "faithful"}),
)
PER_LEVEL_MODES = (  # only where a codebook weight makes the style matter
    ("fast/auto per_level", {"mode": "fast", "conv": "auto", "codebook_style": "per_level"}),
    ("faithful per_level", {"mode": "faithful", "codebook_style": "per_level"}),
)
ORT_CHECK = "onnxruntime default load"


def random_feeds(graph: Graph, rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
    """Uniform integers over each input's type."""
    feeds = {}
    for name in graph.inputs:
        info = graph.tensors[name]
        feeds[name] = rng.integers(info.dtype.min, info.dtype.max, (batch, *info.shape[1:]), endpoint=True)
    return feeds


def hwsim_modes(graph: Graph) -> tuple[tuple[str, dict], ...]:
    """Every hwsim configuration that applies to ``graph``."""
    codebook = any(weight.format == "codebook" for weight in graph.weights.values())
    return HWSIM_MODES + (PER_LEVEL_MODES if codebook else ())


def hwsim_mismatches(
    graph: Graph, feeds: list[dict[str, np.ndarray]], threads: int | None = None
) -> dict[str, str | None]:
    """check name -> None when hwsim equals the IR reference bit for bit on every feed, else what differed.
    One engine runs all feeds in turn, as a user's would (reused buffers, memory freed between runs)."""
    expected = [run_graph(graph, feed) for feed in feeds]
    results = {}
    for name, kwargs in hwsim_modes(graph):
        engine = Engine(graph, threads=threads, **kwargs)
        results[name] = None
        for feed, reference in zip(feeds, expected, strict=True):
            got, _ = engine.run(feed)
            wrong = [out for out in graph.outputs if not np.array_equal(got[out], reference[out])]
            if wrong:
                results[name] = f"outputs {wrong} differ (max |diff| {_max_diff(got, reference, wrong)})"
                break
    return results


def _max_diff(got: dict, expected: dict, names: list[str]) -> int:
    return max(int(np.abs(got[n].astype(np.int64) - expected[n]).max(initial=0)) for n in names)


def ort_default_runs(graph: Graph, feeds: dict[str, np.ndarray], native_bits: tuple[int, ...] | None = None) -> None:
    """Export to ONNX QDQ and load and run it in onnxruntime with default SessionOptions (raises on failure)."""
    import onnxruntime as ort

    from qexport.export.onnx_qdq import export_onnx

    model = export_onnx(graph) if native_bits is None else export_onnx(graph, native_bits)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = {}
    for name in graph.inputs:
        quant = graph.tensors[name].quant
        inputs[f"{name}__float"] = ((feeds[name] - quant.zero_point) * np.float32(quant.scale)).astype(np.float32)
    session.run(None, inputs)
