"""One trial: quantize the digits CNN -> lower -> hwsim accuracy on the test split -> estimate per hardware point.

Runs in a Dask worker (or anywhere): it pins torch to one thread and seeds everything, so the same
``TrialConfig`` gives the same objectives in any process. A trial never raises: failures (of the whole
trial or of one hardware point, e.g. a weight format the target does not offer) come back as rows with
``status = "failed"`` and the error text.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import traceback
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from qexport.dse.space import HardwarePoint, TrialConfig
from qexport.errors import QExportError

ARCHITECTURE = "digits_cnn"


def pin_process() -> None:
    """One torch thread and deterministic algorithms: the objectives must not depend on the worker."""
    import torch

    torch.set_num_threads(1)


@cache
def float_model(path: str | None, sha256: str) -> Any:
    """The float digits CNN every trial starts from (cached per process; never modified), checked
    against the checksum the trial's key holds."""
    from qexport.dse.space import TRAINED_FLOAT

    if path is None:
        if sha256 != TRAINED_FLOAT:
            raise QExportError(f"trial needs float weights with sha256 {sha256[:12]}... but names no file")
        from qexport.train_cli import train_float

        return train_float()[0]
    from qexport.checkpoint import load_float_weights

    if hashlib.sha256(Path(path).read_bytes()).hexdigest() != sha256:
        raise QExportError(f"{path}: float weights changed since the trial was defined (sha256 differs)")
    model, architecture, _ = load_float_weights(path)
    if architecture != ARCHITECTURE:
        raise QExportError(f"{path}: architecture {architecture!r}, expected {ARCHITECTURE!r}")
    return model


@cache
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from qexport.data import digits_split

    return digits_split()


def quantize(config: TrialConfig) -> Any:
    """``run_method`` on the first ``train_samples`` training images, seeded: a ``Trained``."""
    from qexport.methods import run_method
    from qexport.quant.config import QuantConfig
    from qexport.training import seed_everything

    pin_process()
    seed_everything(config.seed)
    x_train, y_train, _, _ = digits()
    base = QuantConfig(
        weight_bits=config.weight_bits,
        act_bits=config.act_bits,
        first_bits=config.first_bits,
        last_bits=config.last_bits,
        pow2_scales=True,
    )
    data = (x_train[: config.train_samples], y_train[: config.train_samples])
    lr = config.lr if config.lr > 0 else 2e-3
    return run_method(
        config.method,
        float_model(config.float_weights, config.float_sha256),
        base,
        data,
        config.epochs,
        lr,
        config.seed,
    )


def integer_accuracy(graph: Any) -> float:
    """Top-1 accuracy of the integer model, run by hwsim, on the digits test split."""
    from hwsim.engine import Engine
    from qexport.reference import quantize_input

    _, _, x_test, y_test = digits()
    name = graph.inputs[0]
    outputs, _ = Engine(graph, threads=1).run({name: quantize_input(graph.tensors[name], x_test)})
    return float((outputs[graph.outputs[0]].argmax(axis=1) == y_test).mean())


def hardware(point: HardwarePoint) -> Any:
    """The hwsim ``Hardware`` of a point: the target file with the point's overrides."""
    from hwsim.cost.targets import hardware_of
    from qexport.targets import load_target

    hw = hardware_of(load_target(point.target)).with_overrides(point.array, point.dataflow)
    overrides = {
        name: getattr(point, name)
        for name in ("ifmap_sram_bytes", "filter_sram_bytes", "ofmap_sram_bytes", "clock_mhz")
        if getattr(point, name) is not None
    }
    return replace(hw, **overrides)


def resources_available() -> bool:
    """Whether the RTL synthesis numbers (hwsim/cost/resources.json) are installed."""
    from importlib import resources

    return resources.files("hwsim.cost").joinpath("resources.json").is_file()


def array_resources(graph: Any, hw: Any) -> dict[str, int]:
    """RTL resources of a systolic array's PEs for this model (``hwsim.cost.resources``: its PE style and
    width per layer, Yosys numbers): ``lut`` and ``ff`` mapped without DSPs (synth_xilinx -nodsp: one
    comparable number), ``dsp`` the DSP48s the default mapping uses instead. Empty for vector targets
    or without resources.json."""
    if hw.model != "systolic" or not resources_available():
        return {}
    from hwsim.cost.resources import array_resources as pe_arrays
    from hwsim.cost.resources import resource_table

    table = resource_table()["pe"]
    totals = {"lut": 0, "ff": 0, "dsp": 0}
    for array in pe_arrays(graph, hw):
        entry = table[array.style][str(array.bits)]
        nodsp = entry.get("xilinx_nodsp", entry["xilinx"])  # styles without multipliers use no DSPs anyway
        totals["lut"] += array.pes * nodsp["lut"]
        totals["ff"] += array.pes * nodsp["ff"]
        totals["dsp"] += array.total["dsp"]
    return totals


