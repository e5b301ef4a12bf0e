"""The server's strategy from an experiment: the configured :mod:`fedrs.strategies` strategy
with the options the experiment implies (client counts, local keys, update codec, pooled
whitening statistics, differential privacy, reply weight bound).

The ServerApp (:mod:`fedrs.server.app`) runs it; :mod:`fedrs.validation` builds it once to check
an experiment before any data is prepared.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from fedrs.config import ExperimentConfig
from fedrs.models import JointModel
from fedrs.models.statistics import WhiteningPool
from fedrs.strategies import build_strategy


def strategy_for(
    config: ExperimentConfig, num_clients: int, max_weight: float | None = None
) -> Any:
    """The configured strategy, with client counts that never wait for absent nodes.

    ``max_weight`` (the most examples a reply may claim) applies when the configuration sets
    no ``federation.max_weight``; ``None`` and no configured bound leave replies unbounded.
    """

    fed = config.federation
    # a node lost mid-run must not make later rounds wait for it: rounds need only as many
    # nodes as must succeed (the first round waits for all of them: fedrs.server.app.wait_for_nodes)
    least = min(fed.min_clients, num_clients)
    options: dict[str, Any] = {
        "fraction_train": fed.fraction_train,
        "fraction_evaluate": 0.0,
        "min_train_nodes": least,
        "min_evaluate_nodes": 0,
        "min_available_nodes": least,
        "min_successful": fed.min_clients,
        "local_keys": list(fed.local_keys),
        "update_codec": fed.build_update_codec(config.seed),
    }
    if fed.cyclic_rounds:
        options["cyclic_rounds"] = fed.cyclic_rounds
        options["turn_seed"] = config.seed  # the same order of turns at the same seed
    if fed.fraction_train < 1:
        options["sample_seed"] = config.seed  # the same clients each round at the same seed
    if fed.max_weight is not None or max_weight is not None:
        options["max_weight"] = fed.max_weight if fed.max_weight is not None else max_weight
    if fed.statistics != "averaged" and config.model.whitening:
        with torch.random.fork_rng(devices=[]):  # a model's shape only: leave the RNG alone
            pool = WhiteningPool(JointModel(config.model))
        options["statistics"] = pool
        if fed.statistics == "local":  # FedBN-style: pooled for the server's evaluation only
            options["local_keys"] += [re.escape(k) for k in pool.derived_keys()]
    if fed.dp.clipping != "none":
        sampled = max(least, round(num_clients * fed.fraction_train))
        options["dp"] = fed.dp.model_dump() | {"num_sampled_clients": sampled}
    options.update(fed.strategy_options)
    return build_strategy(fed.strategy, **options)
