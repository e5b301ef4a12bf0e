"""Coordinate-wise median aggregation (Yin et al., 2018), Flower's ``FedMedian``.

Registered as ``"fedmedian"``.  Robust to a minority of outlying updates; weights are not used.
Under partial replies each key's median is taken over the replies that carry it.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedMedian

from .guard import GuardedStrategy
from .registry import register_strategy


@register_strategy("fedmedian")
class FedMedianStrategy(GuardedStrategy):
    """Flower's ``FedMedian`` with fedrs' guarantees (see
    :class:`~fedrs.strategies.guard.GuardedStrategy`)."""

    flower = FedMedian