def _error_text(error: BaseException) -> str:
    if isinstance(error, QExportError):
        return str(error)
    return f"{type(error).__name__}: {error} ({traceback.format_exception(error)[-2].strip()})"


def _point_row(graph: Any, config: TrialConfig, point: HardwarePoint) -> dict[str, Any]:
    from hwsim.cost.model import estimate
    from qexport.pipeline import check_against_target
    from qexport.targets import load_target

    row: dict[str, Any] = {"hardware_key": point.key, "status": "ok", "error": None}
    try:
        check_against_target(graph, load_target(point.target))
        result = estimate(graph, hardware(point), batch=point.batch)
        row.update(
            latency_ms=result.milliseconds / point.batch,
            cycles=result.total_cycles,
            energy_nj=result.total("energy_total_pj") / 1e3 / point.batch,
        )
        row.update(array_resources(graph, result.hardware))
    except Exception as error:  # noqa: BLE001 - recorded in the results, not fatal
        row.update(status="failed", error=_error_text(error))
    return row


def evaluate_trial(config: TrialConfig, points: list[HardwarePoint]) -> dict[str, Any]:
    """Quantize once, then estimate on every hardware point: ``{"trial_key", "status", ..., "points": [...]}``."""
    from hwsim.counters import layer_counts
    from qexport.frontend.lower import lower
    from qexport.targets import load_target
    from qexport.training import accuracy

    started = time.perf_counter()
    result: dict[str, Any] = {
        "trial_key": config.key,
        "status": "ok",
        "error": None,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }
    try:
        trained = quantize(config)
        graphs: dict[int, Any] = {}
        for point in points:
            acc_bits = load_target(point.target).max_acc_bits
            if acc_bits not in graphs:
                graphs[acc_bits] = lower(
                    trained.model, (1, 8, 8), ARCHITECTURE, max_acc_bits=acc_bits, post_mac=config.post_mac or "lut"
                )
        graph = next(iter(graphs.values())) if graphs else lower(trained.model, (1, 8, 8), ARCHITECTURE)
        counts = layer_counts(graph, 1)
        _, _, x_test, y_test = digits()
        result.update(
            accuracy=integer_accuracy(graph),
            fake_quant_accuracy=accuracy(trained.model, x_test, y_test),
            size_bytes=sum(c.weight_bytes + c.lut_bytes for c in counts),
        )
        result["points"] = [
            _point_row(graphs[load_target(point.target).max_acc_bits], config, point) for point in points
        ]
    except Exception as error:  # noqa: BLE001 - recorded in the results, not fatal
        result.update(status="failed", error=_error_text(error))
        result["points"] = [
            {"hardware_key": point.key, "status": "failed", "error": result["error"]} for point in points
        ]
    result["seconds"] = time.perf_counter() - started
    return result


def checkpoint_bytes(config: TrialConfig) -> tuple[bytes, float]:
    """Re-quantize ``config`` and return (safetensors checkpoint bytes, integer accuracy), for the best point."""
    import tempfile

    from qexport.checkpoint import checkpoint_from_model, save_checkpoint
    from qexport.frontend.lower import lower
    from qexport.training import accuracy

    trained = quantize(config)
    graph = lower(trained.model, (1, 8, 8), ARCHITECTURE, post_mac=config.post_mac or "lut")
    integer = integer_accuracy(graph)
    _, _, x_test, y_test = digits()
    info = {
        "dataset": "digits",
        "qat_accuracy": accuracy(trained.model, x_test, y_test),
        "integer_accuracy": integer,
        **trained.info,
        "dse_trial": config.to_dict(),
        "trained_by": "qexport-dse",
    }
    checkpoint = checkpoint_from_model(trained.model, ARCHITECTURE, {}, trained.config, **info)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "best.ckpt"
        save_checkpoint(path, checkpoint)
        return path.read_bytes(), integer
