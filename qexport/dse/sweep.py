"""The sweep: Optuna (multi-objective) proposes quantization trials, Dask runs them, SQLite keeps the rows.

Each trial is one Dask task that quantizes once and estimates every hardware point of the grid (the
estimate takes milliseconds), so the heavy work stays in the workers. The client asks Optuna for a
trial whenever a worker slot is free, records the rows of every finished trial at once and tells Optuna
the trial's objectives: accuracy, and the best latency, energy and model size over its hardware points.
Points already in the results table are skipped; a trial whose every point is stored is replayed into
the study without running, so a rerun resumes. Worker deaths are absorbed by Dask (the task moves to
another worker; ``retries`` re-runs a task that raised); a trial that still fails is recorded as failed.
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from qexport.dse.evaluate import evaluate_trial
from qexport.dse.space import HardwarePoint, Space, TrialConfig
from qexport.dse.store import ResultStore
from qexport.errors import QExportError

DIRECTIONS = ("maximize", "minimize", "minimize", "minimize")
TRIAL_OBJECTIVES = ("accuracy", "latency_ms", "energy_nj", "size_bytes")
REPEATS_BEFORE_FILL = 20  # sampler proposals of finished trials in a row before an unseen trial is enqueued
Progress = Callable[[int, int, str], None]  # (finished trials, total, label of the last one)


@dataclass
class SweepResult:
    rows: list[dict[str, Any]]  # every stored row of this space's trials and hardware points
    trials: int  # distinct quantization trials in the space's results
    evaluated: int  # trials run by this call
    resumed: int  # trials taken from the results table without running
    study: optuna.Study = field(repr=False, default=None)


class AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler for ask-and-tell: it calls ``Study.stop`` once the grid is done, which raises
    outside ``Study.optimize``; here the sweep decides when to stop."""

    def after_trial(self, study, trial, state, values) -> None:  # noqa: ANN001 - Optuna's signature
        pass


def make_sampler(space: Space) -> optuna.samplers.BaseSampler:
    if space.sampler == "grid":
        return AskTellGridSampler({axis: list(values) for axis, values in space.axes.items()}, seed=space.seed)
    if space.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=space.seed)
    return optuna.samplers.NSGAIISampler(population_size=space.population, seed=space.seed)


def trial_values(rows: list[dict[str, Any]]) -> list[float] | None:
    """What Optuna is told for one trial: accuracy, min latency, min energy, size (None if nothing ran)."""
    ok = [row for row in rows if row["status"] == "ok"]
    if not ok:
        return None
    return [
        float(ok[0]["accuracy"]),
        min(row["latency_ms"] for row in ok),
        min(row["energy_nj"] for row in ok),
        float(ok[0]["size_bytes"]),
    ]


def failed_result(config: TrialConfig, points: list[HardwarePoint], error: BaseException) -> dict[str, Any]:
    text = f"{type(error).__name__}: {error}"
    return {
        "trial_key": config.key,
        "status": "failed",
        "error": text,
        "worker": None,
        "points": [{"hardware_key": p.key, "status": "failed", "error": text} for p in points],
    }


@contextmanager
def dask_client(workers: int = 2, scheduler: str | None = None) -> Iterator[Any]:
    """A client of ``scheduler`` (tcp://host:port), or of a new LocalCluster of ``workers`` processes."""
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=10)
        except (OSError, TimeoutError, ValueError) as error:
            raise QExportError(f"--scheduler {scheduler}: cannot connect ({error})") from None
        with client:
            yield client
        return
    single = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=40,
            env=single,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


class _Sweep:
    """The bookkeeping of one ``run_sweep`` call."""

    def __init__(self, space: Space, store: ResultStore, retry_failed: bool) -> None:
        self.space = space
        self.store = store
        self.hardware = {point.key: point for point in space.hardware}
        self.distributions = {axis: CategoricalDistribution(list(values)) for axis, values in space.axes.items()}
        self.done = store.done(retry_failed)
        self.by_trial: dict[str, list[dict[str, Any]]] = {}
        self.configs: dict[str, dict[str, Any]] = {}
        for row in store.rows():
            config = json.loads(row["trial_config"])
            if row["hardware_key"] in self.hardware and space.contains(config):
                self.by_trial.setdefault(row["trial_key"], []).append(row)
                self.configs[row["trial_key"]] = config

    def missing(self, config: TrialConfig) -> list[HardwarePoint]:
        return [point for point in self.space.hardware if (config.key, point.key) not in self.done]

    def record(self, config: TrialConfig, result: dict[str, Any]) -> None:
        hardware = {key: point.to_dict() for key, point in self.hardware.items()}
        self.store.record(result, config.to_dict(), hardware)
        rows = {row["hardware_key"]: row for row in self.by_trial.get(config.key, [])}
        for point in result["points"]:
            rows[point["hardware_key"]] = {
                **{key: result.get(key) for key in ("accuracy", "fake_quant_accuracy", "size_bytes")},
                **point,
            }
            self.done.add((config.key, point["hardware_key"]))
        self.by_trial[config.key] = list(rows.values())
        self.configs[config.key] = config.to_dict()

    def tell(self, study: optuna.Study, trial: optuna.Trial, key: str) -> None:
        values = trial_values(self.by_trial.get(key, []))
        if values is None:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, values)


