"""FedAvg (McMahan et al., 2017), Flower's ``FedAvg``, over whole models.

Registered as ``"fedavg"``.  Clients send every shared key (untrained codecs included), as
Flower's ``FedAvg`` requires identical key sets; a reply missing a shared key is a failed reply.
``partial_replies=true`` makes it ``"modality-aware"``.  With ``local_keys=[]`` this is plain
FedAvg: BatchNorm statistics are averaged too.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg

from .guard import GuardedStrategy
from .registry import register_strategy


@register_strategy("fedavg")
class FedAvgStrategy(GuardedStrategy):
    """Weighted federated averaging over clients that all return the full shared model."""

    flower = FedAvg
    partial_default = False
