"""Search one ``.fedrs`` archive by its hash codes, as a participant of federated search.

:class:`ArchiveSearch` takes an archive opened for reading
(:class:`~fedrs.container.CompressedArchive`) and answers top-``k`` queries from a
:class:`~fedrs.retrieval.HashIndex` of the codes stored in the archive's index (no record is
read). It has what :func:`~fedrs.retrieval.federated_search` asks of a participant, and the codes
:func:`~fedrs.retrieval.central_search` needs::

    archive = CompressedArchive.open("client-3.fedrs")
    distances, positions = ArchiveSearch(archive).search(query_codes, k=20)
    result = federated_search([ArchiveSearch(a) for a in archives], query_codes, k=20)
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from fedrs.container import CompressedArchive
from fedrs.retrieval.index import HashIndex

__all__ = ["ArchiveSearch"]


class ArchiveSearch:
    """Top-``k`` search over the codes of one ``.fedrs`` archive.

    It pickles as its archive (which pickles as its path); the receiving process builds the
    index again.

    Args:
        archive: the archive to search; it stays open and usable (records, labels).
    """

    def __init__(self, archive: CompressedArchive) -> None:
        self._archive = archive
        self._lock = threading.Lock()
        self._index: HashIndex | None = None

    @property
    def archive(self) -> CompressedArchive:
        """The archive searched."""
        return self._archive

    @property
    def name(self) -> str:
        """The archive's display name."""
        return self._archive.name

    @property
    def hash_bits(self) -> int:
        """Code length ``K``."""
        return self._archive.hash_bits

    @property
    def model_fingerprint(self) -> str:
        """The model that produced the codes."""
        return self._archive.model_fingerprint

    @property
    def codes(self) -> np.ndarray:
        """All codes, packed ``uint8`` ``(N, K/8)`` in record order (read-only)."""
        return self._archive.codes

    def __len__(self) -> int:
        return len(self._archive)

    def __repr__(self) -> str:
        return f"ArchiveSearch({self._archive!r})"

    def index(self) -> HashIndex:
        """A new :class:`HashIndex` of all codes; its ids are the record positions."""
        index = HashIndex(self.hash_bits)
        index.add(self._archive.codes)
        return index

    def search(self, query_codes: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` records of each query by Hamming distance (ties in record order).

        The index is built on the first call and kept for the life of this object.

        Args:
            query_codes: ``Q`` codes of ``K`` bits, packed or unpacked.
            k: neighbours per query, ``>= 1``.

        Returns:
            ``(distances, positions)``: ``int32`` and ``int64`` ``(Q, k)``; slots beyond the
            archive size hold ``PAD_DISTANCE`` / ``PAD_ID`` (``-1``).
        """
        with self._lock:
            if self._index is None:
                self._index = self.index()
            index = self._index
        return index.search(query_codes, k)

    def patch_ids_at(self, positions: Any) -> np.ndarray:
        """Patch ids of the given positions (see :meth:`CompressedArchive.patch_ids_at`)."""
        return self._archive.patch_ids_at(positions)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._archive,))
