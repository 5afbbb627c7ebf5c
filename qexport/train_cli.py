"""``qexport-train METHOD``: quantize the digits CNN with one of the implemented methods.

    qexport-train post -o digits_post.ckpt            # trains the float model first (seeded)
    qexport-train rapq --float models/digits_cnn_float.safetensors --weight-bits 2
    qexport-train --list
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.table import Table

from qexport.checkpoint import checkpoint_from_model, load_float_weights, save_checkpoint, save_float_weights
from qexport.data import digits_split
from qexport.errors import QExportError
from qexport.methods import METHODS, get_method, run_method
from qexport.quant.config import QuantConfig
from qexport.training import accuracy, seed_everything, train
from qexport.zoo import build

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
console = Console(stderr=True)
EXIT_BAD_INPUT = 2
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


def write_atomically(path: Path, write) -> None:
    """Write through a temporary file in the same directory, then rename (no half-written output)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


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
    weight_bits: Annotated[int, typer.Option(help="weight bits of the middle layers")] = 4,
    act_bits: Annotated[int, typer.Option(help="activation bits")] = 4,
    first_bits: Annotated[int, typer.Option(help="weight bits of the first layer")] = 8,
    last_bits: Annotated[int, typer.Option(help="weight bits of the last layer")] = 8,
    free_scales: Annotated[bool, typer.Option(help="learn unconstrained (not power-of-two) scales")] = False,
    epochs: Annotated[int, typer.Option(help="training epochs (ignored by PTQ methods)")] = 40,
    lr: Annotated[float, typer.Option(help="learning rate")] = 2e-3,
    seed: Annotated[int, typer.Option(help="training seed")] = 1,
    option: Annotated[list[str] | None, typer.Option(help="method option KEY=VALUE (JSON value), repeatable")] = None,
    list_methods: Annotated[bool, typer.Option("--list", help="list the methods and exit")] = False,
) -> None:
    """Quantize the digits CNN with METHOD and save a checkpoint that `qexport` lowers and verifies."""
    if list_methods or method is None:
        Console().print(methods_table())
        if method is None and not list_methods:
            raise typer.Exit(EXIT_BAD_INPUT)
        return
    try:
        get_method(method)
        base = QuantConfig(
            weight_bits=weight_bits,
            act_bits=act_bits,
            first_bits=first_bits,
            last_bits=last_bits,
            pow2_scales=not free_scales,
        )
        options = parse_options(option or [])
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
            if save_float is not None:
                write_atomically(
                    save_float,
                    lambda p: save_float_weights(p, float_model, ARCHITECTURE, {}, float_accuracy=float_accuracy),
                )
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
        target = output or Path(f"digits_cnn_w{weight_bits}a{act_bits}_{method}.ckpt")
        checkpoint = checkpoint_from_model(trained.model, ARCHITECTURE, {}, trained.config, **info)
        write_atomically(target, lambda p: save_checkpoint(p, checkpoint))
    except QExportError as error:
        console.print(f"error: {error}", style="red", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    console.print(json.dumps({"checkpoint": str(target), **info}), highlight=False, markup=False, soft_wrap=True)
