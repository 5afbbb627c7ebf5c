"""Differential campaign: the generators of tests/test_differential.py on many graphs, counting per check.

    python benchmarks/differential_campaign.py --graphs 2000 [--torch-nets 100] [--seed 0]
        [--out benchmarks/results/differential_campaign.md]

Checks per graph: hwsim in every mode and convolution path (and codebook style, where a codebook weight
is present) equal to the IR reference bit for bit on three feeds (batch 1, 3, 3) through one engine;
the ONNX export loads and runs in onnxruntime with default SessionOptions. Failures are listed with
the graph index and what differed; the script exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import subprocess
import sys
import time
from collections import Counter
from datetime import date
from pathlib import Path

import hypothesis
import numpy as np
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from differential import ORT_CHECK, hwsim_mismatches, ort_default_runs, random_feeds  # noqa: E402
from irgen import cnn_graphs  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "differential_campaign.md"
WEIGHT_METHODS = ("lsq", "pot", "post", "apot", "codebook")
BIT_LIMITS = {"pot": (3, 8), "post": (3, 6), "apot": (3, 7)}


class Tally:
    """Pass/fail counts per check, and the first failures' descriptions."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads
        self.passed: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.failures: list[str] = []
        self.graphs = 0

    def check(self, graph, index: str, seed: int) -> None:
        rng = np.random.default_rng(seed)
        feeds = [random_feeds(graph, rng, batch) for batch in (1, 3, 3, 3)]  # the last replays (hwsim.replay)
        results = hwsim_mismatches(graph, feeds, self.threads)
        try:
            ort_default_runs(graph, feeds[0])
            results[ORT_CHECK] = None
        except Exception as error:  # noqa: BLE001 - any failure to load or run counts
            results[ORT_CHECK] = f"{type(error).__name__}: {str(error)[:200]}"
        for name, why in results.items():
            if why is None:
                self.passed[name] += 1
            else:
                self.failed[name] += 1
                if len(self.failures) < 50:
                    self.failures.append(f"{index}: {name}: {why}")
        self.graphs += 1


def run_ir_graphs(tally: Tally, count: int, seed: int, advance) -> None:
    @settings(
        max_examples=count,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(graph=cnn_graphs(), feed_seed=st.integers(0, 2**32 - 1))
    def campaign(graph, feed_seed) -> None:
        tally.check(graph, f"ir graph {tally.graphs}", feed_seed)
        advance()

    hypothesis.seed(seed)(campaign)()  # reproducible draws for a given --seed


def run_torch_nets(tally: Tally, count: int, seed: int, advance) -> None:
    from modelgen import calibrated
    from test_random_networks import RandomNet, networks

    from qexport.errors import QExportError
    from qexport.frontend.lower import lower

    @settings(
        max_examples=count,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=networks(), weight_method=st.sampled_from(WEIGHT_METHODS), pow2=st.booleans())
    def campaign(case, weight_method, pow2) -> None:
        in_channels, blocks, config, classes, net_seed, size = case
        low, high = BIT_LIMITS.get(weight_method, (2, 8))
        bits = min(max(config.weight_bits, low), high)
        config = dataclasses.replace(config, weight_bits=bits, weight_method=weight_method, pow2_scales=pow2)
        shape = (in_channels, size, size)
        qat, _ = calibrated(RandomNet(in_channels, blocks, classes), config, shape, net_seed)
        try:
            graph = lower(qat, shape, "random")
        except QExportError:
            assume(False)
        tally.check(graph, f"torch net {tally.graphs} ({weight_method}, pow2={pow2})", net_seed)
        advance()

    hypothesis.seed(seed + 1)(campaign)()


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def table(tally: Tally, graphs: int, nets: int, seconds: float) -> str:
    import torch

    lines = [
        f"{graphs} random IR CNNs and {nets} lowered torch nets, {date.today().isoformat()}, {cpu_name()} "
        f"({torch.get_num_threads()} torch threads), torch {torch.__version__}, {seconds:.0f} s.",
        "",
        "| check | graphs | pass | fail |",
        "|---|---:|---:|---:|",
    ]
    for name in sorted(set(tally.passed) | set(tally.failed), key=lambda n: (n == ORT_CHECK, n)):
        total = tally.passed[name] + tally.failed[name]
        lines.append(f"| {name} | {total} | {tally.passed[name]} | {tally.failed[name]} |")
    if tally.failures:
        lines += ["", "Failures (first 50):", "", *(f"- {line}" for line in tally.failures)]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", type=int, default=2000, help="random IR CNNs (default 2000)")
    parser.add_argument("--torch-nets", type=int, default=100, help="lowered random torch nets (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="hwsim and torch threads (default 1: leave cores to others)"
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    tally = Tally(args.threads)
    start = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns) as progress:
        task = progress.add_task("IR CNNs", total=args.graphs)
        run_ir_graphs(tally, args.graphs, args.seed, lambda: progress.advance(task))
        if args.torch_nets:
            task = progress.add_task("torch nets", total=args.torch_nets)
            run_torch_nets(tally, args.torch_nets, args.seed, lambda: progress.advance(task))
    text = table(tally, args.graphs, args.torch_nets, time.perf_counter() - start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 1 if tally.failed else 0


if __name__ == "__main__":
    sys.exit(main())
