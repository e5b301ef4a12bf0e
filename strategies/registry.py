"""Strategies by name.

``@register_strategy("name")`` adds a strategy class to :data:`STRATEGIES`;
``build_strategy(name, **options)`` builds one from a configuration, checking the name and the
option names at the boundary (option names may use ``-`` or ``_``: ``proximal-mu`` is
``proximal_mu``).  Option values are checked by the strategy's constructor.
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import Strategy

from fedrs.registry import Registry

STRATEGIES: Registry[type[Strategy]] = Registry("strategy")
"""Registered strategy classes by name."""

register_strategy = STRATEGIES.register
"""``@register_strategy("name")``: register a strategy class under ``name`` (taken: ValueError)."""

strategy_names = STRATEGIES.names
"""The registered strategy names, sorted."""


def strategy_options(name: str) -> list[str]:
    """Return the option names the strategy ``name`` accepts, in constructor order.

    Raises:
        InputError: ``name`` is not a registered strategy.
    """
    cls = STRATEGIES.lookup(name)
    names = getattr(cls, "option_names", None)
    if callable(names):
        return list(names())
    return STRATEGIES.parameters(name)


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
    cls = STRATEGIES.lookup(name)
    return cls(**STRATEGIES.options(name, options, strategy_options(name)))
