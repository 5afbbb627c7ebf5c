"""Speed-up of a qexport-dse sweep on 2 Dask workers over 1: the same trials, a fresh results table each run.

    python benchmarks/dse_speedup.py                              # docs/dse/space.toml, 6 trials, 1 and 2 workers
    python benchmarks/dse_speedup.py --trials-from digits_dse.sqlite --repeats 2

The trials are the first N of the space's quantization grid in a seeded order (or those recorded in a
results table), so every run does the same work. Each run starts a LocalCluster (start-up timed apart)
and times ``run_sweep`` from the first submit to the last row (imports and JIT warm-up in each worker
included, as a user sees it). Both runs must record identical objectives. Writes its section of
docs/dse.md (between the ``dse_speedup`` markers) and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import machine  # noqa: E402

from qexport.dse.evaluate import evaluate_trial  # noqa: E402
from qexport.dse.space import TrialConfig, load_space  # noqa: E402
from qexport.dse.store import ResultStore  # noqa: E402
from qexport.dse.sweep import dask_client, run_sweep  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "dse.md"
OBJECTIVES = ("status", "accuracy", "latency_ms", "energy_nj", "size_bytes", "lut")


def chosen_trials(space, count: int, trials_from: Path | None) -> list[TrialConfig]:
    if trials_from is not None:
        with sqlite3.connect(trials_from) as db:
            stored = [json.loads(text) for (text,) in db.execute("SELECT DISTINCT trial_config FROM points")]
        return [space.trial_config(space.params_of(config)) for config in stored if space.contains(config)]
    trials = space.all_trials()
    random.Random(space.seed).shuffle(trials)
    return trials[:count]


def worker_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def warm_up(space) -> None:
    """Imports, the float model, hwsim's JIT kernels: what every worker pays once before its first trial."""
    cheap = next(t for t in space.all_trials() if t.epochs == 0)
    evaluate_trial(cheap, list(space.hardware[:1]))


def timed_sweep(space, trials: list[TrialConfig], workers: int) -> dict:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch, dask_client(workers) as client:
        client.wait_for_workers(workers)
        startup = time.perf_counter() - started
        begun = time.perf_counter()
        client.run(warm_up, space)
        warm = time.perf_counter() - begun
        cpu_before = client.run(worker_cpu_seconds)
        with ResultStore(Path(scratch) / "results.sqlite") as store:
            begun = time.perf_counter()
            result = run_sweep(space, store, client, configs=trials)
            seconds = time.perf_counter() - begun
        cpu = sum(client.run(worker_cpu_seconds).values()) - sum(cpu_before.values())
    rows = {(r["trial_key"], r["hardware_key"]): tuple(r[k] for k in OBJECTIVES) for r in result.rows}
    return {"startup": startup, "warm": warm, "seconds": seconds, "cpu": cpu, "rows": rows}


def mean(values: list[dict]) -> float:
    return sum(run["seconds"] for run in values) / len(values)


def write_doc(body: str) -> None:
    text = DOC.read_text() if DOC.exists() else "# Design-space exploration\n"
    section = f"<!-- dse_speedup:start -->\n{body.rstrip()}\n<!-- dse_speedup:end -->"
    pattern = re.compile(r"<!-- dse_speedup:start -->.*?<!-- dse_speedup:end -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else f"{text.rstrip()}\n\n{section}\n"
    DOC.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", type=Path, default=ROOT / "docs" / "dse" / "space.toml")
    parser.add_argument("--trials", type=int, default=6, help="trials from the space's grid (seeded order)")
    parser.add_argument("--trials-from", type=Path, help="use the trials recorded in this results table")
    parser.add_argument("--repeats", type=int, default=1, help="runs per worker count (alternating 1, 2, 2, 1, ...)")
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/dse.md alone")
    args = parser.parse_args()
    space = load_space(args.space)
    trials = chosen_trials(space, args.trials, args.trials_from)
    points = len(trials) * len(space.hardware)
    order = [w for r in range(args.repeats) for w in ((1, 2) if r % 2 == 0 else (2, 1))]
    runs: dict[int, list[dict]] = {1: [], 2: []}
    history: list[tuple[int, dict]] = []
    reference = None
    load_before = os.getloadavg()
    for workers in order:
        run = timed_sweep(space, trials, workers)
        print(
            f"{workers} worker(s): start-up {run['startup']:.1f} s, warm-up {run['warm']:.1f} s, "
            f"sweep {run['seconds']:.1f} s, worker CPU {run['cpu']:.1f} s",
            flush=True,
        )
        if reference is None:
            reference = run["rows"]
        elif run["rows"] != reference:
            key = next(k for k in reference if run["rows"].get(k) != reference[k])
            raise SystemExit(
                f"the runs recorded different objectives ({OBJECTIVES}): {reference[key]} then {run['rows'].get(key)} "
                f"for {key}; non-deterministic trials, or the code changed between runs"
            )
        runs[workers].append(run)
        history.append((workers, run))
    best = {workers: min(values, key=lambda run: run["seconds"]) for workers, values in runs.items()}
    source = f"--trials-from {args.trials_from.name}" if args.trials_from else f"--trials {len(trials)}"
    lines = [
        f"Written by `python benchmarks/dse_speedup.py {source} --repeats {args.repeats}` on "
        f"`{args.space.resolve().relative_to(ROOT)}`: {len(trials)} quantization trials x {len(space.hardware)} "
        f"hardware points = {points} points per run, a fresh results table each run; every run recorded identical "
        "objectives. The sweep time starts after each worker has warmed up (imports, float model, hwsim's JIT "
        "kernels); worker CPU is the workers' user + system time during the sweep, and CPU / wall is how many "
        "cores the sweep actually got.",
        "",
        "| run | workers | start-up (s) | warm-up (s) | sweep wall (s) | worker CPU (s) | CPU / wall |",
        "|---|---|---|---|---|---|---|",
    ]
    for index, (workers, run) in enumerate(history, 1):
        lines.append(
            f"| {index} | {workers} | {run['startup']:.1f} | {run['warm']:.1f} | {run['seconds']:.1f} | "
            f"{run['cpu']:.1f} | {run['cpu'] / run['seconds']:.2f} |"
        )
    lines += [
        "",
        f"**Speed-up of 2 workers over 1: {best[1]['seconds'] / best[2]['seconds']:.2f}x** (best sweep wall of each: "
        f"{best[1]['seconds']:.1f} s vs {best[2]['seconds']:.1f} s); ratio of the mean sweep walls "
        f"{mean(runs[1]) / mean(runs[2]):.2f}x.",
    ]
    lines += [
        "",
        "Trials: " + ", ".join(f"`{t.label}`" for t in trials) + ".",
        "",
        f"Machine: {machine()}; load average {load_before[0]:.1f} before the runs, {os.getloadavg()[0]:.1f} after.",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_doc:
        write_doc(body)


if __name__ == "__main__":
    main()
