"""The ``fedrs`` command line.

Each subcommand lives in its own module of this package and defines ``main``; the command name is
the module name with ``_`` replaced by ``-``.  Modules whose name starts with ``_`` are helpers.
Heavy imports (torch, flwr, ray) stay inside the command functions so ``fedrs --help`` is fast.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import pkgutil
import sys
import warnings
from collections.abc import Iterator, Sequence

import click
import typer

from fedrs import __version__
from fedrs.cli._common import NOISY_LOGGERS, error_line
from fedrs.errors import FedrsError, InputError

app = typer.Typer(
    name="fedrs",
    help="Federated learned compression and hashing of remote-sensing image archives.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    """Federated learned compression and hashing of remote-sensing image archives."""
    if version:
        typer.echo(f"fedrs {__version__}")
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_"):
        continue
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    app.command(name=_info.name.replace("_", "-"), help=_module.__doc__)(_module.main)


@contextlib.contextmanager
def _restored_logging() -> Iterator[None]:
    """Leave the levels of the loggers a command quietens, and the warning filters, as they
    were (a command run in-process, e.g. by a test, does not change its caller's logging)."""
    levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    with warnings.catch_warnings():
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    try:
        with _restored_logging():
            code = app(
                args=list(argv) if argv is not None else None,
                prog_name="fedrs",
                standalone_mode=False,
            )
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        error_line("aborted")
        return 130
    except InputError as exc:
        error_line(str(exc))
        return 2
    except FedrsError as exc:
        error_line(str(exc))
        return 1
    if code == 130:  # typer's answer to Ctrl-C without standalone mode
        error_line("interrupted")
        return 130
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
