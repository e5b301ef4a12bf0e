"""Hash-code retrieval: the faiss Hamming index, the retrieval metrics, and search over archives.

``HashIndex`` (:mod:`~fedrs.retrieval.index`) stores K-bit codes with external ids and answers
k-nearest-neighbour queries by Hamming distance (ties in insertion order);
``mean_average_precision`` (two conventions: AP divided by the relevant items retrieved in the
top k, or by min(k, R)), ``precision_at_k``, ``recall_at_k``, ``ndcg_at_k`` and
``evaluate_retrieval`` (:mod:`~fedrs.retrieval.metrics`) score a set of codes against multi-hot
labels (relevant = at least one shared label). ``ArchiveSearch``
(:mod:`~fedrs.retrieval.archive_search`) searches one ``.fedrs`` archive by its codes;
``federated_search`` (:mod:`~fedrs.retrieval.federated`) merges the top k of several archives,
each answering only its own, and equals ``central_search`` over all of them.

Hash codes themselves (packed and unpacked forms) are :mod:`fedrs.codes`; the ``.fedrs`` file is
:mod:`fedrs.container`; compressing, decompressing and hashing queries is
:mod:`fedrs.compression`.
"""

from __future__ import annotations

from fedrs.retrieval.archive_search import ArchiveSearch
from fedrs.retrieval.errors import CorruptIndexError, ParticipantError
from fedrs.retrieval.federated import (
    CentralIndex,
    CodeHolder,
    Hit,
    IndexParticipant,
    SearchParticipant,
    SearchResult,
    central_search,
    federated_search,
)
from fedrs.retrieval.index import (
    PAD_DISTANCE,
    PAD_ID,
    HashIndex,
    hamming_distances,
    set_faiss_threads,
)
from fedrs.retrieval.metrics import (
    RankedRelevance,
    average_precisions,
    evaluate_retrieval,
    evaluate_retrieval_per_query,
    mean_average_precision,
    mean_average_precision_min_k_r,
    ndcg_at_k,
    precision_at_k,
    random_codes_baseline,
    random_codes_evaluation,
    rank_relevance,
    recall_at_k,
    relevance_prior,
)

__all__ = [
    "PAD_DISTANCE",
    "PAD_ID",
    "ArchiveSearch",
    "CentralIndex",
    "CodeHolder",
    "CorruptIndexError",
    "HashIndex",
    "Hit",
    "IndexParticipant",
    "ParticipantError",
    "RankedRelevance",
    "SearchParticipant",
    "SearchResult",
    "average_precisions",
    "central_search",
    "evaluate_retrieval",
    "evaluate_retrieval_per_query",
    "federated_search",
    "hamming_distances",
    "mean_average_precision",
    "mean_average_precision_min_k_r",
    "ndcg_at_k",
    "precision_at_k",
    "random_codes_baseline",
    "random_codes_evaluation",
    "rank_relevance",
    "recall_at_k",
    "relevance_prior",
    "set_faiss_threads",
]
