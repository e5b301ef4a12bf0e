"""Hash-code retrieval: the faiss Hamming index and the retrieval metrics.

``HashIndex`` stores K-bit codes with external ids and answers k-nearest-neighbour queries by
Hamming distance (ties in insertion order); ``mean_average_precision`` (two conventions: AP
divided by the relevant items retrieved in the top k, or by min(k, R)), ``precision_at_k``,
``recall_at_k``, ``ndcg_at_k`` and ``evaluate_retrieval`` score a set of codes against multi-hot
labels (relevant = at least one shared label).
"""

from __future__ import annotations

from fedrs.retrieval.archive_search import ArchiveSearch
from fedrs.retrieval.compress import (
    CompressReport,
    DecompressReport,
    QueryCode,
    compress_archive,
    decompress_archive,
    hash_query_patch,
    open_archives,
    patch_code,
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
from fedrs.retrieval.patch_files import (
    GeoTiffSource,
    QueryPatch,
    geotiff_source,
    read_patch_folders,
)
from fedrs.retrieval.trained import (
    ModelMismatchError,
    TrainedModel,
    load_trained_model,
    model_fingerprint,
    model_for_archive,
)

__all__ = [
    "PAD_DISTANCE",
    "PAD_ID",
    "ArchiveSearch",
    "CentralIndex",
    "CodeHolder",
    "CompressReport",
    "CorruptIndexError",
    "DecompressReport",
    "GeoTiffSource",
    "HashIndex",
    "Hit",
    "IndexParticipant",
    "ModelMismatchError",
    "ParticipantError",
    "QueryCode",
    "QueryPatch",
    "RankedRelevance",
    "SearchParticipant",
    "SearchResult",
    "TrainedModel",
    "average_precisions",
    "central_search",
    "compress_archive",
    "decompress_archive",
    "evaluate_retrieval",
    "evaluate_retrieval_per_query",
    "federated_search",
    "geotiff_source",
    "hamming_distances",
    "hash_query_patch",
    "load_trained_model",
    "mean_average_precision",
    "mean_average_precision_min_k_r",
    "model_fingerprint",
    "model_for_archive",
    "ndcg_at_k",
    "open_archives",
    "patch_code",
    "precision_at_k",
    "random_codes_baseline",
    "random_codes_evaluation",
    "rank_relevance",
    "read_patch_folders",
    "recall_at_k",
    "relevance_prior",
    "set_faiss_threads",
]
