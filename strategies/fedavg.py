"""FedAvg (McMahan et al., 2017) with local-only keys and checked, counted replies.

Registered as ``"fedavg"``.  Every usable reply must carry every shared key of the global model
(as Flower's ``FedAvg`` requires identical key sets); a reply missing a shared key is a failed
reply.  Use ``"modality-aware"`` when clients train different parts of the model.
"""

from __future__ import annotations

from .base import AccountedFedAvg
from .registry import register_strategy


@register_strategy("fedavg")
class FedAvgStrategy(AccountedFedAvg):
    """Weighted federated averaging over clients that all return the full shared model.

    Options are those of :class:`~fedrs.strategies.base.AccountedFedAvg` (Flower's ``FedAvg``
    options plus ``local_keys``, ``min_successful`` and ``accept_failures``).  With
    ``local_keys=[]`` this is plain FedAvg: BatchNorm statistics are averaged too.
    """

    requires_all_shared_keys = True
