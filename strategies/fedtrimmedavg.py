"""Trimmed-mean aggregation (Yin et al., 2018), Flower's ``FedTrimmedAvg``.

Registered as ``"fedtrimmedavg"``; option ``beta`` (fraction cut at each end, default 0.2).
Robust to a minority of outlying updates; weights are not used.  Under partial replies each
key is trimmed over the replies that carry it.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedTrimmedAvg

from .guard import GuardedStrategy
from .registry import register_strategy


@register_strategy("fedtrimmedavg")
class FedTrimmedAvgStrategy(GuardedStrategy):
    """Flower's ``FedTrimmedAvg`` with fedrs' guarantees (see
    :class:`~fedrs.strategies.guard.GuardedStrategy`)."""

    flower = FedTrimmedAvg
