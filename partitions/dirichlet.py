"""``dirichlet``: label skew by a Dirichlet draw per class (Hsu et al. 2019; Li et al. 2022).

BigEarthNet patches carry several labels, so each patch is filed under its *primary* label: the
rarest of its labels over the whole table (patches without labels form one extra class).  Rare
classes therefore keep their patches instead of drowning in the common ones.  For every class,
proportions ``p ~ Dir(alpha, ..., alpha)`` over the clients split the class's (shuffled) patches;
as in the NIID-Bench reference code, a client that already holds ``N / num_clients`` patches gets
no more (its proportion is zeroed for the later classes), which keeps sizes from running away.

Options:
    alpha: Concentration (> 0).  Small values (0.1) give clients few classes each; large values
        (100) approach ``iid``.  Default 0.5.
    min_size: Patches every client must hold (>= 1; capped at ``N // num_clients``).  Default 10.
        The whole draw is repeated (up to 10 times) until every client reaches it; if none does,
        the last draw is repaired by moving random patches from the largest clients.

Each client gets the modalities its patches have.  Every patch goes to exactly one client.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedrs.data.metadata import labels_matrix
from fedrs.errors import InputError

from .base import Assignment, int_option, number_option, register_partition

MAX_DRAWS = 10
"""Dirichlet draws tried before the size repair."""


def primary_labels(labels: pd.Series) -> np.ndarray:
    """Primary class of each patch: its globally rarest label, or 19 when it has none."""
    matrix = labels_matrix(labels) > 0
    frequency = matrix.sum(axis=0).astype(np.float64)
    primary = np.where(matrix, frequency, np.inf).argmin(axis=1)
    return np.where(matrix.any(axis=1), primary, matrix.shape[1]).astype(np.int64)


def _draw(
    class_sizes: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """(classes, clients) patch counts of one Dirichlet draw with the size cap."""
    total = int(class_sizes.sum())
    counts = np.zeros((len(class_sizes), num_clients), dtype=np.int64)
    held = np.zeros(num_clients, dtype=np.int64)
    for c, size in enumerate(class_sizes):
        if size == 0:
            continue
        p = np.nan_to_num(rng.dirichlet(np.full(num_clients, alpha)))
        p = np.where(held < total / num_clients, p, 0.0)
        p = p / p.sum() if p.sum() > 0 else np.full(num_clients, 1.0 / num_clients)
        cuts = (np.cumsum(p) * size).astype(np.int64)
        cuts[-1] = size
        counts[c] = np.diff(cuts, prepend=0)
        held += counts[c]
    return counts


def _repair(
    clients: np.ndarray, num_clients: int, need: int, rng: np.random.Generator
) -> np.ndarray:
    """Move random patches from the largest clients until every client holds ``need``."""
    clients = clients.copy()
    sizes = np.bincount(clients, minlength=num_clients)
    for client in np.flatnonzero(sizes < need):
        while sizes[client] < need:
            donor = int(np.argmax(sizes))
            take = int(min(need - sizes[client], sizes[donor] - need))
            rows = rng.choice(np.flatnonzero(clients == donor), size=take, replace=False)
            clients[rows] = client
            sizes[donor] -= take
            sizes[client] += take
    return clients


def check_options(alpha: object, min_size: object) -> tuple[float, int]:
    """``alpha`` (> 0) and ``min_size`` (>= 1) as numbers, else InputError."""
    alpha = number_option("dirichlet", "alpha", alpha)
    if alpha <= 0:
        raise InputError(f"partition 'dirichlet': alpha must be > 0, got {alpha}")
    min_size = int_option("dirichlet", "min_size", min_size)
    if min_size < 1:
        raise InputError(f"partition 'dirichlet': min_size must be >= 1, got {min_size}")
    return alpha, min_size


@register_partition("dirichlet", check=check_options)
def dirichlet_partition(
    table: pd.DataFrame,
    num_clients: int,
    rng: np.random.Generator,
    *,
    alpha: float = 0.5,
    min_size: int = 10,
) -> Assignment:
    """Label-skewed shards (see the module docstring)."""
    alpha, min_size = check_options(alpha, min_size)
    need = min(min_size, len(table) // num_clients)
    primary = primary_labels(table["labels"])
    class_sizes = np.bincount(primary, minlength=20)
    shuffled = rng.permutation(len(primary))
    rows = shuffled[np.argsort(primary[shuffled], kind="stable")]  # grouped by class
    for _ in range(MAX_DRAWS):
        counts = _draw(class_sizes, num_clients, alpha, rng)
        if counts.sum(axis=0).min() >= need:
            break
    client_ids = np.tile(np.arange(num_clients), len(class_sizes))
    clients = np.empty(len(primary), dtype=np.int64)
    clients[rows] = np.repeat(client_ids, counts.ravel())
    if counts.sum(axis=0).min() < need:
        clients = _repair(clients, num_clients, need, rng)
    return Assignment(clients)
