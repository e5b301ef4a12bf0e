"""The ``.fedrs`` compressed-archive container: bitstreams, hash codes, labels, georeference.

An archive owner stores every patch of its archive as the bitstreams of the learned codec and
answers content queries from the hash codes read from those bitstreams. One ``.fedrs`` file holds
a whole archive (the format: :mod:`fedrs.container.format`); :class:`ArchiveWriter` writes it,
:class:`CompressedArchive` reads it, a :class:`Record` is one patch, and the errors derive from
:class:`ContainerError`. Searching an archive by its codes is :mod:`fedrs.retrieval`'s
(:class:`~fedrs.retrieval.ArchiveSearch`).

Writing::

    with ArchiveWriter("client-3.fedrs", hash_bits=64, model_fingerprint=fp, meta=config) as w:
        for patch in patches:
            w.add(Record(patch_id, code, streams={"s2": {"y": y_bytes, "z": z_bytes}},
                         shapes={"s2": {"y": [8, 8], "z": [2, 2]}}, labels=multi_hot))

Reading::

    archive = CompressedArchive.open("client-3.fedrs")
    distances, positions = ArchiveSearch(archive).search(query_codes, k=20)
    record = archive.record(int(positions[0, 0]))  # or archive.record("S2A_MSIL2A_...")
"""

from __future__ import annotations

from fedrs.container.errors import (
    ContainerError,
    ContainerExistsError,
    ContainerVersionError,
    CorruptArchiveError,
    CorruptRecordError,
    NotAContainerError,
    RecordNotFoundError,
)
from fedrs.container.format import CONTAINER_FORMAT, FORMAT_VERSION, MAGIC
from fedrs.container.reader import CompressedArchive, RecordIterator
from fedrs.container.record import GeoReference, Record
from fedrs.container.writer import ArchiveWriter

__all__ = [
    "CONTAINER_FORMAT",
    "FORMAT_VERSION",
    "MAGIC",
    "ArchiveWriter",
    "CompressedArchive",
    "ContainerError",
    "ContainerExistsError",
    "ContainerVersionError",
    "CorruptArchiveError",
    "CorruptRecordError",
    "GeoReference",
    "NotAContainerError",
    "Record",
    "RecordIterator",
    "RecordNotFoundError",
]
