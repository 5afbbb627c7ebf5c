"""The quantization methods a user can run by name: a quantizer pair plus a procedure.

Every method starts from a trained float model and returns a prepared model
(``prepare_qat`` structure) that lowers like any other. Procedures:

* ``qat``: calibrate the quantizers on a batch, then quantization-aware training;
* ``progressive``: PQDE's bit-width schedule from high precision down to the target;
* ``ddq``: QAT with DDQ's learned bit widths and an optional size/latency budget penalty;
* ``ptq``: post-training calibration only (no labels, no training): RAPQ and the RTN baseline.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from torch import fx, nn

from qexport.errors import QExportError
from qexport.frontend.prepare import prepare_qat
from qexport.quant.config import QuantConfig
from qexport.training import Log, calibrate, train

CALIBRATION_SAMPLES = 256


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    weight_method: str = "lsq"
    act_method: str = "lsq"
    procedure: str = "qat"
    options: dict[str, Any] = field(default_factory=dict)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("lsq", "LSQ: uniform integers with learned step sizes (baseline)"),
        Method("pot", "power-of-two weights with learned clipping (shift MAC)", weight_method="pot"),
        Method("post", "seed 002 POST: powers of sqrt(2) weights (shift + LUT MAC)", weight_method="post"),
        Method("asq", "seed 002 ASQ: input-adaptive activation step sizes", act_method="asq"),
        Method("post_asq", "seed 002 POST weights + ASQ activations", weight_method="post", act_method="asq"),
        Method("apot", "additive powers-of-two weights (two shifts + add)", weight_method="apot"),
        Method(
            "codebook",
            "seed 003: learned weight levels (codebook) + channel-aware activation quantizers",
            weight_method="codebook",
            act_method="channel",
        ),
        Method(
            "ddq",
            "seed 001 DDQ: learned per-layer bit width, range and step (mixed precision)",
            weight_method="ddq",
            act_method="ddq",
            procedure="ddq",
            # hwsim's cycles do not depend on bit width <= 8 on any shipped target; energy does
            options={"ddq_budget_kind": "energy"},
        ),
        Method(
            "pqde",
            "seed 000 PQDE: progressive bit schedule, MDE quantizer, arctangent soft round",
            weight_method="mde",
            act_method="mde",
            procedure="progressive",
        ),
        Method("rapq", "seed 004 RAPQ: power-of-two PTQ, scale balancing, BN-based reconstruction", procedure="ptq"),
        Method("rtn", "round-to-nearest power-of-two PTQ (the RAPQ baseline)", procedure="ptq"),
    )
}


def method_config(name: str, base: QuantConfig, options: dict[str, Any] | None = None) -> QuantConfig:
    """``base`` with the method's quantizers (PTQ methods force power-of-two scales)."""
    method = get_method(name)
    merged = {**method.options, **base.options, **(options or {})}
    config = replace(base, weight_method=method.weight_method, act_method=method.act_method, options=merged)
    if method.procedure == "ptq":
        config = replace(config, pow2_scales=True)
    return config


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise QExportError(f"unknown method {name!r} (known: {', '.join(METHODS)})")
    return METHODS[name]


@dataclass
class Trained:
    model: fx.GraphModule
    config: QuantConfig
    info: dict[str, Any]


def run_method(
    name: str,
    float_model: nn.Module,
    base: QuantConfig,
    data: tuple[np.ndarray, np.ndarray],
    epochs: int = 40,
    lr: float = 2e-3,
    seed: int = 1,
    options: dict[str, Any] | None = None,
    log: Log | None = None,
) -> Trained:
    """Quantize ``float_model`` (not modified) with method ``name`` on ``data`` = (x_train, y_train)."""
    method = get_method(name)
    config = method_config(name, base, options)
    x, y = data
    started = time.perf_counter()
    float_model = copy.deepcopy(float_model).eval()
    info: dict[str, Any] = {"method": name, "procedure": method.procedure}
    if method.procedure == "ptq":
        from qexport.quant import rapq

        calib = x[:CALIBRATION_SAMPLES]
        if name == "rapq":
            model = rapq.rapq_calibrate(float_model, config, calib, seed=seed, log=log)
        else:
            model = rapq.rtn_calibrate(float_model, config, calib)
    elif method.procedure == "progressive":
        from qexport.quant import pqde

        stages = tuple(config.option("pqde_stages", [8, 6, config.weight_bits]))
        per_stage = max(1, epochs // len(stages))
        model = pqde.train_progressive(float_model, config, x, y, stages, per_stage, lr, seed, log=log)
        info["stages"] = list(stages)
    else:
        model = prepare_qat(float_model, config)
        calibrate(model, x[:CALIBRATION_SAMPLES])
        if method.procedure == "ddq":
            from qexport.quant import ddq

            budget = config.option("ddq_budget", None)
            kind = config.option("ddq_budget_kind", "size")
            target = config.option("ddq_target", "fpga")
            model = ddq.train_ddq(model, x, y, epochs, lr, seed, budget=budget, kind=kind, target=target, log=log)
            info["bit_widths"] = ddq.bit_widths(model)
        else:
            model = train(model, x, y, epochs, lr=lr, seed=seed, log=log)
    model.eval()
    info["seconds"] = round(time.perf_counter() - started, 1)
    return Trained(model, config, info)
