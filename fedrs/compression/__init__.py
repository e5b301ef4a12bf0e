"""Compress an archive into a ``.fedrs`` file, decompress it to GeoTIFFs, hash a query patch.

The Python face of ``fedrs compress`` (:mod:`~fedrs.compression.compress`), ``fedrs
decompress`` (:mod:`~fedrs.compression.decompress`) and ``fedrs search``
(:mod:`~fedrs.compression.query`), with the trained model they load
(:mod:`~fedrs.compression.trained`) and the patch GeoTIFFs they read and write
(:mod:`~fedrs.compression.patch_files`)::

    report = compress_archive("BigEarthNet-v2", "runs/centralized", "client-3.fedrs")
    decompress_archive("client-3.fedrs", "runs/centralized", "reconstructed/")
    query = hash_query_patch(["BigEarthNet-S2/<product>/<patch>"], "runs/centralized")
    archives = open_archives(["client-3.fedrs", "client-7.fedrs"])
    result = federated_search([ArchiveSearch(a) for a in archives], query.code[None, :], k=20)

The ``.fedrs`` file itself is :mod:`fedrs.container`'s; searching is :mod:`fedrs.retrieval`'s.
"""

from __future__ import annotations

from fedrs.compression._common import INFO_GROUP
from fedrs.compression.compress import (
    ARCHIVE_FORMAT,
    CompressReport,
    compress_archive,
    encode_patches,
)
from fedrs.compression.decompress import (
    DECOMPRESSED_MARKER,
    DecompressReport,
    decode_records,
    decompress_archive,
    record_patches,
)
from fedrs.compression.errors import ModelMismatchError
from fedrs.compression.query import (
    QueryCode,
    hash_query_patch,
    model_for_archives,
    open_archives,
    patch_code,
)
from fedrs.compression.trained import (
    CONFIG_FILE,
    MODEL_FILE,
    TrainedModel,
    as_trained_model,
    load_trained_model,
    model_fingerprint,
    model_for_archive,
)

__all__ = [
    "ARCHIVE_FORMAT",
    "CONFIG_FILE",
    "DECOMPRESSED_MARKER",
    "INFO_GROUP",
    "MODEL_FILE",
    "CompressReport",
    "DecompressReport",
    "ModelMismatchError",
    "QueryCode",
    "TrainedModel",
    "as_trained_model",
    "compress_archive",
    "decode_records",
    "decompress_archive",
    "encode_patches",
    "hash_query_patch",
    "load_trained_model",
    "model_fingerprint",
    "model_for_archive",
    "model_for_archives",
    "open_archives",
    "patch_code",
    "record_patches",
]
