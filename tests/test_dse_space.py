"""SPACE.toml parsing: the hardware grid, normalised trials, and one-line errors naming every bad field."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from cli_runner import invoke
from optuna.distributions import CategoricalDistribution

from qexport.dse.cli import app
from qexport.dse.space import load_space
from qexport.dse.sweep import DIRECTIONS, make_sampler

ROOT = Path(__file__).resolve().parents[1]
FLOAT = ROOT / "models" / "digits_cnn_float.safetensors"
GOOD = f"""
float_weights = "{FLOAT}"
[quantization]
method = ["rtn", "post"]
weight_bits = [2, 4]
post_mac = ["lut", "split"]
[hardware]
target = ["fpga", "arm"]
array = ["8x8", "16x16"]
dataflow = ["ws", "os", "is"]
clock_mhz = [100.0, 200.0]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


def test_grid_applies_array_axes_to_systolic_targets_only(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, GOOD))
    fpga = [p for p in space.hardware if p.target == "fpga"]
    arm = [p for p in space.hardware if p.target == "arm"]
    assert len(fpga) == 2 * 3 * 2 and len(arm) == 2
    assert {p.array for p in arm} == {None} and {p.clock_mhz for p in arm} == {100.0, 200.0}
    assert len({p.key for p in space.hardware}) == len(space.hardware)


def test_choices_that_do_not_matter_are_merged(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, GOOD))
    trials = space.all_trials()
    # post_mac matters for POST weights only; rtn is PTQ (no epochs)
    assert len(trials) == 2 + 2 * 2 and space.trials == len(trials)
    assert {t.post_mac for t in trials if t.method == "rtn"} == {None}
    assert {t.epochs for t in trials if t.method == "rtn"} == {0}
    assert all(space.contains(t.to_dict()) for t in trials)
    assert not space.contains({**trials[0].to_dict(), "seed": 99})


def test_the_example_space_parses() -> None:
    space = load_space(ROOT / "docs" / "dse" / "space.toml")
    assert space.trials * len(space.hardware) >= 100


BAD = [
    (
        "[quantization]\nmethod = ['rtn']\ntrials = 0\n[hardware]\ntarget = ['fpga']\narray = ['16']\n",
        ["field hardware.array.0", "field quantization.trials"],
    ),
    (
        "[quantization]\nmethod = ['rtn', 'nosuch']\n[hardware]\ntarget = ['fpga', 'nosuch']\n",
        ["field quantization.method.1", "unknown method 'nosuch'", "field hardware.target.1", "unknown target"],
    ),
    (
        "[quantization]\nmethod = ['rtn']\nweight_bits = [9]\n[hardware]\ntarget = ['fpga']\ndataflow = ['xy']\n",
        ["field quantization.weight_bits.0", "field hardware.dataflow.0"],
    ),
    ("colour = 1\n[quantization]\nmethod = ['rtn']\n[hardware]\ntarget = ['fpga']\n", ["'colour' was unexpected"]),
    ("[quantization]\nmethod = ['rtn']\n", ["'hardware' is a required property"]),
    (
        "[quantization]\nmethod = ['rtn']\nsampler = 'random'\n[hardware]\ntarget = ['fpga']\n",
        ["field quantization.sampler"],
    ),
    (
        "[quantization]\nmethod = ['rtn']\n[hardware]\ntarget = ['fpga']\nclock_mhz = [nan]\n",
        ["field hardware.clock_mhz.0"],
    ),
    (
        "float_weights = 'missing.safetensors'\n[quantization]\nmethod = ['rtn']\n[hardware]\ntarget = ['fpga']\n",
        ["field float_weights", "no such file"],
    ),
    (
        "[quantization]\nmethod = ['rtn']\n[select]\nminimize = 'cost'\n[hardware]\ntarget = ['fpga']\n",
        ["field select.minimize"],
    ),
    ("[quantization\nmethod = ['rtn']\n", ["invalid TOML"]),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_bad_space_is_one_line_exit_2(tmp_path: Path, text: str, expected: list[str]) -> None:
    result = invoke(app, write(tmp_path, text), "-o", tmp_path / "out", "--db", tmp_path / "r.sqlite")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "space.toml" in lines[0], result.output
    for fragment in expected:
        assert fragment in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "r.sqlite").exists()


def test_missing_space_file_and_bad_options(tmp_path: Path) -> None:
    result = invoke(app, tmp_path / "none.toml")
    assert result.exit_code == 2 and "no such space file" in result.stderr
    space = write(tmp_path, GOOD)
    result = invoke(app, space, "--scheduler", "localhost:8786", "-o", tmp_path / "o", "--db", tmp_path / "r.sqlite")
    assert result.exit_code == 2 and "--scheduler" in result.stderr
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "mine.txt").write_text("keep")
    result = invoke(app, space, "-o", tmp_path / "o", "--db", tmp_path / "r.sqlite")
    assert result.exit_code == 2 and "--force" in result.stderr
    result = invoke(app, space, "-o", tmp_path / "p", "--db", tmp_path)
    assert result.exit_code == 2 and "--db" in result.stderr
    (tmp_path / "notes.sqlite").write_text("not a database, " * 100)
    result = invoke(app, space, "-o", tmp_path / "p", "--db", tmp_path / "notes.sqlite")
    assert result.exit_code == 2 and "cannot use as the results database" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "p").exists()


@pytest.mark.parametrize("sampler", ["grid", "nsga2", "tpe"])
def test_samplers_ask_and_tell_past_the_end_of_the_grid(tmp_path: Path, sampler: str) -> None:
    space = replace(load_space(write(tmp_path, GOOD)), sampler=sampler)
    study = optuna.create_study(directions=list(DIRECTIONS), sampler=make_sampler(space))
    distributions = {axis: CategoricalDistribution(list(values)) for axis, values in space.axes.items()}
    seen = set()
    for _ in range(3 * len(space.all_trials())):
        trial = study.ask(distributions)
        seen.add(space.trial_config(trial.params).key)
        study.tell(trial, [0.5, 1.0, 1.0, 1.0])
    assert seen <= {config.key for config in space.all_trials()}
    if sampler == "grid":
        assert len(seen) == len(space.all_trials())
