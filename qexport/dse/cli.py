"""``qexport-dse SPACE.toml``: sweep quantization x hardware on Dask, write the Pareto front, plots and best point.

qexport-dse docs/dse/space.toml                         # LocalCluster of 2 worker processes
qexport-dse space.toml --workers 4 -o out/ --db out.sqlite
qexport-dse space.toml --scheduler tcp://10.0.0.5:8786  # an existing Dask cluster
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from qexport.cli_support import entry_point
from qexport.dse.evaluate import checkpoint_bytes
from qexport.dse.results import front_table, write_outputs
from qexport.dse.space import load_space
from qexport.dse.store import ResultStore
from qexport.dse.sweep import dask_client, run_sweep
from qexport.errors import QExportError
from qexport.outputs import check_export_directory

app = typer.Typer(name="qexport-dse", add_completion=False, pretty_exceptions_enable=False)
console = Console()


def default_paths(space_file: Path) -> tuple[Path, Path]:
    """``<stem>_dse/`` and ``<stem>_dse.sqlite`` in the current directory."""
    stem = space_file.stem
    return Path(f"{stem}_dse"), Path(f"{stem}_dse.sqlite")


def check_db(path: Path) -> None:
    if path.is_dir():
        raise QExportError(f"{path}: --db names a directory, expected a file")
    if not path.parent.is_dir():
        raise QExportError(f"{path}: --db: directory {path.parent} does not exist")


@app.command()
def main(
    space_file: Annotated[Path, typer.Argument(metavar="SPACE.toml", help="the design space (docs/dse.md)")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="output directory (default <stem>_dse/)")
    ] = None,
    db: Annotated[
        Path | None, typer.Option(help="SQLite results table, resumed on rerun (default <stem>_dse.sqlite)")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, max=256, help="worker processes of the LocalCluster")] = 2,
    scheduler: Annotated[str | None, typer.Option(help="use an existing Dask scheduler, tcp://host:port")] = None,
    retries: Annotated[int, typer.Option(min=0, max=100, help="Dask retries of a task that raised")] = 3,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="re-run points recorded as failed")] = False,
    no_best: Annotated[bool, typer.Option("--no-best", help="skip the best point's checkpoint and export")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="replace files a previous qexport-dse wrote in OUTPUT")
    ] = False,
) -> None:
    """Sweep SPACE.toml: Optuna over the quantization axes, every hardware point, objectives into --db."""
    space = load_space(space_file)
    default_out, default_db = default_paths(space_file)
    output, db = output or default_out, db or default_db
    check_export_directory(output, force)
    check_db(db)
    if scheduler is not None and not scheduler.startswith(("tcp://", "tls://", "inproc://", "ucx://")):
        raise QExportError(f"--scheduler {scheduler!r}: expected an address such as tcp://host:8786")
    console.print(
        f"{space.name}: {space.trials} quantization trials ({space.sampler}) x {len(space.hardware)} hardware points; "
        f"results in {db}",
        highlight=False,
    )
    started = time.perf_counter()
    created = not db.exists()
    with ExitStack() as stack:
        store = stack.enter_context(ResultStore(db))
        try:
            client = stack.enter_context(dask_client(workers, scheduler))
        except QExportError:
            store.close()
            if created:  # no cluster, no rows: leave no results file behind
                db.unlink(missing_ok=True)
            raise
        columns = (
            TextColumn("trials"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
        )
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task("", total=space.trials)

            def progress(done: int, total: int, label: str) -> None:
                bar.update(task, completed=done, total=total, description=label)

            result = run_sweep(space, store, client, retries=retries, retry_failed=retry_failed, progress=progress)
        seconds = time.perf_counter() - started
        summary = {
            "trials": result.trials,
            "evaluated": result.evaluated,
            "resumed": result.resumed,
            "sweep_seconds": round(seconds, 1),
            "workers": len(client.nthreads()),
            "db": str(db),
        }
        checkpoint = None if no_best else (lambda config: client.submit(checkpoint_bytes, config, pure=False).result())
        written = write_outputs(output, space, result.rows, force, checkpoint, summary)
    failed = sum(row["status"] != "ok" for row in result.rows)
    console.print(front_table(written["front"], written["best"]))
    console.print(
        f"{len(result.rows)} points ({failed} failed) of {result.trials} trials "
        f"({result.evaluated} run, {result.resumed} resumed) in {seconds:.1f} s; best: {written['best']['trial']} on "
        f"{written['best']['hardware']}; outputs in {output}/",
        highlight=False,
    )


run = entry_point(app)
