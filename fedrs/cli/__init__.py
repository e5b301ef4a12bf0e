"""The ``fedrs`` command line.

Each subcommand lives in its own module of this package and defines ``main``; the command name is
the module name with ``_`` replaced by ``-``.  Modules whose name starts with ``_`` are helpers.
Heavy imports (torch, flwr, ray) stay inside the command functions so ``fedrs --help`` is fast.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Sequence

import click
import typer

from fedrs.cli._common import error_line
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
        from fedrs import __version__

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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    try:
        code = app(
            args=list(argv) if argv is not None else None, prog_name="fedrs", standalone_mode=False
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
