"""Overrides from CLI flags that replace a component of the experiment file."""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedrs.config import ExperimentConfig
from fedrs.errors import FedrsError

COMPONENT_FLAGS: dict[str, tuple[str, str]] = {
    "partition.name": ("--partition", "partition.options"),
    "federation.strategy": ("--strategy", "federation.strategy_options"),
}
"""Dotted key of a component a CLI flag replaces -> (the flag, the dotted key of its options)."""


def note_line(message: str) -> None:
    """Print one ``fedrs: ...`` line on stderr (a note, not an error)."""
    print(f"fedrs: {message}", file=sys.stderr)


def _dotted(values: Mapping[str, Any], key: str) -> Any:
    """The value at dotted ``key`` of a nested dict, or None."""
    node: Any = values
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def drop_replaced_options(
    config: Path | None, flags: Mapping[str, Any], explicit: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """Overrides that drop the file's options of each component a flag replaces, and a note each.

    A flag (``--partition``, ``--strategy``) naming another component than the file does
    replaces it; the options the file gives the old component belong to it, so they are dropped
    (``partition.options = {}``).  Options set with ``--set`` (``explicit``, applied after these
    overrides) are kept, and so is a whole options table set there.  A flag naming the file's
    own component keeps its options.

    Args:
        config: The experiment file, or None for the built-in defaults (which have no options).
        flags: Dotted overrides from the named CLI options (``{"partition.name": "iid"}``).
        explicit: Dotted overrides from ``--set``.

    Returns:
        The overrides to apply before ``explicit``, and one line for each component whose file
        options are lost, e.g. ``--partition iid replaces modality: its options both, s1_only,
        s2_only from experiments/modality-split.toml are dropped``.
    """

    if config is None:
        return {}, []
    try:
        values = tomllib.loads(Path(config).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}, []  # load_config reports what is wrong with the file
    defaults = ExperimentConfig().to_dict()
    drops: dict[str, Any] = {}
    notes: list[str] = []
    for key, (flag, options_key) in COMPONENT_FLAGS.items():
        new = flags.get(key)
        old = _dotted(values, key)
        old = _dotted(defaults, key) if old is None else old
        options = _dotted(values, options_key)
        if new is None or new == old or not options or options_key in explicit:
            continue
        drops[options_key] = {}
        prefix = f"{options_key}."
        kept = {k[len(prefix) :].split(".")[0] for k in explicit if k.startswith(prefix)}
        dropped = sorted(set(options) - kept) if isinstance(options, Mapping) else []
        if dropped:
            notes.append(
                f"{flag} {new} replaces {old}: its options {', '.join(dropped)} "
                f"from {config} are dropped"
            )
    in_turn = _dotted(values, "federation.cyclic_rounds")
    if in_turn and "federation.cyclic_rounds" not in explicit:
        reason = _averaging_flag(flags)
        if reason:
            drops["federation.cyclic_rounds"] = 0
            notes.append(
                f"{reason} averages every round: federation.cyclic_rounds = {in_turn} "
                f"from {config} is dropped"
            )
    return drops, notes


def _averaging_flag(flags: Mapping[str, Any]) -> str | None:
    """The flag that asks for averaged rounds (a strategy that cannot train its clients in
    turn, coded updates), as ``--flag value``; None when no flag does."""
    strategy = flags.get("federation.strategy")
    if strategy is not None:
        from fedrs.strategies import trains_in_turn  # heavy: flwr, kept out of `fedrs --help`

        try:
            if not trains_in_turn(str(strategy)):
                return f"--strategy {strategy}"
        except FedrsError:
            pass  # an unknown name: the strategy's own check reports it
    codec = flags.get("federation.update_codec")
    if codec is not None and codec != "none":
        return f"--update-codec {codec}"
    return None
