"""``qexport-train METHOD``: quantize the digits CNN with one of the implemented methods.

qexport-train post -o digits_post.ckpt            # trains the float model first (seeded)
qexport-train rapq --float models/digits_cnn_float.safetensors --weight-bits 2
qexport-train --list
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.table import Table

from qexport.checkpoint import checkpoint_from_model, load_float_weights, save_checkpoint, save_float_weights
from qexport.cli_support import EXIT_BAD_INPUT, entry_point
from qexport.data import digits_split
from qexport.errors import QExportError
from qexport.methods import METHODS, get_method, method_config, run_method
from qexport.outputs import check_output_file, staged_files
from qexport.quant.config import QuantConfig
from qexport.training import accuracy, seed_everything, train
from qexport.zoo import build

app = typer.Typer(name="qexport-train", add_completion=False, pretty_exceptions_enable=False)
console = Console(stderr=True)
ARCHITECTURE = "digits_cnn"  # the one real data set available offline is scikit-learn's digits
FLOAT_EPOCHS, FLOAT_LR, FLOAT_SEED = 40, 1e-2, 0


def train_float(log=None) -> tuple[torch.nn.Module, float]:
    """The float digits CNN every method starts from (deterministic)."""
    seed_everything(FLOAT_SEED)
    x_train, y_train, x_test, y_test = digits_split()
    model = train(build(ARCHITECTURE), x_train, y_train, FLOAT_EPOCHS, lr=FLOAT_LR, seed=FLOAT_SEED, log=log)
    return model, accuracy(model, x_test, y_test)


def parse_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise QExportError(f"--option {pair!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def methods_table() -> Table:
    table = Table(title="quantization methods")
    for column in ("method", "weights", "activations", "procedure", "what"):
        table.add_column(column)
    for method in METHODS.values():
        table.add_row(method.name, method.weight_method, method.act_method, method.procedure, method.summary)
    return table


@app.command()
def main(
    method: Annotated[str | None, typer.Argument(help="method name (see --list)")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="checkpoint to write")] = None,
    float_weights: Annotated[
        Path | None, typer.Option("--float", help="start from these float weights (safetensors)")
    ] = None,
    save_float: Annotated[Path | None, typer.Option(help="also save the float weights trained here")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace output files that already exist")] = False,
    weight_bits: Annotated[int, typer.Option(help="weight bits of the middle layers")] = 4,
    act_bits: Annotated[int, typer.Option(help="activation bits")] = 4,
    first_bits: Annotated[int, typer.Option(help="weight bits of the first layer")] = 8,
    last_bits: Annotated[int, typer.Option(help="weight bits of the last layer")] = 8,
    free_scales: Annotated[bool, typer.Option(help="learn unconstrained (not power-of-two) scales")] = False,
    epochs: Annotated[int, typer.Option(min=0, max=100_000, help="training epochs (ignored by PTQ methods)")] = 40,
    lr: Annotated[float, typer.Option(help="learning rate (finite, > 0)")] = 2e-3,
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="training seed")] = 1,
    option: Annotated[list[str] | None, typer.Option(help="method option KEY=VALUE (JSON value), repeatable")] = None,
    list_methods: Annotated[bool, typer.Option("--list", help="list the methods and exit")] = False,
) -> None:
    """Quantize the digits CNN with METHOD and save a checkpoint that `qexport` lowers and verifies."""
    if list_methods or method is None:
        Console().print(methods_table())
        if method is None and not list_methods:
            raise typer.Exit(EXIT_BAD_INPUT)
        return
    get_method(method)
    if not (math.isfinite(lr) and lr > 0):
        raise QExportError(f"--lr {lr}: expected a finite learning rate > 0")
    base = QuantConfig(
        weight_bits=weight_bits,
        act_bits=act_bits,
        first_bits=first_bits,
        last_bits=last_bits,
        pow2_scales=not free_scales,
    )
    options = parse_options(option or [])
    method_config(method, base, options)  # refuses unknown or ill-typed options before any training
    target = output or Path(f"digits_cnn_w{weight_bits}a{act_bits}_{method}.ckpt")
    check_output_file(target, force, "--output")
    if save_float is not None:
        check_output_file(save_float, force, "--save-float")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    log = console.print
    if float_weights is not None:
        float_model, architecture, float_info = load_float_weights(float_weights)
        if architecture != ARCHITECTURE:
            raise QExportError(f"{float_weights}: architecture {architecture!r}, expected {ARCHITECTURE!r}")
        float_accuracy = float_info.get("float_accuracy")
    else:
        console.print("training the float model (seeded)")
        float_model, float_accuracy = train_float(log)
    seed_everything(seed)
    x_train, y_train, x_test, y_test = digits_split()
    trained = run_method(method, float_model, base, (x_train, y_train), epochs, lr, seed, options, log)
    qat_accuracy = accuracy(trained.model, x_test, y_test)
    info = {
        "dataset": "digits",
        "float_accuracy": float_accuracy,
        "qat_accuracy": qat_accuracy,
        **trained.info,
        "trained_by": "qexport-train",
    }
    checkpoint = checkpoint_from_model(trained.model, ARCHITECTURE, {}, trained.config, **info)
    with staged_files() as staged:
        save_checkpoint(staged.path_for(target), checkpoint)
        if save_float is not None and float_weights is None:
            save_float_weights(
                staged.path_for(save_float), float_model, ARCHITECTURE, {}, float_accuracy=float_accuracy
            )
    console.print(json.dumps({"checkpoint": str(target), **info}), highlight=False, markup=False, soft_wrap=True)


run = entry_point(app)
