"""Small helpers shared by the subcommands."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fedrs.errors import InputError

console = Console()


def error_line(message: str) -> None:
    """Print one ``fedrs: error: ...`` line on stderr."""
    print(f"fedrs: error: {message}", file=sys.stderr)


def fail(message: str) -> NoReturn:
    """Stop the command with one clear line and exit code 2."""
    raise InputError(message)


def progress(*, transient: bool = False) -> Progress:
    """A rich progress bar for long work (silent when stdout is not a terminal)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
    )


def tracker(bar: Progress) -> Callable[[str, int], Callable[[int], None]]:
    """``track(description, total)`` adds a task to ``bar`` and returns its ``advance(n)``."""

    def track(description: str, total: int) -> Callable[[int], None]:
        task = bar.add_task(description, total=total)
        return lambda n: bar.advance(task, n)

    return track
