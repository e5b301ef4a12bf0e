"""Strategies by name.

``@register_strategy("name")`` adds a strategy class to :data:`STRATEGIES`;
``build_strategy(name, **options)`` builds one from a configuration, checking the name and the
option names at the boundary (option names may use ``-`` or ``_``: ``proximal-mu`` is
``proximal_mu``).  Option values are checked by the strategy's constructor.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from flwr.serverapp.strategy import Strategy

from fedrs.errors import InputError

S = TypeVar("S", bound=type[Strategy])

STRATEGIES: dict[str, type[Strategy]] = {}
"""Registered strategy classes by name."""


def register_strategy(name: str) -> Callable[[S], S]:
    """Register a strategy class under ``name``.

    Args:
        name: The name configurations use for the strategy (e.g. ``"modality-aware"``).

    Returns:
        A class decorator that registers the class and returns it unchanged.

    Raises:
        ValueError: ``name`` is empty or already taken by another class.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"strategy name must be a non-empty string, got {name!r}")

    def decorator(cls: S) -> S:
        known = STRATEGIES.get(name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ValueError(
                f"strategy name {name!r} is already registered to {known.__qualname__}"
            )
        STRATEGIES[name] = cls
        return cls

    return decorator


def strategy_names() -> list[str]:
    """Return the registered strategy names, sorted."""
    return sorted(STRATEGIES)


def strategy_options(name: str) -> list[str]:
    """Return the option names the strategy ``name`` accepts, in constructor order.

    Raises:
        InputError: ``name`` is not a registered strategy.
    """
    cls = _lookup(name)
    names = getattr(cls, "option_names", None)
    if callable(names):
        return list(names())
    params = inspect.signature(cls.__init__).parameters.values()
    return [
        p.name
        for p in params
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def build_strategy(name: str, **options: Any) -> Strategy:
    """Build the strategy registered as ``name`` with the given options.

    Args:
        name: A registered strategy name (see :func:`strategy_names`).
        **options: Constructor options of that strategy; ``-`` in a name is read as ``_``.

    Returns:
        The configured strategy.

    Raises:
        InputError: Unknown strategy name (the message lists the known ones), unknown option
            name (the message lists the accepted ones) or a bad option value.
    """
    cls = _lookup(name)
    accepted = strategy_options(name)
    normalised: dict[str, Any] = {}
    for key, value in options.items():
        option = key.replace("-", "_")
        if option not in accepted:
            raise InputError(
                f"strategy {name!r} has no option {key!r}; accepted: {', '.join(accepted)}"
            )
        if option in normalised:
            raise InputError(f"strategy {name!r}: option {option!r} given twice")
        normalised[option] = value
    return cls(**normalised)


def _lookup(name: str) -> type[Strategy]:
    cls = STRATEGIES.get(name)
    if cls is None:
        known = ", ".join(strategy_names()) or "(none registered)"
        raise InputError(f"unknown strategy {name!r}; known strategies: {known}")
    return cls
