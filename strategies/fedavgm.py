"""FedAvgM (Hsu et al., 2019): FedAvg with server-side momentum, Flower's ``FedAvgM``.

Registered as ``"fedavgm"``; options ``server_learning_rate`` (Flower's default 1.0) and
``server_momentum`` (0.0).  Under partial replies (the default) each group of keys keeps its own
momentum (see :mod:`fedrs.strategies.guard`).
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvgM

from .guard import GuardedStrategy
from .registry import register_strategy


@register_strategy("fedavgm")
class FedAvgMStrategy(GuardedStrategy):
    """Flower's ``FedAvgM`` with fedrs' guarantees (see
    :class:`~fedrs.strategies.guard.GuardedStrategy`)."""

    flower = FedAvgM