def run_sweep(
    space: Space,
    store: ResultStore,
    client: Any,
    evaluate: Callable[[TrialConfig, list[HardwarePoint]], dict[str, Any]] = evaluate_trial,
    retries: int = 3,
    retry_failed: bool = False,
    progress: Progress | None = None,
    configs: list[TrialConfig] | None = None,
) -> SweepResult:
    """Run ``space.trials`` distinct quantization trials (resuming from ``store``) on the Dask ``client``.

    ``configs`` replaces the sampler's choice by exactly these trials (e.g. to time the same sweep twice).
    """
    from distributed import as_completed

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    sweep = _Sweep(space, store, retry_failed)
    study = optuna.create_study(directions=list(DIRECTIONS), sampler=make_sampler(space))
    chosen = None if configs is None else {config.key: config for config in configs}
    completed: set[str] = set()
    for key, config in sweep.configs.items():
        if chosen is not None and key not in chosen:
            continue
        params = space.params_of(config)
        if sweep.missing(space.trial_config(params)):
            study.enqueue_trial(params)  # partly stored: run its missing points first
            continue
        values = trial_values(sweep.by_trial[key])
        state = TrialState.COMPLETE if values is not None else TrialState.FAIL
        study.add_trial(create_trial(params=params, distributions=sweep.distributions, values=values, state=state))
        completed.add(key)
    resumed = len(completed)
    total = space.trials if chosen is None else len(chosen)
    for key, config in (chosen or {}).items():
        if key not in sweep.configs:
            study.enqueue_trial(space.params_of(config.to_dict()))
    unseen = [config for config in space.all_trials() if config.key not in completed]
    random.Random(space.seed).shuffle(unseen)
    slots = max(1, sum(client.nthreads().values())) + 1  # one queued task per worker keeps them busy
    inflight: dict[Any, tuple[optuna.Trial, TrialConfig, list[HardwarePoint]]] = {}
    waiting: dict[str, list[optuna.Trial]] = {}  # proposals of a trial that is running
    finished = as_completed()
    evaluated = repeats = 0
    if progress:
        progress(len(completed), total, "resumed")
    while True:
        while len(completed) + len(inflight) < total and len(inflight) < slots:
            trial = study.ask(sweep.distributions)
            config = space.trial_config(trial.params)
            running = {c.key for _, c, _ in inflight.values()}
            if config.key in completed or config.key in running:
                if config.key in completed:
                    sweep.tell(study, trial, config.key)
                else:
                    waiting.setdefault(config.key, []).append(trial)
                repeats += 1
                if repeats >= REPEATS_BEFORE_FILL:
                    fill = next((c for c in unseen if c.key not in completed and c.key not in running), None)
                    if fill is None:
                        break
                    study.enqueue_trial(space.params_of(fill.to_dict()))
                    repeats = 0
                continue
            repeats = 0
            missing = sweep.missing(config)
            if not missing:
                completed.add(config.key)
                sweep.tell(study, trial, config.key)
                continue
            future = client.submit(evaluate, config, missing, retries=retries, pure=False)
            inflight[future] = (trial, config, missing)
            finished.add(future)
        if not inflight:
            break
        future = next(finished)
        trial, config, missing = inflight.pop(future)
        try:
            result = future.result()
        except Exception as error:  # noqa: BLE001 - e.g. KilledWorker after every retry: recorded, not fatal
            result = failed_result(config, missing, error)
        sweep.record(config, result)
        completed.add(config.key)
        evaluated += 1
        for proposal in [trial, *waiting.pop(config.key, [])]:
            sweep.tell(study, proposal, config.key)
        if progress:
            progress(len(completed), total, config.label)
    rows = [row for row in store.rows() if row["trial_key"] in completed and row["hardware_key"] in sweep.hardware]
    return SweepResult(rows, len(completed), evaluated, resumed, study)
