"""Retrieval metrics for multi-label hash codes (mAP@k in two conventions, P@k, R@k, NDCG@k).

Conventions shared by every function here:

* **Codes** may be packed ``uint8`` ``(N, K/8)`` or unpacked ``(N, K)`` (``±1``, ``{0, 1}`` as
  bool/int8, real scores with bit = value > 0); see :mod:`fedrs.retrieval.index`. Hamming
  distances are exact (XOR + popcount in numpy).
* **Labels** are multi-hot ``(N, L)`` arrays (``L = 19`` for BigEarthNet), bool or numeric with
  values 0/1.
* **Relevance**: a database item is relevant to a query when they share at least one label. Its
  **grade** (for NDCG) is the number of labels they share.
* **Ranking**: database items sorted by Hamming distance to the query; equal distances keep
  database order (the item stored first ranks first). This is the order
  :meth:`fedrs.retrieval.HashIndex.search` returns.
* ``k`` larger than the database is clipped to the database size.
* Each metric is computed per query and averaged over the queries
  (:func:`average_precisions` and :func:`evaluate_retrieval_per_query` give the per-query
  values, e.g. for a bootstrap interval over queries). The ranking is a faiss k-nearest-neighbour
  search (:class:`fedrs.retrieval.HashIndex`) of blocks of queries (``chunk_size``, by default
  1,024), so memory grows with ``block x k``, never with ``queries x database``; relevance counts
  over the whole database (``R``, the ideal grades of NDCG) come from the distinct label sets of
  queries and database, so a ``120,000 x 270,000`` evaluation builds no such matrix either.

Definitions, with ``rel(i)`` = 1 if the item at rank ``i`` is relevant, ``R`` = number of
relevant items in the whole database, ``R_k = sum_{i<=k} rel(i)``, ``P(i) = R_i / i``:

* ``AP@k = (1 / R_k) * sum_{i<=k} P(i) * rel(i)``, and 0 when ``R_k = 0``; ``mAP@k`` is its mean
  (key ``map@k``, ``normalize="retrieved"``). This is the mAP@k of the deep-hashing evaluation
  code (HashNet, DPSH, DSH): precision averaged over the relevant items *retrieved* within the
  top ``k``. It is optimistic: a single relevant hit at rank 1 scores 1.0 however many relevant
  items the top ``k`` missed.
* ``AP@k min(k,R) = (1 / min(k, R)) * sum_{i<=k} P(i) * rel(i)``, and 0 when ``R = 0``; its mean
  is ``mAP@k min(k,R)`` (key ``map@k_min_k_r``, ``normalize="min_k_r"``), the convention of many
  remote-sensing hashing papers. ``min(k, R)`` is the most relevant items the top ``k`` can
  hold, so AP reaches 1 exactly when the first ``min(k, R)`` ranks are all relevant, and
  ``AP@k min(k,R) <= AP@k``, equal when ``R_k = min(k, R)`` (the top ``k`` holds as many relevant
  items as it can), e.g. one relevant hit at rank 1 out of ``R = 5``, ``k = 20``: 1.0 vs 1/5.
* ``P@k = R_k / k``.
* ``R@k = R_k / R``, and 0 when ``R = 0``.
* ``NDCG@k = DCG@k / IDCG@k`` with ``DCG@k = sum_{i<=k} (2**g(i) - 1) / log2(i + 1)`` where
  ``g(i)`` is the grade (shared labels) of the item at rank ``i``; ``IDCG@k`` is the DCG of the
  ideal ordering of the whole database (grades sorted in decreasing order); 0 when
  ``IDCG@k = 0``.

The random-code baseline: :func:`random_codes_baseline` scores random ``±1`` codes (fixed seed)
on the same labels (mAP@k in either convention), :func:`random_codes_evaluation` gives every
metric of :func:`evaluate_retrieval` for them; :func:`relevance_prior` is the expected ``P@k`` of
a random ranking.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fedrs.codes import as_packed
from fedrs.errors import InputError
from fedrs.retrieval.index import HashIndex

__all__ = [
    "RankedRelevance",
    "average_precisions",
    "evaluate_retrieval",
    "evaluate_retrieval_per_query",
    "mean_average_precision",
    "mean_average_precision_min_k_r",
    "ndcg_at_k",
    "precision_at_k",
    "random_codes_baseline",
    "random_codes_evaluation",
    "rank_relevance",
    "recall_at_k",
    "relevance_prior",
]

_CHUNK_ELEMENTS = 1 << 21
"""Elements of a work array (e.g. query label sets x database label sets) handled at once."""

_QUERY_BLOCK = 1024
"""Queries ranked by one faiss search when ``chunk_size`` is not given."""

Normalize = Literal["retrieved", "min_k_r"]
"""mAP@k conventions: divide AP's sum by ``R_k`` (``"retrieved"``) or by ``min(k, R)``."""


