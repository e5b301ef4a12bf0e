"""Small helpers shared by the subcommands."""

from __future__ import annotations

import logging
import math
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fedrs.errors import InputError

console = Console()

THREADS_OPTION = typer.Option(1, min=1, help="Torch threads (1 suits small models on busy CPUs).")
"""``--threads`` of the commands that run the model."""

DEVICE_OPTION = typer.Option(
    "auto", help="auto (a GPU where one is seen, else the CPU), cpu, cuda or cuda:N."
)
"""``--device`` of the commands that run the model."""


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
    """``track(description, total)`` returns ``advance(n)`` of a task of ``bar``; the task
    shows from the first step on (work found done already shows no empty bar)."""

    def track(description: str, total: int) -> Callable[[int], None]:
        task: list[TaskID] = []

        def advance(n: int) -> None:
            if not task:
                if n <= 0:
                    return
                task.append(bar.add_task(description, total=total))
            bar.advance(task[0], n)

        return advance

    return track


NOISY_LOGGERS = ("flwr", "ray", "mlflow", "alembic", "urllib3", "filelock", "matplotlib")
"""Third-party loggers quietened to errors unless ``--verbose``."""


def quiet_third_parties(verbose: bool = False) -> None:
    """Our progress only: third-party INFO lines and deprecation notices hidden by default.

    Deprecation and future warnings raised from other packages' code (Flower's, Ray's,
    SQLAlchemy's, ...) are about their APIs, not the user's run, and are ignored; every other
    warning (a real problem: a runtime warning, a user warning) still shows, as do errors.
    ``verbose`` leaves all of it as the packages set it.
    """

    if verbose:
        return
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("default", category=category, module=r"fedrs(\.|$)")


def print_skipped(skipped: Iterable[tuple[str, str]]) -> None:
    """One line per item left out: ``skipped <name>: <why>``."""
    for name, why in skipped:
        console.print(f"[yellow]skipped[/] {name}: {why}", highlight=False, soft_wrap=True)


def round_line(round_: int, total: int, metrics: Mapping[str, float]) -> str:
    """``round 2/3  mAP@20 0.842  bpp 0.436/0.214  PSNR 24.4/19.9  clients 10 ok, 0 failed``:
    one line per round, S1/S2 pairs, values not logged left out."""

    def pair(key: str, digits: int) -> str:
        values = [metrics.get(f"eval/{key}_{m}") for m in ("s1", "s2")]
        return "/".join("-" if v is None else f"{v:.{digits}f}" for v in values)

    parts = [f"round {round_}/{total}"]
    if "eval/map@20" in metrics:
        parts.append(f"mAP@20 {metrics['eval/map@20']:.3f}")
    if any(f"eval/bpp_{m}" in metrics for m in ("s1", "s2")):
        parts.append(f"bpp {pair('bpp', 3)}")
    if any(f"eval/psnr_{m}" in metrics for m in ("s1", "s2")):
        parts.append(f"PSNR {pair('psnr', 1)}")
    if "clients/ok" in metrics:
        failed = int(metrics.get("clients/failed", 0))
        parts.append(f"clients {int(metrics['clients/ok'])} ok, {failed} failed")
    return "  ".join(parts)


def round_printer(bar: Progress, total: int) -> Callable[[int, int, dict[str, float]], None]:
    """``on_round(round, total, metrics)`` for a federation: advances a ``rounds`` task of
    ``bar`` (elapsed time and ETA) and prints the round's :func:`round_line`."""
    task = bar.add_task("rounds", total=total)

    def on_round(round_: int, total: int, metrics: dict[str, float]) -> None:
        bar.update(task, completed=round_)
        bar.console.print(round_line(round_, total, metrics), highlight=False, soft_wrap=True)

    return on_round


def number(value: float | None) -> str:
    """A table cell for a measurement: ``-`` for None, integers whole, floats to 3 decimals
    below 10 and one decimal fewer per digit before the point (``0.897``, ``25.83``,
    ``203.5``, ``1235``), so that no cell is wider than it needs to be."""
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    x = float(value)
    if not math.isfinite(x):
        return str(x)
    digits = len(str(int(abs(x))))
    return f"{x:.{max(0, 4 - digits)}f}"
