"""Multi-Krum (Blanchard et al., 2017), Flower's ``MultiKrum``: the mean of the updates Krum
selects.

Registered as ``"multikrum"``; options ``num_malicious_nodes`` (0), ``num_nodes_to_select`` (1).
"""

from __future__ import annotations

from flwr.serverapp.strategy import MultiKrum

from .guard import GuardedStrategy
from .registry import register_strategy


@register_strategy("multikrum")
class MultiKrumStrategy(GuardedStrategy):
    """Flower's ``MultiKrum`` with fedrs' guarantees (see
    :class:`~fedrs.strategies.guard.GuardedStrategy`)."""

    flower = MultiKrum
    partial_default = False
