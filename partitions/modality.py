"""``modality``: S1-only, S2-only and S1+S2 clients, as archives of different agencies.

Options (fractions of the clients, each in [0, 1], summing to 1):
    s1_only: Clients that hold and read only Sentinel-1.
    s2_only: Clients that hold and read only Sentinel-2.
    both: Clients that read both.
Defaults 0.3 / 0.3 / 0.4 when none is given; when some are given, the missing ones are 0.
Fractions become client counts by largest remainders (ties: s1_only, s2_only, both), so 10
clients give 3 / 3 / 4.  Client ids: the S1-only clients first, then S2-only, then both.

Which patches a client gets:

* A patch with only S1 goes to an S1-only client; when there is none, to a both-client (which
  then trains only its S1 side on it); when there is neither, to nobody.  The same for a patch
  with only S2.  These single-modality patches are dealt at random, equal up to one, among the
  clients that may take them.
* Patches with both modalities then fill the clients up (water-filling from the smallest client),
  so that client sizes are as equal as the data allows.  A both-client thus holds paired patches
  first.  An S1-only client reads only the S1 side of its patches (``modalities == ("s1",)``),
  even where the S2 side exists.

Every patch goes to at most one client.  When a kind of client cannot get any patch (e.g. both-
clients but no paired patch), InputError says so.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedrs.errors import InputError

from .base import Assignment, number_option, register_partition

KINDS: tuple[str, ...] = ("s1_only", "s2_only", "both")
KIND_MODALITIES: tuple[tuple[str, ...], ...] = (("s1",), ("s2",), ("s1", "s2"))
DEFAULT_FRACTIONS: tuple[float, ...] = (0.3, 0.3, 0.4)
_TOLERANCE = 1e-6


def client_counts(fractions: np.ndarray, num_clients: int) -> np.ndarray:
    """Largest-remainder rounding of ``fractions * num_clients`` (stable ties)."""
    exact = np.asarray(fractions, dtype=np.float64) * num_clients
    counts = np.floor(exact + _TOLERANCE).astype(np.int64)
    remainder = num_clients - int(counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:remainder]] += 1
    return counts


def water_fill(current: np.ndarray, extra: int, rng: np.random.Generator) -> np.ndarray:
    """How many of ``extra`` items each client gets so that the smallest totals rise evenly."""
    if extra <= 0 or len(current) == 0:
        return np.zeros(len(current), dtype=np.int64)
    low, high = int(current.min()), int(current.max()) + extra
    while low < high:  # largest level whose cost fits in ``extra``
        level = (low + high + 1) // 2
        if int(np.maximum(level - current, 0).sum()) <= extra:
            low = level
        else:
            high = level - 1
    quotas = np.maximum(low - current, 0).astype(np.int64)
    leftover = extra - int(quotas.sum())
    at_level = np.flatnonzero(current + quotas == low)
    quotas[rng.choice(at_level, size=leftover, replace=False)] += 1
    return quotas


def _fractions(s1_only: object, s2_only: object, both: object) -> np.ndarray:
    given = (s1_only, s2_only, both)
    if all(value is None for value in given):
        return np.array(DEFAULT_FRACTIONS)
    values = np.array(
        [
            0.0 if v is None else number_option("modality", k, v)
            for k, v in zip(KINDS, given, strict=True)
        ]
    )
    for kind, value in zip(KINDS, values, strict=True):
        if not 0.0 <= value <= 1.0:
            raise InputError(f"partition 'modality': {kind} must be in [0, 1], got {value}")
    if abs(values.sum() - 1.0) > _TOLERANCE:
        shown = ", ".join(f"{k}={v:g}" for k, v in zip(KINDS, values, strict=True))
        raise InputError(f"partition 'modality': fractions must sum to 1 ({shown})")
    return values


@register_partition("modality", check=_fractions)
def modality_partition(
    table: pd.DataFrame,
    num_clients: int,
    rng: np.random.Generator,
    *,
    s1_only: float | None = None,
    s2_only: float | None = None,
    both: float | None = None,
) -> Assignment:
    """Clients of three modality kinds (see the module docstring)."""
    counts = client_counts(_fractions(s1_only, s2_only, both), num_clients)
    kind_of_client = np.repeat(np.arange(len(KINDS)), counts)
    has_s1 = table["has_s1"].to_numpy(dtype=bool)
    has_s2 = table["has_s2"].to_numpy(dtype=bool)
    pools = (has_s1 & ~has_s2, ~has_s1 & has_s2, has_s1 & has_s2)
    both_clients = np.flatnonzero(kind_of_client == 2)
    clients = np.full(len(table), -1, dtype=np.int64)
    for kind in (0, 1):  # single-modality patches: own kind, else both-clients, else nobody
        takers = np.flatnonzero(kind_of_client == kind)
        takers = takers if len(takers) else both_clients
        rows = np.flatnonzero(pools[kind])
        if len(takers) and len(rows):
            clients[rows] = takers[rng.permutation(np.arange(len(rows)) % len(takers))]
    held = np.bincount(clients[clients >= 0], minlength=num_clients)
    paired = np.flatnonzero(pools[2])
    quotas = water_fill(held, len(paired), rng)
    clients[rng.permutation(paired)] = np.repeat(np.arange(num_clients), quotas)
    if (np.bincount(clients[clients >= 0], minlength=num_clients) == 0).any():
        pool_sizes = [int(p.sum()) for p in pools]
        raise InputError(
            "partition 'modality': cannot give every client a patch with "
            f"{counts[0]} S1-only, {counts[1]} S2-only and {counts[2]} both clients for "
            f"{pool_sizes[0]} S1-only, {pool_sizes[1]} S2-only and {pool_sizes[2]} paired patches"
        )
    return Assignment(clients, tuple(KIND_MODALITIES[k] for k in kind_of_client))
