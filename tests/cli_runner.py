"""Run a CLI in-process exactly as its console script does (``qexport.cli_support.run_app``)."""

from __future__ import annotations

from dataclasses import dataclass

import typer
from typer.testing import CliRunner

from qexport.cli_support import run_app


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def invoke(app: typer.Typer, *args: object) -> Result:
    with CliRunner().isolation() as (stdout, stderr, _):
        code = run_app(app, [str(arg) for arg in args])
        return Result(code, stdout.getvalue().decode(), stderr.getvalue().decode())
