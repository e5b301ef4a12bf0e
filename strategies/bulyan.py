"""Bulyan (El Mhamdi et al., 2018), Flower's ``Bulyan``: Krum selection, then a trimmed mean.

Registered as ``"bulyan"``; options ``num_malicious_nodes`` (0), ``selection_rule`` (Krum).
Flower's Bulyan needs at least ``4 f + 3`` replies (``f = num_malicious_nodes``) for every
aggregated group of keys.
"""

from __future__ import annotations

from flwr.serverapp.strategy import Bulyan

from .guard import GuardedStrategy
from .registry import register_strategy


@register_strategy("bulyan")
class BulyanStrategy(GuardedStrategy):
    """Flower's ``Bulyan`` with fedrs' guarantees (see
    :class:`~fedrs.strategies.guard.GuardedStrategy`)."""

    flower = Bulyan
    partial_default = False
