"""Small helpers shared by the subcommands."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
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


def print_skipped(skipped: Iterable[tuple[str, str]]) -> None:
    """One line per item left out: ``skipped <name>: <why>``."""
    for name, why in skipped:
        console.print(f"[yellow]skipped[/] {name}: {why}", highlight=False, soft_wrap=True)


def round_printer(
    bar: Progress, total: int, keys: Iterable[str] = ("eval/map@20", "clients/ok")
) -> Callable[[int, int, dict[str, float]], None]:
    """``on_round(round, total, metrics)`` for a federation: advances a ``rounds`` task of
    ``bar`` and prints the round's ``keys`` that are in ``metrics`` as one JSON line."""
    task = bar.add_task("rounds", total=total)
    keys = tuple(keys)

    def on_round(round_: int, total: int, metrics: dict[str, float]) -> None:
        bar.update(task, completed=round_)
        shown = {k: metrics[k] for k in keys if k in metrics}
        bar.console.print(f"round {round_}/{total}: " + json.dumps(shown))

    return on_round
