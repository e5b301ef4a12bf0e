"""FedAdagrad (Reddi et al., 2021): Adagrad on the server, Flower's ``FedAdagrad``.

Registered as ``"fedadagrad"``; options ``eta``, ``eta_l``, ``tau`` (Flower's defaults).  Under
partial replies (the default) the accumulators are kept per key.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAdagrad

from .guard import GuardedStrategy
from .registry import register_strategy


@register_strategy("fedadagrad")
class FedAdagradStrategy(GuardedStrategy):
    """Flower's ``FedAdagrad`` with fedrs' guarantees (see
    :class:`~fedrs.strategies.guard.GuardedStrategy`)."""

    flower = FedAdagrad
