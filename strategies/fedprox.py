"""FedProx (Li et al., 2018) with local-only keys and checked, counted replies.

Registered as ``"fedprox"``.  The server side is FedAvg; Flower's ``FedProx.configure_train``
adds ``proximal-mu`` to the training ConfigRecord, and the **client** must add the proximal term
``mu / 2 * ||w - w_global||^2`` to its local loss, where ``w_global`` is a copy of the received
(shared) parameters taken before local training.  Local-only keys are not received, so they are
not part of the proximal term.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from flwr.serverapp.strategy import FedProx

from fedrs.comm import UpdateCodec
from fedrs.errors import InputError

from .base import AccountedFedAvg, MetricsAggregationFn
from .registry import register_strategy

PROXIMAL_MU_CONFIG_KEY = "proximal-mu"
"""ConfigRecord key under which Flower's FedProx sends ``proximal_mu`` to the clients."""


@register_strategy("fedprox")
class FedProxStrategy(AccountedFedAvg, FedProx):
    """FedAvg aggregation plus the proximal coefficient sent to the clients.

    Args:
        proximal_mu: Weight of the proximal term (>= 0; ``0`` is FedAvg), sent to every
            training client as ``config["proximal-mu"]``.
        Other options: as :class:`~fedrs.strategies.base.AccountedFedAvg`.

    Raises:
        InputError: An option has a bad value.
    """

    requires_all_shared_keys = True

    def __init__(
        self,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        train_metrics_aggr_fn: MetricsAggregationFn | None = None,
        evaluate_metrics_aggr_fn: MetricsAggregationFn | None = None,
        local_keys: Sequence[str] | str | None = None,
        min_successful: int = 1,
        accept_failures: bool = True,
        update_codec: UpdateCodec | str | None = None,
        proximal_mu: float = 0.0,
    ) -> None:
        if (
            isinstance(proximal_mu, bool)
            or not isinstance(proximal_mu, int | float)
            or not math.isfinite(proximal_mu)
            or proximal_mu < 0
        ):
            raise InputError(f"proximal_mu must be a finite number >= 0, got {proximal_mu!r}")
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
            train_metrics_aggr_fn=train_metrics_aggr_fn,
            evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
            local_keys=local_keys,
            min_successful=min_successful,
            accept_failures=accept_failures,
            update_codec=update_codec,
            proximal_mu=float(proximal_mu),
        )