@dataclass(frozen=True)
class RankedRelevance:
    """Relevance of the top-``k`` ranked database items of each query.

    Attributes:
        relevant: ``(Q, k)`` bool, ``relevant[q, i]`` for the item at rank ``i + 1``.
        grades: ``(Q, k)`` int32, labels shared with the item at rank ``i + 1``.
        ideal_grades: ``(Q, k)`` int32, the ``k`` largest grades over the whole database,
            in decreasing order.
        num_relevant: ``(Q,)`` int64, relevant items in the whole database.
        positions: ``(Q, k)`` int64, database positions of the ranked items.
    """

    relevant: np.ndarray
    grades: np.ndarray
    ideal_grades: np.ndarray
    num_relevant: np.ndarray
    positions: np.ndarray

    @property
    def k(self) -> int:
        """Ranking depth (after clipping to the database size)."""
        return int(self.relevant.shape[1])

    def truncated(self, k: int) -> RankedRelevance:
        """The same ranking cut to depth ``min(k, self.k)``."""
        kk = min(k, self.k)
        return RankedRelevance(
            self.relevant[:, :kk],
            self.grades[:, :kk],
            self.ideal_grades[:, :kk],
            self.num_relevant,
            self.positions[:, :kk],
        )


# ------------------------------------------------------------------------------------------------
# Input checks


