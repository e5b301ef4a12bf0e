"""Partitioners: how the patches of an archive are split among federated clients.

``partition(name, metadata, num_clients, *, seed, **options)`` returns one
:class:`ClientShard` per client (``client_id``, ``patch_ids``, ``modalities``).  Registered names:

* ``iid``: uniformly random, equal sizes.
* ``dirichlet``: label skew, ``alpha`` (smaller = more skewed), ``min_size``.
* ``modality``: S1-only / S2-only / both clients, options ``s1_only``, ``s2_only``, ``both``
  (fractions of the clients; default 0.3 / 0.3 / 0.4).
* ``country``: one or more countries per client, big countries split, sized like the archive.
* ``season``: the same by acquisition season.

Every partitioner is deterministic for a seed, puts each patch in at most one shard and gives
every client at least one patch (or raises ``fedrs.errors.InputError``).  Add one with
``@register_partition("name")`` (see ``fedrs.partitions.base``).  Shards go to JSON with
``save_shards`` / ``load_shards``.
"""

from __future__ import annotations

from . import country, dirichlet, iid, modality, season
from .base import (
    MODALITIES,
    PARTITIONS,
    Assignment,
    ClientShard,
    Partitioner,
    check_partition,
    load_shards,
    option_names,
    partition,
    prepare_metadata,
    register_partition,
    save_shards,
    shards_from_json,
    shards_to_json,
)
from .summary import summarize_shards

__all__ = [
    "MODALITIES",
    "PARTITIONS",
    "Assignment",
    "ClientShard",
    "Partitioner",
    "check_partition",
    "country",
    "dirichlet",
    "iid",
    "load_shards",
    "modality",
    "option_names",
    "partition",
    "prepare_metadata",
    "register_partition",
    "save_shards",
    "season",
    "shards_from_json",
    "shards_to_json",
    "summarize_shards",
]
