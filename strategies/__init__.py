"""Federated aggregation strategies (Flower Message API), by name.

>>> from fedrs.strategies import build_strategy
>>> strategy = build_strategy("fedadam", min_train_nodes=2, eta=0.01, local_keys=["running_"])

Every name is a Flower strategy with fedrs' guarantees around it
(:class:`~fedrs.strategies.guard.GuardedStrategy`: checked replies, partial-key merging,
local-only keys, finite float64 merges, byte accounting, coded broadcasts, failure policy),
one a file: ``fedavg``, ``fedavgm``, ``fedprox``, ``fedadam``, ``fedyogi``, ``fedadagrad``,
``fedtrimmedavg``, ``fedmedian``, ``krum``, ``multikrum``, ``bulyan`` and ``modality-aware``
(FedAvg over partial replies).  ``strategy.round_stats[round]`` holds each round's counts.
"""

from __future__ import annotations

from .accounting import RoundStats, array_bytes, message_bytes, messages_bytes
from .base import DEFAULT_LOCAL_KEYS, LOCAL_KEYS_CONFIG_KEY, AccountedFedAvg, LocalKeyMatcher
from .bulyan import BulyanStrategy
from .errors import (
    ClientFailure,
    NonFiniteModelError,
    NoSuccessfulClientsError,
    RoundFailedError,
)
from .fedadagrad import FedAdagradStrategy
from .fedadam import FedAdamStrategy
from .fedavg import FedAvgStrategy
from .fedavgm import FedAvgMStrategy
from .fedmedian import FedMedianStrategy
from .fedprox import PROXIMAL_MU_CONFIG_KEY, FedProxStrategy
from .fedtrimmedavg import FedTrimmedAvgStrategy
from .fedyogi import FedYogiStrategy
from .guard import GuardedStrategy, trains_in_turn
from .krum import KrumStrategy
from .merging import aggregate_metrics_per_key
from .modality_aware import ModalityAwareFedAvg
from .multikrum import MultiKrumStrategy
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
    "BulyanStrategy",
    "ClientFailure",
    "FedAdagradStrategy",
    "FedAdamStrategy",
    "FedAvgMStrategy",
    "FedAvgStrategy",
    "FedMedianStrategy",
    "FedProxStrategy",
    "FedTrimmedAvgStrategy",
    "FedYogiStrategy",
    "GuardedStrategy",
    "KrumStrategy",
    "LocalKeyMatcher",
    "ModalityAwareFedAvg",
    "MultiKrumStrategy",
    "NoSuccessfulClientsError",
    "NonFiniteModelError",
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
    "trains_in_turn",
]