def _check_k(k: Any, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InputError(f"{name}: expected a positive integer, got {k!r}")
    return int(k)


def _labels(labels: Any, rows: int, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise InputError(f"{name}: expected a 2-D multi-hot array (N, L), got shape {arr.shape}")
    if arr.shape[0] != rows:
        raise InputError(f"{name}: {arr.shape[0]} rows but {rows} codes")
    if arr.dtype != np.bool_:
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise InputError(f"{name}: expected bool or numeric labels, got dtype {arr.dtype}")
        if not ((arr == 0) | (arr == 1)).all():
            raise InputError(f"{name}: multi-hot labels must be 0 or 1")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _label_pair(
    query_labels: Any, db_labels: Any, query_rows: int, db_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Checked query and database labels with the given rows and one number of classes."""
    ql = _labels(query_labels, query_rows, "query_labels")
    dl = _labels(db_labels, db_rows, "db_labels")
    if ql.shape[1] != dl.shape[1]:
        raise InputError(f"query_labels has {ql.shape[1]} classes but db_labels has {dl.shape[1]}")
    return ql, dl


def _inputs(
    query_codes: Any, db_codes: Any, query_labels: Any, db_labels: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    q = as_packed(query_codes, name="query_codes")
    d = as_packed(db_codes, 8 * q.shape[1], name="db_codes")
    if q.shape[0] == 0:
        raise InputError("query_codes: no queries")
    if d.shape[0] == 0:
        raise InputError("db_codes: empty database")
    ql, dl = _label_pair(query_labels, db_labels, q.shape[0], d.shape[0])
    return q, d, ql, dl


def _chunk_rows(chunk_size: int | None, default: int) -> int:
    """Rows handled at once: ``chunk_size`` when given (checked), else ``default``."""
    return default if chunk_size is None else _check_k(chunk_size, "chunk_size")


# ------------------------------------------------------------------------------------------------
# Ranking


def _grade_counts(ql: np.ndarray, dl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How many database items share ``g`` labels with each query, for ``g = 0 ... L``.

    Computed once per distinct query label set against the distinct database label sets (with
    their multiplicities), so the cost grows with the number of distinct sets, not with
    ``Q x N``.

    Returns:
        ``counts`` ``(S, L + 1)`` int64 for the ``S`` distinct query label sets, and ``(Q,)``
        the set of each query (row of ``counts``).
    """
    q_sets, q_inverse = np.unique(ql, axis=0, return_inverse=True)
    d_sets, d_multiplicity = np.unique(dl, axis=0, return_counts=True)
    width = ql.shape[1] + 1
    counts = np.zeros((len(q_sets), width), dtype=np.int64)
    d_t = np.ascontiguousarray(d_sets.T)
    weights = d_multiplicity.astype(np.float64)
    rows = max(1, _CHUNK_ELEMENTS // len(d_sets))
    for start in range(0, len(q_sets), rows):
        shared = np.rint(q_sets[start : start + rows] @ d_t).astype(np.int64)
        n = shared.shape[0]
        slots = shared + width * np.arange(n, dtype=np.int64)[:, None]
        summed = np.bincount(
            slots.ravel(),
            weights=np.broadcast_to(weights, shared.shape).ravel(),
            minlength=n * width,
        )
        counts[start : start + n] = np.rint(summed).astype(np.int64).reshape(n, width)
    return counts, np.asarray(q_inverse).reshape(-1)


def _ideal_grades(counts: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest grades of each row's database, in decreasing order, from ``counts``
    (``counts[q, g]`` items of grade ``g``; ``k`` at most the database size)."""
    ends = np.cumsum(counts[:, ::-1], axis=1)  # items of grade >= L, >= L - 1, ..., >= 0
    rows, width = ends.shape
    # the item at rank i (from 0) has grade L - j, j = how many of those ends are <= i; one
    # sorted search over all rows (each row's ends shifted past the previous row's)
    shift = (int(ends[:, -1].max()) + 1) * np.arange(rows, dtype=np.int64)[:, None]
    ranks = np.arange(k, dtype=np.int64)[None, :] + shift
    found = np.searchsorted((ends + shift).ravel(), ranks.ravel(), side="right")
    j = found.reshape(rows, k) - width * np.arange(rows, dtype=np.int64)[:, None]
    return (width - 1 - j).astype(np.int32)


def _ranked_blocks(
    q: np.ndarray, d: np.ndarray, ql: np.ndarray, dl: np.ndarray, k: int, rows: int
) -> Iterator[RankedRelevance]:
    """The :class:`RankedRelevance` of ``rows`` queries at a time (checked inputs, ``k`` at
    most the database size): a faiss search for the ranking, label sets for the counts."""
    index = HashIndex(8 * q.shape[1])
    index.add(d)  # ids = database positions; ties come back in database order
    counts, query_set = _grade_counts(ql, dl)
    num_relevant = dl.shape[0] - counts[:, 0]
    for start in range(0, q.shape[0], rows):
        stop = min(start + rows, q.shape[0])
        _, positions = index.search(q[start:stop], k)
        shared = np.matmul(dl[positions], ql[start:stop, :, None])[..., 0]
        grades = np.rint(shared).astype(np.int32)
        sets = query_set[start:stop]
        yield RankedRelevance(
            relevant=grades > 0,
            grades=grades,
            ideal_grades=_ideal_grades(counts[sets], k),
            num_relevant=num_relevant[sets],
            positions=positions,
        )


def _blocks(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    k: int,
    chunk_size: int | None,
) -> Iterator[RankedRelevance]:
    """Check the inputs, then :func:`_ranked_blocks` at depth ``min(k, N)``."""
    k = _check_k(k)
    q, d, ql, dl = _inputs(query_codes, db_codes, query_labels, db_labels)
    kk = min(k, d.shape[0])
    default = max(1, min(_QUERY_BLOCK, _CHUNK_ELEMENTS // (kk * max(1, ql.shape[1]))))
    rows = _chunk_rows(chunk_size, default)
    return _ranked_blocks(q, d, ql, dl, kk, rows)


def rank_relevance(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    k: int,
    *,
    chunk_size: int | None = None,
) -> RankedRelevance:
    """Rank the database for each query and record the relevance of the top ``k``.

    The building block of every metric in this module (see the module docstring for the
    ranking and relevance rules). The metrics themselves consume the ranking block by block;
    this function keeps the whole ``(Q, k)`` result.

    Args:
        query_codes: ``Q`` codes, packed or unpacked.
        db_codes: ``N`` codes of the same length.
        query_labels: ``(Q, L)`` multi-hot.
        db_labels: ``(N, L)`` multi-hot.
        k: ranking depth, clipped to ``N``.
        chunk_size: queries per faiss search; by default 1,024 (fewer for a deep ``k``).

    Returns:
        The :class:`RankedRelevance` of depth ``min(k, N)``.

    Raises:
        InputError: bad codes or labels, mismatched sizes, empty inputs, ``k < 1``.
    """
    parts = list(_blocks(query_codes, db_codes, query_labels, db_labels, k, chunk_size))
    return RankedRelevance(
        relevant=np.concatenate([p.relevant for p in parts]),
        grades=np.concatenate([p.grades for p in parts]),
        ideal_grades=np.concatenate([p.ideal_grades for p in parts]),
        num_relevant=np.concatenate([p.num_relevant for p in parts]),
        positions=np.concatenate([p.positions for p in parts]),
    )


# ------------------------------------------------------------------------------------------------
# Per-query metrics of a ranking


def _precision_sum(ranked: RankedRelevance) -> tuple[np.ndarray, np.ndarray]:
    """``sum_{i<=k} P(i) rel(i)`` and ``R_k`` per query."""
    rel = ranked.relevant.astype(np.float64)
    hits = np.cumsum(rel, axis=1)
    precision = hits / np.arange(1, ranked.k + 1, dtype=np.float64)
    return (precision * rel).sum(axis=1), hits[:, -1]


def _average_precision(ranked: RankedRelevance) -> np.ndarray:
    total, retrieved = _precision_sum(ranked)
    return np.divide(total, retrieved, out=np.zeros_like(total), where=retrieved > 0)


def _average_precision_min_k_r(ranked: RankedRelevance) -> np.ndarray:
    # ranked.k is k clipped to the database size N; R <= N, so min(ranked.k, R) = min(k, R).
    total, _ = _precision_sum(ranked)
    limit = np.minimum(ranked.num_relevant, ranked.k).astype(np.float64)
    return np.divide(total, limit, out=np.zeros_like(total), where=limit > 0)


def _precision(ranked: RankedRelevance) -> np.ndarray:
    return np.asarray(ranked.relevant.sum(axis=1) / ranked.k, dtype=np.float64)


def _recall(ranked: RankedRelevance) -> np.ndarray:
    hits = ranked.relevant.sum(axis=1).astype(np.float64)
    total = ranked.num_relevant.astype(np.float64)
    return np.divide(hits, total, out=np.zeros_like(hits), where=total > 0)


def _dcg(grades: np.ndarray) -> np.ndarray:
    discount = 1.0 / np.log2(np.arange(2, grades.shape[1] + 2, dtype=np.float64))
    gains: np.ndarray = np.exp2(grades.astype(np.float64)) - 1.0
    return gains @ discount


def _ndcg(ranked: RankedRelevance) -> np.ndarray:
    dcg = _dcg(ranked.grades)
    idcg = _dcg(ranked.ideal_grades)
    return np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)


_METRICS: dict[str, Callable[[RankedRelevance], np.ndarray]] = {
    "map@{k}": _average_precision,
    "map@{k}_min_k_r": _average_precision_min_k_r,
    "p@{k}": _precision,
    "r@{k}": _recall,
    "ndcg@{k}": _ndcg,
}
"""``evaluate_retrieval``'s key (``{k}`` = the depth) -> per-query score of a ranking."""

_MAP_KEYS: dict[str, str] = {"retrieved": "map@{k}", "min_k_r": "map@{k}_min_k_r"}
"""mAP convention (``normalize``) -> its key in :data:`_METRICS`."""


def _map_key(normalize: Any) -> str:
    try:
        return _MAP_KEYS[normalize]
    except (KeyError, TypeError):
        raise InputError(
            f"normalize: expected one of {sorted(_MAP_KEYS)}, got {normalize!r}"
        ) from None


def _per_query(
    name: str,
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    k: int,
    chunk_size: int | None,
) -> np.ndarray:
    metric = _METRICS[name]
    blocks = _blocks(query_codes, db_codes, query_labels, db_labels, k, chunk_size)
    return np.concatenate([metric(ranked) for ranked in blocks])


def _mean_metric(
    name: str,
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    k: int,
    chunk_size: int | None,
) -> float:
    scores = _per_query(name, query_codes, db_codes, query_labels, db_labels, k, chunk_size)
    return float(scores.mean())


# ------------------------------------------------------------------------------------------------
# Public metrics


def mean_average_precision(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    k: int,
    *,
    normalize: Normalize = "retrieved",
    chunk_size: int | None = None,
) -> float:
    """mAP@k: the mean over queries of ``AP@k = (1/D) sum_{i<=k} P(i) rel(i)``.

    ``P(i)`` is the precision of the top ``i`` and ``rel(i)`` = 1 when the item at rank ``i`` is
    relevant (shares at least one label with the query); ranking by Hamming distance, ties in
    database order. The divisor ``D`` depends on ``normalize``:

    * ``"retrieved"`` (default, key ``map@k``): ``D = R_k``, the relevant items *retrieved* in
      the top ``k``; AP@k averages the precision at the ranks of the retrieved relevant items
      (the deep-hashing evaluation code's convention). One relevant hit at rank 1 scores 1.0.
    * ``"min_k_r"`` (key ``map@k_min_k_r``): ``D = min(k, R)``, ``R`` the relevant items in the
      whole database (remote-sensing hashing papers' convention). One relevant hit at rank 1
      out of ``R = 5`` scores ``1/5`` at ``k >= 5``. Never above the ``"retrieved"`` figure;
      equal when the top ``k`` holds ``min(k, R)`` relevant items.

    Either way a query with ``D = 0`` (no relevant item retrieved, resp. none in the database)
    scores 0, and ``k`` is clipped to ``N`` (``min(k, R)`` is unchanged by it, as ``R <= N``).

    Args:
        query_codes: ``Q`` codes, packed ``uint8`` ``(Q, K/8)`` or unpacked ``(Q, K)``.
        db_codes: ``N`` codes of the same length.
        query_labels: ``(Q, L)`` multi-hot.
        db_labels: ``(N, L)`` multi-hot.
        k: ranking depth (clipped to ``N``).
        normalize: ``"retrieved"`` or ``"min_k_r"``, see above.
        chunk_size: queries per faiss search (memory control); by default 1,024.

    Returns:
        mAP@k in ``[0, 1]``.

    Raises:
        InputError: bad codes or labels, mismatched sizes, empty inputs, ``k < 1``, an unknown
            ``normalize``.
    """
    key = _map_key(normalize)
    return _mean_metric(key, query_codes, db_codes, query_labels, db_labels, k, chunk_size)


def average_precisions(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    k: int,
    *,
    normalize: Normalize = "retrieved",
    chunk_size: int | None = None,
) -> np.ndarray:
    """AP@k of each query: what :func:`mean_average_precision` averages.

    Arguments, conventions and errors as in :func:`mean_average_precision`.

    Returns:
        ``(Q,)`` float64, in query order; its mean is :func:`mean_average_precision`.
    """
    key = _map_key(normalize)
    return _per_query(key, query_codes, db_codes, query_labels, db_labels, k, chunk_size)


def mean_average_precision_min_k_r(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    k: int,
    *,
    chunk_size: int | None = None,
) -> float:
    """mAP@k min(k,R): :func:`mean_average_precision` with ``normalize="min_k_r"``.

    ``AP@k = (1 / min(k, R)) sum_{i<=k} P(i) rel(i)``, ``R`` = relevant items in the database,
    0 when ``R = 0``. Arguments and errors as in :func:`mean_average_precision`.
    """
    return mean_average_precision(
        query_codes,
        db_codes,
        query_labels,
        db_labels,
        k,
        normalize="min_k_r",
        chunk_size=chunk_size,
    )


def precision_at_k(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    k: int,
    *,
    chunk_size: int | None = None,
) -> float:
    """Mean precision@k: the fraction of the top ``k`` that is relevant.

    Arguments, ranking and errors as in :func:`mean_average_precision`.
    """
    return _mean_metric("p@{k}", query_codes, db_codes, query_labels, db_labels, k, chunk_size)


def recall_at_k(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    k: int,
    *,
    chunk_size: int | None = None,
) -> float:
    """Mean recall@k: relevant items in the top ``k`` over all relevant items in the database.

    A query with no relevant item in the database scores 0. Arguments, ranking and errors as in
    :func:`mean_average_precision`.
    """
    return _mean_metric("r@{k}", query_codes, db_codes, query_labels, db_labels, k, chunk_size)


def ndcg_at_k(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    k: int,
    *,
    chunk_size: int | None = None,
) -> float:
    """Mean NDCG@k with graded relevance = number of labels shared with the query.

    ``DCG@k = sum_{i<=k} (2**g(i) - 1) / log2(i + 1)``; ``IDCG@k`` is the DCG@k of the whole
    database sorted by grade, so NDCG@k = 1 only when the top ``k`` holds the ``k`` best-graded
    items in grade order. Queries whose database holds no relevant item score 0. Arguments,
    ranking and errors as in :func:`mean_average_precision`.
    """
    return _mean_metric("ndcg@{k}", query_codes, db_codes, query_labels, db_labels, k, chunk_size)


def evaluate_retrieval(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    ks: Iterable[int] = (10, 20, 100),
    *,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """All metrics at every ``k`` of ``ks`` from a single ranking pass.

    Args:
        query_codes: ``Q`` codes, packed ``uint8`` ``(Q, K/8)`` or unpacked ``(Q, K)``.
        db_codes: ``N`` codes of the same length.
        query_labels: ``(Q, L)`` multi-hot.
        db_labels: ``(N, L)`` multi-hot.
        ks: ranking depths (each clipped to ``N`` for the computation, named as given).
        chunk_size: queries per chunk (memory control).

    Returns:
        ``{"map@k": ..., "map@k_min_k_r": ..., "p@k": ..., "r@k": ..., "ndcg@k": ...}`` for each
        ``k`` in ``ks``, e.g. ``map@10, map@20, map@100, map@20_min_k_r, p@20, r@20, ndcg@20``
        for the default ``ks``. ``map@k`` divides AP by the relevant items retrieved in the top
        ``k``, ``map@k_min_k_r`` by ``min(k, R)`` (see :func:`mean_average_precision`).

    Raises:
        InputError: as :func:`mean_average_precision`, or an empty ``ks``.
    """
    scores = evaluate_retrieval_per_query(
        query_codes, db_codes, query_labels, db_labels, ks, chunk_size=chunk_size
    )
    return {key: float(values.mean()) for key, values in scores.items()}


def evaluate_retrieval_per_query(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    ks: Iterable[int] = (10, 20, 100),
    *,
    chunk_size: int | None = None,
) -> dict[str, np.ndarray]:
    """Every metric of :func:`evaluate_retrieval` for each query, from one ranking pass.

    Arguments and errors as in :func:`evaluate_retrieval`.

    Returns:
        The keys of :func:`evaluate_retrieval`, each a ``(Q,)`` float64 array in query order
        whose mean is that function's figure (e.g. to resample the queries:
        :func:`fedrs.convergence.bootstrap_interval`).
    """
    depths = list(dict.fromkeys(_check_k(k, "ks") for k in ks))
    if not depths:
        raise InputError("ks: give at least one ranking depth")
    parts: dict[str, list[np.ndarray]] = {key.format(k=k): [] for key in _METRICS for k in depths}
    blocks = _blocks(query_codes, db_codes, query_labels, db_labels, max(depths), chunk_size)
    for ranked in blocks:
        for key, metric in _METRICS.items():
            for k in depths:
                parts[key.format(k=k)].append(metric(ranked.truncated(k)))
    return {key: np.concatenate(values) for key, values in parts.items()}


# ------------------------------------------------------------------------------------------------
# Baselines


def _random_codes(
    query_labels: Any, db_labels: Any, bits: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random ``±1`` codes for the queries, then the database, from ``default_rng(seed)``."""
    bits = _check_k(bits, "bits")
    if bits % 8:
        raise InputError(f"bits: expected a positive multiple of 8, got {bits}")
    n_q, n_db = np.shape(query_labels)[0], np.shape(db_labels)[0]
    rng = np.random.default_rng(seed)
    query_codes = rng.choice(np.array([-1, 1], dtype=np.int8), size=(n_q, bits))
    db_codes = rng.choice(np.array([-1, 1], dtype=np.int8), size=(n_db, bits))
    return query_codes, db_codes


def random_codes_baseline(
    query_labels: Any,
    db_labels: Any,
    k: int,
    *,
    bits: int = 64,
    seed: int = 0,
    normalize: Normalize = "retrieved",
    chunk_size: int | None = None,
) -> float:
    """mAP@k of random ``±1`` codes on the given labels: the floor a trained model must beat.

    Codes are drawn with ``numpy.random.default_rng(seed)`` (queries first, then the database),
    so the figure is reproducible.

    Args:
        query_labels: ``(Q, L)`` multi-hot.
        db_labels: ``(N, L)`` multi-hot.
        k: ranking depth.
        bits: code length, a positive multiple of 8.
        seed: random seed.
        normalize: the mAP convention, as in :func:`mean_average_precision`.
        chunk_size: queries per chunk.

    Returns:
        mAP@k of the random codes.
    """
    query_codes, db_codes = _random_codes(query_labels, db_labels, bits, seed)
    return mean_average_precision(
        query_codes,
        db_codes,
        query_labels,
        db_labels,
        k,
        normalize=normalize,
        chunk_size=chunk_size,
    )


def random_codes_evaluation(
    query_labels: Any,
    db_labels: Any,
    ks: Iterable[int] = (10, 20, 100),
    *,
    bits: int = 64,
    seed: int = 0,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """:func:`evaluate_retrieval` of the random codes of :func:`random_codes_baseline`.

    One ranking pass for every ``k`` and both mAP conventions; ``map@k`` here equals
    ``random_codes_baseline(..., k, bits=bits, seed=seed)`` (the same codes). Arguments as in
    :func:`random_codes_baseline`, with ``ks`` the ranking depths.

    Returns:
        The keys of :func:`evaluate_retrieval` for the random codes.
    """
    query_codes, db_codes = _random_codes(query_labels, db_labels, bits, seed)
    return evaluate_retrieval(
        query_codes, db_codes, query_labels, db_labels, ks, chunk_size=chunk_size
    )


def relevance_prior(query_labels: Any, db_labels: Any, *, chunk_size: int | None = None) -> float:
    """Mean fraction of the database relevant to a query: the expected P@k of a random ranking.

    Args:
        query_labels: ``(Q, L)`` multi-hot.
        db_labels: ``(N, L)`` multi-hot.
        chunk_size: queries per chunk.

    Returns:
        ``mean_q R_q / N``.
    """
    ql_raw, dl_raw = np.asarray(query_labels), np.asarray(db_labels)
    if ql_raw.ndim != 2 or dl_raw.ndim != 2 or ql_raw.shape[0] == 0 or dl_raw.shape[0] == 0:
        raise InputError(
            f"labels: expected non-empty 2-D multi-hot arrays, got {ql_raw.shape} and "
            f"{dl_raw.shape}"
        )
    ql, dl = _label_pair(ql_raw, dl_raw, ql_raw.shape[0], dl_raw.shape[0])
    n_db = dl.shape[0]
    rows = _chunk_rows(chunk_size, max(1, _CHUNK_ELEMENTS // n_db))
    dl_t = np.ascontiguousarray(dl.T)
    counts = [
        np.count_nonzero(ql[start : start + rows] @ dl_t > 0.5, axis=1)
        for start in range(0, ql.shape[0], rows)
    ]
    return float(np.concatenate(counts).mean() / n_db)
