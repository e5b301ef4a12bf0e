"""FedProx (Li et al., 2018), Flower's ``FedProx``, over whole models.

Registered as ``"fedprox"``.  The server side is FedAvg; Flower's ``FedProx.configure_train``
adds ``proximal-mu`` to the training ConfigRecord, and the **client** adds the proximal term
``mu / 2 * ||w - w_global||^2`` to its local loss, where ``w_global`` is a copy of the received
(shared) parameters taken before local training.  Local-only keys are not received, so they are
not part of the proximal term.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from flwr.serverapp.strategy import FedProx

from fedrs import protocol
from fedrs.errors import InputError

from .guard import GuardedStrategy
from .registry import register_strategy

PROXIMAL_MU_CONFIG_KEY = protocol.PROXIMAL_MU
"""ConfigRecord key under which Flower's FedProx sends ``proximal_mu`` to the clients."""


@register_strategy("fedprox")
class FedProxStrategy(GuardedStrategy):
    """FedAvg aggregation plus the proximal coefficient sent to the clients.

    Option ``proximal_mu``: weight of the proximal term (>= 0; ``0`` is FedAvg), sent to every
    training client as ``config["proximal-mu"]``.
    """

    flower = FedProx
    partial_default = False

    def flower_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Checks ``proximal_mu`` (a finite number >= 0)."""
        mu = options.get("proximal_mu", 0.0)
        if isinstance(mu, bool) or not isinstance(mu, int | float) or not math.isfinite(mu):
            raise InputError(f"proximal_mu must be a finite number >= 0, got {mu!r}")
        if mu < 0:
            raise InputError(f"proximal_mu must be a finite number >= 0, got {mu!r}")
        return dict(options) | {"proximal_mu": float(mu)}
