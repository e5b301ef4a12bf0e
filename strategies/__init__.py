"""Federated aggregation strategies (Flower Message API), by name.

>>> from fedrs.strategies import build_strategy
>>> strategy = build_strategy("modality-aware", min_train_nodes=2, local_keys=["running_"])

Registered names: ``fedavg``, ``fedprox``, ``modality-aware``.  Every strategy subclasses
Flower's ``flwr.serverapp.strategy.FedAvg`` (``fedprox`` also Flower's ``FedProx``) and adds
local-only keys, checked replies, per-round counts (``strategy.round_stats[round]``) and a typed
error when a round has no usable reply; see :mod:`fedrs.strategies.base`.
"""

from __future__ import annotations

from .base import (
    DEFAULT_LOCAL_KEYS,
    LOCAL_KEYS_CONFIG_KEY,
    AccountedFedAvg,
    LocalKeyMatcher,
    RoundStats,
    aggregate_metrics_per_key,
    array_bytes,
    message_bytes,
    messages_bytes,
)
from .errors import ClientFailure, NoSuccessfulClientsError, RoundFailedError
from .fedavg import FedAvgStrategy
from .fedprox import PROXIMAL_MU_CONFIG_KEY, FedProxStrategy
from .modality_aware import ModalityAwareFedAvg
from .registry import (
    STRATEGIES,
    build_strategy,
    register_strategy,
    strategy_names,
    strategy_options,
)

__all__ = [
    "DEFAULT_LOCAL_KEYS",
    "LOCAL_KEYS_CONFIG_KEY",
    "PROXIMAL_MU_CONFIG_KEY",
    "STRATEGIES",
    "AccountedFedAvg",
    "ClientFailure",
    "FedAvgStrategy",
    "FedProxStrategy",
    "LocalKeyMatcher",
    "ModalityAwareFedAvg",
    "NoSuccessfulClientsError",
    "RoundFailedError",
    "RoundStats",
    "aggregate_metrics_per_key",
    "array_bytes",
    "build_strategy",
    "message_bytes",
    "messages_bytes",
    "register_strategy",
    "strategy_names",
    "strategy_options",
]
