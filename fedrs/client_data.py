"""A federated client's shard: the rows of the run's cache it trains on and its modalities.

Where a client's data comes from (its ``node_config``):

* simulation: ``partition-id`` / ``num-partitions``; the client opens the run's archive and
  takes its shard of the configured partition (deterministic for the seed);
* deployment: ``data-path`` (its own archive or fedrs cache) and optionally ``modalities``
  (``"s1,s2"``, ``"s1"`` or ``"s2"``); it trains on that archive's train split.

A client works out its rows once per run, in its first round, and keeps them between rounds
(:class:`HeldShard`, which the Flower app stores in the node's state) with a fingerprint of what
they were computed from (data and partition settings, its place in the partition, the build of
the cache); a later round with the same fingerprint reuses them, any other computes them afresh.
The opened cache is reused by later calls in the same process (:func:`fedrs.pipeline.open_cache`),
so later rounds neither read the metadata again nor partition it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedrs import pipeline
from fedrs.config import ExperimentConfig
from fedrs.data.archive import check_modalities
from fedrs.data.cache import CachedArchive
from fedrs.errors import InputError
from fedrs.pipeline import cache_identity, client_rows, open_cache, split_rows

_SHARD_NODE_KEYS = ("data-path", "modalities", "partition-id", "num-partitions")


@dataclass(frozen=True)
class ClientData:
    """The patches a client trains on."""

    client_id: int
    archive: CachedArchive
    rows: np.ndarray
    modalities: tuple[str, ...]


@dataclass(frozen=True)
class HeldShard:
    """A client's rows as kept between rounds.

    Attributes:
        rows: The rows of the run's cache.
        meta: What they were computed under: ``fingerprint`` (:func:`shard_fingerprint`) and
            ``modalities`` (a list).
    """

    rows: np.ndarray
    meta: dict[str, Any]


def shard_fingerprint(config: ExperimentConfig, node_config: dict[str, Any], cache: Path) -> str:
    """What a node's rows depend on: the data and partition settings, the node's entries that
    place it (``data-path``, ``modalities``, ``partition-id``, ``num-partitions``) and the build
    of the cache it reads (:func:`fedrs.pipeline.cache_identity`)."""

    facts = {
        "data": config.data.model_dump(mode="json"),
        "partition": config.partition.model_dump(mode="json"),
        "node": {k: str(node_config[k]) for k in _SHARD_NODE_KEYS if k in node_config},
        "cache": list(cache_identity(cache)),
    }
    text = json.dumps(facts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _held_shard(held: HeldShard | None, key: str) -> tuple[np.ndarray, tuple[str, ...]] | None:
    """The rows and modalities of ``held`` when they were kept under fingerprint ``key``."""
    if held is None:
        return None
    if held.meta.get("fingerprint") != key:
        return None
    modalities = held.meta.get("modalities")
    if not isinstance(modalities, list):
        return None
    return held.rows.astype(np.int64, copy=False), tuple(map(str, modalities))


def node_client_id(node_config: dict[str, Any]) -> int:
    """The client id of a node: its ``partition-id`` (0 for a node of its own archive that
    sets none).

    Raises:
        InputError: neither ``data-path`` nor ``partition-id``, or a ``partition-id`` that is
            not a whole number.
    """
    if "data-path" not in node_config and "partition-id" not in node_config:
        raise InputError("node config has neither 'data-path' nor 'partition-id'")
    value = node_config.get("partition-id", 0)
    try:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(value)
        return int(value)
    except ValueError:
        raise InputError(
            f"node config: partition-id must be a whole number, got {value!r}"
        ) from None


def load_shard(
    config: ExperimentConfig, node_config: dict[str, Any], held: HeldShard | None = None
) -> tuple[ClientData, HeldShard | None]:
    """The shard of this node (see the module docstring), and what to keep of it.

    Args:
        held: The shard kept from an earlier round, if any; its rows are reused while their
            fingerprint (:func:`shard_fingerprint`) is unchanged.

    Returns:
        The shard, and the :class:`HeldShard` to keep for later rounds when the rows were
        computed afresh (``None`` when they came from ``held``).
    """

    client_id = node_client_id(node_config)
    if "data-path" in node_config:
        data_config = config.data.model_copy(update={"path": str(node_config["data-path"])})
        text = str(node_config.get("modalities", "s1,s2"))
        modalities = check_modalities([m.strip() for m in text.split(",") if m.strip()])
        clients = None  # the whole train split of its own archive
    else:
        data_config = config.data
        clients = int(node_config.get("num-partitions", config.partition.clients))
    cache = pipeline.resolve_cache(data_config)
    key = shard_fingerprint(config.model_copy(update={"data": data_config}), node_config, cache)
    archive = open_cache(cache, data_config.modalities, reuse=True)
    found = _held_shard(held, key)
    if found is not None:
        return ClientData(client_id, archive, found[0], found[1]), None
    run = split_rows(archive, data_config, data_config.seed)
    if clients is not None:
        rows, modalities = client_rows(run, config.partition, clients, client_id)
    else:
        rows = run.train_rows
    kept = HeldShard(
        np.ascontiguousarray(rows, dtype=np.int64),
        {"fingerprint": key, "modalities": list(modalities)},
    )
    return ClientData(client_id, archive, rows, tuple(modalities)), kept


def sent_modalities(config: ExperimentConfig, data: ClientData, partial: bool) -> tuple[str, ...]:
    """Modalities whose codecs a client sends: its own under partial replies (the server says
    so in :data:`fedrs.protocol.PARTIAL_REPLIES`), else every codec (strategies that average
    whole models get the untrained codecs back unchanged)."""
    return data.modalities if partial else tuple(config.model.codecs)
