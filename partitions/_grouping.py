"""Clients made of whole groups of patches (countries, seasons), sized like the archive.

Algorithm, for ``G`` non-empty groups (a missing value is its own group, ``unknown``) of sizes
``n_1 >= n_2 >= ... >= n_G`` (ties by name) and ``K`` clients:

* ``K >= G`` (split big groups): every group gets one client, then each further client goes to
  the group with the largest patches-per-client ratio ``n_g / m_g`` (D'Hondt / Jefferson
  apportionment, which minimises the largest client).  A group's patches are dealt at random
  (seeded) among its ``m_g`` clients, equal up to one patch.  Each client holds one group, so
  client sizes follow the group sizes of the archive: with the 10 countries of BigEarthNet v2 and
  10 clients, client ``i`` is exactly the ``i``-th largest country; with 20 clients Finland is
  split over the most clients.
* ``K < G`` (group small groups): the ``K`` largest groups open one client each, then every
  further group, largest first, joins the client with the fewest patches so far (ties: lowest
  client id), the longest-processing-time rule of bin packing.  Big groups stay alone and small
  ones are pooled, so each client holds one or more whole groups.

Client ids follow the group order, largest group first.  Every patch goes to exactly one client.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedrs.errors import InputError

from .base import Assignment

UNKNOWN = "unknown"
"""Group name given to patches whose value is missing."""


def group_codes(table: pd.DataFrame, column: str, partition: str) -> tuple[np.ndarray, list[str]]:
    """Group index of every row and the group names, largest group first (ties by name).

    Raises:
        InputError: The column has no value at all.
    """
    values = table[column]
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    codes = np.asarray(codes, dtype=np.int64)
    if len(codes) and (codes < 0).all():
        raise InputError(
            f"partition {partition!r}: the metadata has no {column} values "
            f"(it needs a '{column}' column)"
        )
    names = [str(u) for u in uniques]
    if (codes < 0).any():
        codes = np.where(codes < 0, len(names), codes)
        names.append(UNKNOWN)
    sizes = np.bincount(codes, minlength=len(names))
    order = sorted(range(len(names)), key=lambda g: (-int(sizes[g]), names[g]))
    rank = np.empty(len(names), dtype=np.int64)
    rank[order] = np.arange(len(names))
    return rank[codes], [names[g] for g in order]


def clients_per_group(sizes: np.ndarray, num_clients: int) -> np.ndarray:
    """D'Hondt apportionment of ``num_clients >= len(sizes)`` clients, at least one per group."""
    counts = np.ones(len(sizes), dtype=np.int64)
    for _ in range(num_clients - len(sizes)):
        counts[int(np.argmax(sizes / counts))] += 1
    return counts


def client_of_group(sizes: np.ndarray, num_clients: int) -> np.ndarray:
    """Longest-processing-time packing of groups (sorted largest first) into fewer clients."""
    owner = np.empty(len(sizes), dtype=np.int64)
    load = np.zeros(num_clients, dtype=np.int64)
    for g, size in enumerate(sizes):
        client = g if g < num_clients else int(np.argmin(load))
        owner[g] = client
        load[client] += size
    return owner


def group_partition(
    table: pd.DataFrame,
    column: str,
    num_clients: int,
    rng: np.random.Generator,
    *,
    partition: str,
) -> Assignment:
    """Assign rows to clients by whole or split groups of ``column`` (see the module docstring)."""
    codes, _names = group_codes(table, column, partition)
    sizes = np.bincount(codes, minlength=int(codes.max()) + 1 if len(codes) else 0)
    if num_clients < len(sizes):
        return Assignment(client_of_group(sizes, num_clients)[codes])
    counts = clients_per_group(sizes, num_clients)
    first_client = np.concatenate(([0], np.cumsum(counts)[:-1]))
    # Random order inside each group, then deal the group's rows round-robin to its clients.
    shuffled = rng.permutation(len(codes))
    rows = shuffled[np.argsort(codes[shuffled], kind="stable")]
    group_start = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    row_groups = codes[rows]
    rank_in_group = np.arange(len(rows)) - group_start[row_groups]
    clients = np.empty(len(codes), dtype=np.int64)
    clients[rows] = first_client[row_groups] + rank_in_group % counts[row_groups]
    return Assignment(clients)
