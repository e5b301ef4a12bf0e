"""Krum (Blanchard et al., 2017), Flower's ``Krum``: the update closest to its neighbours.

Registered as ``"krum"``; option ``num_malicious_nodes`` (default 0).  Clients send whole models
(its distances are over the whole update); ``partial_replies=true`` applies it per group of keys.
"""

from __future__ import annotations

from flwr.serverapp.strategy import Krum

from .guard import GuardedStrategy
from .registry import register_strategy


@register_strategy("krum")
class KrumStrategy(GuardedStrategy):
    """Flower's ``Krum`` with fedrs' guarantees (see
    :class:`~fedrs.strategies.guard.GuardedStrategy`)."""

    flower = Krum
    partial_default = False
