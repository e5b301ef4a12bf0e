"""Hash-code retrieval: the faiss Hamming index and the retrieval metrics.

``HashIndex`` stores K-bit codes with external ids and answers k-nearest-neighbour queries by
Hamming distance (ties in insertion order); ``mean_average_precision``, ``precision_at_k``,
``recall_at_k``, ``ndcg_at_k`` and ``evaluate_retrieval`` score a set of codes against multi-hot
labels (relevant = at least one shared label).
"""

from __future__ import annotations

from fedrs.retrieval.container import (
    ArchiveWriter,
    CompressedArchive,
    ContainerError,
    ContainerExistsError,
    ContainerVersionError,
    CorruptArchiveError,
    CorruptRecordError,
    GeoReference,
    NotAContainerError,
    Record,
    RecordIterator,
    RecordNotFoundError,
)
from fedrs.retrieval.federated import (
    CentralIndex,
    CodeHolder,
    Hit,
    IndexParticipant,
    ParticipantError,
    SearchParticipant,
    SearchResult,
    central_search,
    federated_search,
)
from fedrs.retrieval.index import (
    PAD_DISTANCE,
    PAD_ID,
    CorruptIndexError,
    HashIndex,
    as_packed,
    hamming_distances,
    pack_codes,
    set_faiss_threads,
    unpack_codes,
)
from fedrs.retrieval.metrics import (
    RankedRelevance,
    evaluate_retrieval,
    mean_average_precision,
    ndcg_at_k,
    precision_at_k,
    random_codes_baseline,
    rank_relevance,
    recall_at_k,
    relevance_prior,
)

__all__ = [
    "PAD_DISTANCE",
    "PAD_ID",
    "ArchiveWriter",
    "CentralIndex",
    "CodeHolder",
    "CompressedArchive",
    "ContainerError",
    "ContainerExistsError",
    "ContainerVersionError",
    "CorruptArchiveError",
    "CorruptIndexError",
    "CorruptRecordError",
    "GeoReference",
    "HashIndex",
    "Hit",
    "IndexParticipant",
    "NotAContainerError",
    "ParticipantError",
    "RankedRelevance",
    "Record",
    "RecordIterator",
    "RecordNotFoundError",
    "SearchParticipant",
    "SearchResult",
    "as_packed",
    "central_search",
    "evaluate_retrieval",
    "federated_search",
    "hamming_distances",
    "mean_average_precision",
    "ndcg_at_k",
    "pack_codes",
    "precision_at_k",
    "random_codes_baseline",
    "rank_relevance",
    "recall_at_k",
    "relevance_prior",
    "set_faiss_threads",
    "unpack_codes",
]
