"""FedYogi (Reddi et al., 2021): Yogi on the server over the clients' mean update, Flower's.

Registered as ``"fedyogi"``; options ``eta``, ``eta_l``, ``beta_1``, ``beta_2``, ``tau``
(Flower's defaults).  Under partial replies (the default) the moments are kept per key.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedYogi

from .guard import GuardedStrategy
from .registry import register_strategy


@register_strategy("fedyogi")
class FedYogiStrategy(GuardedStrategy):
    """Flower's ``FedYogi`` with fedrs' guarantees (see
    :class:`~fedrs.strategies.guard.GuardedStrategy`)."""

    flower = FedYogi
