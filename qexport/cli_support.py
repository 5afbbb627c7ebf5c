"""What the three CLIs share: one-line errors with exit code 2, and typer apps run without usage boxes."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import typer
from rich.console import Console

from qexport.errors import QExportError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

errors = Console(stderr=True)


def print_error(message: str) -> None:
    """``error: message`` on stderr, on one line whatever the terminal width."""
    text = " ".join(str(message).split())
    errors.print(f"error: {text}", style="red", markup=False, highlight=False, soft_wrap=True)


def fail(error: Exception | str) -> None:
    """Print a user error on one line and leave with exit code 2."""
    print_error(str(error))
    raise typer.Exit(EXIT_BAD_INPUT)


def _os_error_message(error: OSError) -> str:
    where = error.filename if error.filename is not None else "output"
    return f"{where}: {error.strerror or error}"


def run_app(app: typer.Typer, argv: Sequence[str] | None = None, prog_name: str | None = None) -> int:
    """Run a typer app and return its exit code; usage errors, user errors and OS errors become one line."""
    command = typer.main.get_command(app)
    prog_name = prog_name or app.info.name
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except typer.Abort:
        print_error("interrupted")
        return EXIT_INTERRUPTED
    except typer.TyperException as error:  # click's usage and parameter errors (typer vendors click)
        context = getattr(error, "ctx", None)
        message = error.format_message() if hasattr(error, "format_message") else str(error)
        if not message and context is not None:  # no arguments at all: show the help
            typer.echo(context.get_help(), err=True)
            return EXIT_BAD_INPUT
        hint = f" (see {context.command_path} --help)" if context is not None else ""
        print_error(f"{message}{hint}")
        return EXIT_BAD_INPUT
    except QExportError as error:
        print_error(str(error))
        return EXIT_BAD_INPUT
    except OSError as error:
        print_error(_os_error_message(error))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print_error("interrupted")
        return EXIT_INTERRUPTED
    return result if isinstance(result, int) else 0


def entry_point(app: typer.Typer) -> Callable[[], None]:
    """A console-script function for ``app``."""

    def main() -> None:
        sys.exit(run_app(app))

    return main
