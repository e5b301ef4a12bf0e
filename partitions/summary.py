"""Per-client summary of shards: size, modalities, main countries and labels (vectorised)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedrs.data.facts import LABELS_19
from fedrs.data.metadata import labels_matrix
from fedrs.errors import InputError

from .base import ClientShard, prepare_metadata


@dataclass(frozen=True)
class ShardSummary:
    """What one client holds.

    Attributes:
        client_id: The client.
        patches: Number of patches.
        modalities: The client's modalities.
        countries: ``(country, share of the client's patches)``, most frequent first.
        labels: ``(label, share of the client's patches carrying it)``, most frequent first.
    """

    client_id: int
    patches: int
    modalities: tuple[str, ...]
    countries: tuple[tuple[str, float], ...]
    labels: tuple[tuple[str, float], ...]


def _top(
    counts: np.ndarray, names: Sequence[str], total: int, top: int
) -> tuple[tuple[str, float], ...]:
    order = np.argsort(-counts, kind="stable")[:top]
    return tuple((names[i], float(counts[i]) / total) for i in order if counts[i] > 0)


def summarize_shards(
    shards: Sequence[ClientShard], metadata: pd.DataFrame, *, top: int = 3
) -> list[ShardSummary]:
    """Summaries of ``shards`` drawn from ``metadata`` (the table they were made from).

    Args:
        shards: Client shards.
        metadata: Metadata with every patch of the shards.
        top: How many countries and labels to keep per client.

    Raises:
        InputError: A shard names a patch the metadata does not have.
    """

    table = prepare_metadata(metadata)
    sizes = np.array([len(s) for s in shards], dtype=np.int64)
    ids = [p for s in shards for p in s.patch_ids]
    rows = pd.Index(table["patch_id"].astype(str)).get_indexer(pd.Index(ids, dtype=object))
    if (rows < 0).any():
        missing = ids[int(np.flatnonzero(rows < 0)[0])]
        raise InputError(f"patch {missing!r} of the shards is not in the metadata")
    owner = np.repeat(np.arange(len(shards)), sizes)
    countries = table["country"].to_numpy(dtype=object)[rows]
    codes, names = pd.factorize(pd.Series(countries, dtype=object).fillna("unknown"))
    country_counts = np.zeros((len(shards), max(len(names), 1)), dtype=np.int64)
    np.add.at(country_counts, (owner, codes), 1)
    label_counts = np.zeros((len(shards), len(LABELS_19)), dtype=np.float64)
    if len(rows):
        matrix = labels_matrix(table["labels"].iloc[rows])
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        nonempty = sizes > 0
        label_counts[nonempty] = np.add.reduceat(matrix, starts[nonempty], axis=0)
    country_names = [str(n) for n in names]
    return [
        ShardSummary(
            client_id=shard.client_id,
            patches=int(sizes[i]),
            modalities=shard.modalities,
            countries=_top(country_counts[i], country_names, max(int(sizes[i]), 1), top),
            labels=_top(label_counts[i], LABELS_19, max(int(sizes[i]), 1), top),
        )
        for i, shard in enumerate(shards)
    ]
