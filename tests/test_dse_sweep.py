"""Sweeps on a LocalCluster of 2 worker processes: the front against brute force, a worker killed
mid-sweep, resuming from the results table, and the CLI's outputs."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import torch
from cli_runner import invoke

from qexport.checkpoint import load_checkpoint
from qexport.dse.cli import app
from qexport.dse.evaluate import evaluate_trial
from qexport.dse.pareto import front_reference
from qexport.dse.results import OBJECTIVE_NAMES, flatten, objectives_of, pareto_rows
from qexport.dse.space import load_space
from qexport.dse.store import ResultStore
from qexport.dse.sweep import dask_client, run_sweep

ROOT = Path(__file__).resolve().parents[1]
SPACE = f"""
seed = 1
float_weights = "{ROOT / "models" / "digits_cnn_float.safetensors"}"
[quantization]
sampler = "nsga2"
population = 2
epochs = 1
train_samples = 128
method = ["rtn", "pot"]     # pot needs >= 3 bits: its W2 trial fails and is recorded
weight_bits = [2, 4]
[hardware]
target = ["fpga", "arm"]
array = ["8x8", "16x16"]
dataflow = ["ws", "os"]
"""
TRIALS, POINTS = 4, 5
OBJECTIVES = ("accuracy", "fake_quant_accuracy", "latency_ms", "cycles", "energy_nj", "size_bytes")


@pytest.fixture(scope="module")
def client():
    with dask_client(workers=2) as client:
        yield client


@pytest.fixture(scope="module")
def space_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("space") / "space.toml"
    path.write_text(SPACE)
    return path


@pytest.fixture(scope="module")
def swept(client, space_file: Path, tmp_path_factory: pytest.TempPathFactory):
    """One sweep of the small space: (space, results db, SweepResult)."""
    db = tmp_path_factory.mktemp("sweep") / "results.sqlite"
    space = load_space(space_file)
    with ResultStore(db) as store:
        result = run_sweep(space, store, client, retries=1)
    return space, db, result


def by_point(rows: list[dict]) -> dict[tuple[str, str], dict]:
    return {(row["trial_key"], row["hardware_key"]): row for row in rows}


def test_front_matches_brute_force(swept, client) -> None:
    space, _, result = swept
    assert len(client.nthreads()) == 2
    assert (result.trials, result.evaluated, result.resumed) == (TRIALS, TRIALS, 0)
    assert len(result.rows) == TRIALS * POINTS
    assert {row["worker"].rsplit(":", 1)[1] for row in result.rows}.isdisjoint({str(os.getpid())})
    threads = torch.get_num_threads()
    try:  # the same trials in this process, one by one
        brute = {}
        for config in space.all_trials():
            evaluated = evaluate_trial(config, list(space.hardware))
            for point in evaluated["points"]:
                brute[(config.key, point["hardware_key"])] = {**evaluated, **point}
    finally:
        torch.set_num_threads(threads)
    swept_rows = by_point(result.rows)
    assert swept_rows.keys() == brute.keys()
    for key, row in swept_rows.items():
        assert row["status"] == brute[key]["status"]
        if row["status"] == "ok":
            assert {name: row[name] for name in OBJECTIVES} == {name: brute[key][name] for name in OBJECTIVES}
        else:
            assert row["error"] == brute[key]["error"] and "pot weights need weight_bits >= 3" in row["error"]
    assert sum(row["status"] == "failed" for row in result.rows) == POINTS  # the pot W2 trial
    ok_keys = sorted(key for key, row in brute.items() if row["status"] == "ok")
    matrix = [
        [-brute[k]["accuracy"], brute[k]["latency_ms"], brute[k]["energy_nj"], brute[k]["size_bytes"]] for k in ok_keys
    ]
    expected = {ok_keys[i] for i in front_reference(matrix)}
    ok, on_front = pareto_rows(result.rows)
    assert {(ok[i]["trial_key"], ok[i]["hardware_key"]) for i in on_front} == expected
    assert 0 < len(expected) < len(ok_keys)


def test_rtl_resources_join_the_front_when_every_point_has_them(swept) -> None:
    _, _, result = swept
    ok_rows = [row for row in result.rows if row["status"] == "ok"]
    systolic = [row for row in ok_rows if json.loads(row["hardware_config"])["model"] == "systolic"]
    assert all(row["lut"] > 0 and row["ff"] > 0 for row in systolic)
    assert all(row["lut"] is None for row in ok_rows if row not in systolic)  # a CPU has no LUTs
    assert objectives_of([flatten(row) for row in ok_rows]) == OBJECTIVE_NAMES
    names = (*OBJECTIVE_NAMES, "lut")
    ok, on_front = pareto_rows(systolic)
    assert objectives_of(ok) == names
    matrix = [[-row["accuracy"], *(row[name] for name in names[1:])] for row in ok]
    assert on_front == set(front_reference(matrix))
    sizes = {
        json.loads(row["hardware_config"])["array"]: row["lut"]
        for row in systolic
        if row["trial_key"] == ok[0]["trial_key"]
    }
    assert sizes["16x16"] == 4 * sizes["8x8"]  # PEs scale with the array


def crash_second_call(config, points, calls: str):
    """Kill the worker process on the second trial it is asked for (once): a worker dies mid-sweep."""
    index = 1
    while True:
        try:
            os.close(os.open(os.path.join(calls, f"call-{index}"), os.O_CREAT | os.O_EXCL))
            break
        except FileExistsError:
            index += 1
    if index == 2:
        os._exit(1)
    return evaluate_trial(config, points)


def test_a_killed_worker_does_not_lose_points(client, space_file: Path, tmp_path: Path, swept) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()
    pids = set(client.run(os.getpid).values())
    space = replace(load_space(space_file), sampler="grid")  # the grid sampler's path, same trials
    with ResultStore(tmp_path / "results.sqlite") as store:
        result = run_sweep(space, store, client, evaluate=partial(crash_second_call, calls=str(calls)), retries=2)
    assert (calls / "call-2").exists()  # the worker did die: nothing runs past os._exit
    assert len(list(calls.iterdir())) == TRIALS + 1  # the killed trial ran again elsewhere
    client.wait_for_workers(2, timeout=60)
    assert set(client.run(os.getpid).values()) != pids  # the nanny restarted the dead worker
    assert len(result.rows) == TRIALS * POINTS and result.evaluated == TRIALS
    reference = by_point(swept[2].rows)
    for key, row in by_point(result.rows).items():
        assert row["status"] == reference[key]["status"]
        assert {name: row[name] for name in OBJECTIVES} == {name: reference[key][name] for name in OBJECTIVES}


def test_rerun_resumes_from_the_table(swept, client, tmp_path: Path) -> None:
    space, db, first = swept
    copy = tmp_path / "copy.sqlite"
    shutil.copy(db, copy)
    with ResultStore(copy) as store:
        again = run_sweep(space, store, client)
    assert (again.evaluated, again.resumed, again.trials) == (0, TRIALS, TRIALS)
    assert by_point(again.rows).keys() == by_point(first.rows).keys()
    ok_trials = sorted({row["trial_key"] for row in first.rows if row["status"] == "ok"})
    with sqlite3.connect(copy) as db_handle:  # lose one whole trial and one point of another
        db_handle.execute("DELETE FROM points WHERE trial_key = ?", (ok_trials[0],))
        hw_key = next(row["hardware_key"] for row in first.rows if row["trial_key"] == ok_trials[1])
        db_handle.execute("DELETE FROM points WHERE trial_key = ? AND hardware_key = ?", (ok_trials[1], hw_key))
    with ResultStore(copy) as store:
        resumed = run_sweep(space, store, client)
        assert (resumed.evaluated, resumed.resumed) == (2, TRIALS - 2)
        assert len(store.rows()) == TRIALS * POINTS
        with ResultStore(copy) as other:
            retried = run_sweep(space, other, client, retry_failed=True)
    assert retried.evaluated == 1  # the failed pot W2 trial, run again
    reference = by_point(first.rows)
    for key, row in by_point(resumed.rows).items():
        assert {name: row[name] for name in OBJECTIVES} == {name: reference[key][name] for name in OBJECTIVES}


def test_cli_writes_front_plots_best_checkpoint_and_export(swept, client, space_file: Path, tmp_path: Path) -> None:
    _, db, first = swept
    copy = tmp_path / "results.sqlite"
    shutil.copy(db, copy)
    out = tmp_path / "out"
    args = (space_file, "-o", out, "--db", copy, "--scheduler", client.scheduler.address)
    result = invoke(app, *args)
    assert result.exit_code == 0, result.output
    assert "Pareto front" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["points"] == TRIALS * POINTS and report["evaluated"] == 0
    front_lines = (out / "front.csv").read_text().strip().splitlines()
    assert len(front_lines) == 1 + report["front_points"]
    assert len((out / "points.csv").read_text().strip().splitlines()) == 1 + TRIALS * POINTS
    for name in ("accuracy_vs_energy.png", "accuracy_vs_latency.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checkpoint = load_checkpoint(out / "best" / "best.ckpt")
    assert checkpoint.info["integer_accuracy"] == report["best"]["accuracy"]
    assert checkpoint.config.weight_bits == report["best"]["trial_config"]["weight_bits"]
    assert (out / "best" / "export" / "model.onnx").is_file() and (
        out / "best" / "export" / "layer_spec.json"
    ).is_file()
    assert set(report["files"]) >= {"front.csv", "best/best.ckpt", "best/export/model.onnx"}
    again = invoke(app, *args)
    assert again.exit_code == 2 and "--force" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    (out / "notes.txt").write_text("mine")
    forced = invoke(app, *args, "--force", "--no-best")
    assert forced.exit_code == 0, forced.output
    assert (out / "notes.txt").read_text() == "mine" and copy.is_file()
    assert (out / "best" / "README.txt").is_file() and not (out / "best" / "best.ckpt").exists()
    with ResultStore(copy) as store:
        assert len(store.rows()) == TRIALS * POINTS
    assert invoke(app, *args, "--force").exit_code == 0  # replaces its own best/ again
    assert (out / "best" / "best.ckpt").is_file() and not (out / "best" / "README.txt").exists()
