"""Federated search: query every archive at once, each archive answering only its own top-k.

Each archive owner keeps its images and codes; a user who wants the ``k`` nearest patches of a
query over *all* archives sends the query codes to every archive, each returns its own top ``k``
(Hamming distances and local record positions; with patch ids only for the hits), and the user
merges the answers. No archive sees another's codes, and no archive sends more than ``k`` hits
per query.

Merge rule
----------
Hits are ordered by ``(distance, archive order, position within the archive)``, where *archive
order* is the order of the ``archives`` argument. This is exactly the order of one index holding
all archives concatenated in that order (:func:`central_search`), ties included, because
:class:`~fedrs.retrieval.HashIndex` breaks ties by insertion order: the global top ``k`` of the
concatenation is contained in the union of the per-archive top ``k`` lists, and sorting that
union on the same key reproduces it. The merge is one ``argpartition`` + ``argsort`` over the
``Q x (sum of min(k, N_a))`` candidates, on a single int64 key
``distance * N_total + global position`` (a ``lexsort`` on the three keys where that could
overflow).

Participants
------------
Anything that satisfies :class:`SearchParticipant` takes part: an
:class:`~fedrs.retrieval.ArchiveSearch` (a ``.fedrs`` file), an
:class:`IndexParticipant` (codes in memory), or an adapter to a remote archive. All must use the
same code length, and (when they say) the same model fingerprint: codes of different models are
not comparable.

Example::

    archives = [ArchiveSearch(CompressedArchive.open(p)) for p in paths]
    result = federated_search(archives, query_codes, k=20)
    for hit in result[0]:  # the hits of the first query
        print(hit.archive_name, hit.patch_id, hit.distance)
    result.distances, result.archives, result.positions, result.patch_ids  # (Q, k) arrays
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fedrs.codes import as_packed
from fedrs.errors import InputError
from fedrs.retrieval.errors import ParticipantError
from fedrs.retrieval.index import PAD_DISTANCE, PAD_ID, HashIndex

__all__ = [
    "CentralIndex",
    "CodeHolder",
    "Hit",
    "IndexParticipant",
    "ParticipantError",
    "SearchParticipant",
    "SearchResult",
    "central_search",
    "federated_search",
]

_INT64_MAX = int(np.iinfo(np.int64).max)


@runtime_checkable
class SearchParticipant(Protocol):
    """One archive as seen by a federated search.

    ``search`` must return the archive's own top ``k`` ordered by ``(distance, position)``, as
    :meth:`HashIndex.search` does: ``int`` arrays ``(Q, k)`` of Hamming distances and local
    positions ``0 .. len - 1`` (``-1`` in empty slots, which come last). Answers are checked
    for shape, range and order (not for being the true top ``k``, which only the archive can
    know). ``patch_ids_at`` names the records at
    given positions.
    """

    @property
    def name(self) -> str:
        """Display name of the archive."""
        ...

    @property
    def hash_bits(self) -> int:
        """Code length ``K``."""
        ...

    @property
    def model_fingerprint(self) -> str | None:
        """The model that produced the codes, or ``None`` when unknown."""
        ...

    def __len__(self) -> int: ...

    def search(self, query_codes: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` of the archive: ``(distances, positions)``."""
        ...

    def patch_ids_at(self, positions: Any) -> np.ndarray:
        """Patch ids (``object`` array of ``str``) of the given positions."""
        ...


@runtime_checkable
class CodeHolder(SearchParticipant, Protocol):
    """A participant that also shares all its codes (needed only by :func:`central_search`)."""

    @property
    def codes(self) -> np.ndarray:
        """All codes, packed ``uint8`` ``(N, K/8)`` in position order."""
        ...


class IndexParticipant:
    """An archive held in memory: its codes in a :class:`HashIndex`, and its patch ids.

    Args:
        name: display name.
        codes: ``(N, K/8)`` packed ``uint8`` or ``(N, K)`` unpacked codes.
        bits: code length ``K``; inferred from ``codes`` when omitted.
        patch_ids: ``N`` patch ids; by default the positions as strings (``"0"``, ``"1"``...).
        model_fingerprint: the model that produced the codes, if known.

    Raises:
        InputError: bad codes, or ``patch_ids`` of the wrong length.
    """

    def __init__(
        self,
        name: str,
        codes: Any,
        *,
        bits: int | None = None,
        patch_ids: Sequence[str] | None = None,
        model_fingerprint: str | None = None,
    ) -> None:
        if not isinstance(name, str):
            raise InputError(f"name: expected a string, got {name!r}")
        raw = np.asarray(codes)
        if bits is None and raw.ndim == 2:
            bits = 8 * raw.shape[1] if raw.dtype == np.uint8 else raw.shape[1]
        packed = as_packed(raw, bits, name=f"{name}: codes")
        self._name = name
        self._codes = packed
        self._codes.flags.writeable = False
        self._index = HashIndex(8 * packed.shape[1])
        self._index.add(packed)
        self._fingerprint = model_fingerprint
        self._ids: np.ndarray | None = None
        if patch_ids is not None:
            ids = np.empty(len(patch_ids), dtype=object)
            ids[:] = list(patch_ids)
            if ids.shape[0] != packed.shape[0]:
                raise InputError(f"{name}: {ids.shape[0]} patch ids for {packed.shape[0]} codes")
            self._ids = ids

    @property
    def name(self) -> str:
        """Display name."""
        return self._name

    @property
    def hash_bits(self) -> int:
        """Code length ``K``."""
        return self._index.bits

    @property
    def model_fingerprint(self) -> str | None:
        """The model that produced the codes, if known."""
        return self._fingerprint

    @property
    def codes(self) -> np.ndarray:
        """All codes, packed (read-only)."""
        return self._codes

    def __len__(self) -> int:
        return int(self._codes.shape[0])

    def __repr__(self) -> str:
        return f"IndexParticipant({self._name!r}, size={len(self)}, bits={self.hash_bits})"

    def search(self, query_codes: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` by Hamming distance: ``(distances, positions)`` (see :class:`HashIndex`)."""
        return self._index.search(query_codes, k)

    def patch_ids_at(self, positions: Any) -> np.ndarray:
        """Patch ids of the given positions (any shape), ``object`` array of ``str``."""
        pos = np.asarray(positions)
        if pos.size and (
            not np.issubdtype(pos.dtype, np.integer) or pos.min() < 0 or pos.max() >= len(self)
        ):
            raise InputError(f"{self._name}: positions outside 0..{len(self) - 1}")
        pos = pos.astype(np.int64)
        if self._ids is None:
            return pos.astype(str).astype(object)
        return np.asarray(self._ids[pos], dtype=object)


# ------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Hit:
    """One retrieved record.

    Attributes:
        archive: index of the archive in the ``archives`` argument.
        archive_name: its display name.
        patch_id: the record's patch id.
        distance: Hamming distance to the query.
        position: the record's position within its archive.
    """

    archive: int
    archive_name: str
    patch_id: str
    distance: int
    position: int


@dataclass(frozen=True, eq=False)
class SearchResult:
    """The top ``k`` of ``Q`` queries over several archives.

    Indexing gives the hits of one query (``result[q]`` is a ``list[Hit]``, without the empty
    slots); the arrays hold everything at once. Slots beyond the total number of records are
    empty: distance ``PAD_DISTANCE``, archive/position/global position ``-1``, patch id ``None``.

    Attributes:
        distances: ``int32`` ``(Q, k)`` Hamming distances, ascending along each row.
        archives: ``int64`` ``(Q, k)`` archive index of each hit.
        positions: ``int64`` ``(Q, k)`` position of each hit within its archive.
        patch_ids: ``object`` ``(Q, k)`` patch ids.
        archive_names: the archives' display names, in argument order.
        offsets: ``int64`` ``(A + 1,)``: archive ``a`` holds global positions
            ``offsets[a] .. offsets[a + 1] - 1`` of the concatenation.
    """

    distances: np.ndarray
    archives: np.ndarray
    positions: np.ndarray
    patch_ids: np.ndarray
    archive_names: tuple[str, ...]
    offsets: np.ndarray

    @property
    def k(self) -> int:
        """Hits per query (including empty slots)."""
        return int(self.distances.shape[1])

    @property
    def global_positions(self) -> np.ndarray:
        """``int64`` ``(Q, k)`` positions in the concatenation of all archives (``-1`` empty)."""
        found = self.archives >= 0
        start = self.offsets[np.where(found, self.archives, 0)]
        return np.where(found, start + self.positions, PAD_ID)

    def __len__(self) -> int:
        return int(self.distances.shape[0])

    def __getitem__(self, query: int) -> list[Hit]:
        row = range(len(self))[query]  # validates and resolves negative indices
        found = np.flatnonzero(self.archives[row] >= 0)
        return [
            Hit(
                archive=int(self.archives[row, j]),
                archive_name=self.archive_names[int(self.archives[row, j])],
                patch_id=str(self.patch_ids[row, j]),
                distance=int(self.distances[row, j]),
                position=int(self.positions[row, j]),
            )
            for j in found
        ]

    def __iter__(self) -> Iterator[list[Hit]]:
        for q in range(len(self)):
            yield self[q]

    def to_lists(self) -> list[list[Hit]]:
        """The hits of every query (builds one Python object per hit: for inspection)."""
        return list(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SearchResult):
            return NotImplemented
        return (
            self.archive_names == other.archive_names
            and np.array_equal(self.offsets, other.offsets)
            and np.array_equal(self.distances, other.distances)
            and np.array_equal(self.archives, other.archives)
            and np.array_equal(self.positions, other.positions)
            and np.array_equal(self.patch_ids, other.patch_ids)
        )

    __hash__ = None  # type: ignore[assignment]


# ------------------------------------------------------------------------------------------------
# Shared checks


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InputError(f"k: expected a positive integer, got {k!r}")
    return int(k)


def _check_participants(archives: Any) -> list[SearchParticipant]:
    if isinstance(archives, str | bytes) or not isinstance(archives, Sequence):
        raise InputError("archives: expected a sequence of archives")
    participants = list(archives)
    if not participants:
        raise InputError("archives: no archive to search")
    for i, p in enumerate(participants):
        if not isinstance(p, SearchParticipant):
            raise ParticipantError(
                f"archives[{i}]: {type(p).__name__} is not a search participant (it needs name, "
                "hash_bits, model_fingerprint, __len__, search and patch_ids_at)"
            )
    bits = {int(p.hash_bits) for p in participants}
    if len(bits) > 1:
        detail = ", ".join(f"{p.name}: {p.hash_bits}" for p in participants)
        raise ParticipantError(f"archives: different code lengths ({detail})")
    prints = {p.model_fingerprint for p in participants} - {None}
    if len(prints) > 1:
        detail = ", ".join(f"{p.name}: {p.model_fingerprint}" for p in participants)
        raise ParticipantError(f"archives: codes of different models cannot be compared ({detail})")
    return participants


def _offsets(participants: Sequence[SearchParticipant]) -> np.ndarray:
    sizes = np.array([len(p) for p in participants], dtype=np.int64)
    return np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(sizes)])


def _resolve(
    participants: Sequence[SearchParticipant],
    offsets: np.ndarray,
    distances: np.ndarray,
    global_positions: np.ndarray,
) -> SearchResult:
    """Turn global positions into (archive, local position, patch id)."""
    found = global_positions >= 0
    archives = np.where(
        found, np.searchsorted(offsets, global_positions, side="right") - 1, PAD_ID
    ).astype(np.int64)
    positions = np.where(found, global_positions - offsets[np.maximum(archives, 0)], PAD_ID)
    patch_ids = np.full(distances.shape, None, dtype=object)
    for a, participant in enumerate(participants):
        mask = archives == a
        if mask.any():
            patch_ids[mask] = participant.patch_ids_at(positions[mask])
    return SearchResult(
        distances=np.where(found, distances, PAD_DISTANCE).astype(np.int32),
        archives=archives,
        positions=positions.astype(np.int64),
        patch_ids=patch_ids,
        archive_names=tuple(p.name for p in participants),
        offsets=offsets,
    )


# ------------------------------------------------------------------------------------------------
# Federated search


def _answer(
    participant: SearchParticipant, index: int, query: np.ndarray, k: int, bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """Ask one participant; validate its answer; return (distances, local positions) int64."""
    size = len(participant)
    distances, positions = participant.search(query, k)
    distances, positions = np.asarray(distances), np.asarray(positions)
    where = f"archives[{index}] ({participant.name})"
    expected = (query.shape[0], k)
    if distances.shape != expected or positions.shape != expected:
        raise ParticipantError(
            f"{where}: answered shapes {distances.shape} and {positions.shape}, expected {expected}"
        )
    if not (
        np.issubdtype(distances.dtype, np.integer) and np.issubdtype(positions.dtype, np.integer)
    ):
        raise ParticipantError(f"{where}: answered non-integer distances or positions")
    positions = positions.astype(np.int64)
    found = positions >= 0
    if positions.size and (positions.min() < PAD_ID or positions.max() >= size):
        raise ParticipantError(f"{where}: answered positions outside 0..{size - 1}")
    distances = distances.astype(np.int64)
    if np.any(found & ((distances < 0) | (distances > bits))):
        raise ParticipantError(f"{where}: answered distances outside 0..{bits}")
    # Each row: hits strictly increasing in (distance, position), then only empty slots.
    key = np.where(found, distances * max(size, 1) + positions, 0)
    ordered = (np.diff(key, axis=1) > 0) | ~found[:, 1:]
    prefix = found[:, :-1] | ~found[:, 1:]
    if not (ordered.all() and prefix.all()):
        raise ParticipantError(
            f"{where}: answered hits not in (distance, position) order, repeated, or after "
            "empty slots"
        )
    return distances, positions


def federated_search(
    archives: Sequence[SearchParticipant],
    query_codes: Any,
    k: int,
) -> SearchResult:
    """Global top ``k`` over several archives, each answering only its own top ``k``.

    Equal to :func:`central_search` over the same archives (ties included); see the module
    docstring for the merge rule.

    Args:
        archives: :class:`~fedrs.retrieval.ArchiveSearch` es over ``.fedrs`` archives,
            :class:`IndexParticipant` s or other :class:`SearchParticipant` s, in the order that
            breaks ties.
        query_codes: ``Q`` codes of ``K`` bits, packed or unpacked.
        k: hits per query, ``>= 1``.

    Returns:
        The :class:`SearchResult`.

    Raises:
        InputError: bad queries or ``k``, no archives.
        ParticipantError: an object that is not a participant, different code lengths or
            model fingerprints, or a malformed answer (naming the archive).
    """
    participants = _check_participants(archives)
    k = _check_k(k)
    bits = int(participants[0].hash_bits)
    query = as_packed(query_codes, bits, name="query_codes")
    offsets = _offsets(participants)
    total = int(offsets[-1])
    n_q = query.shape[0]

    dist_parts: list[np.ndarray] = []
    gpos_parts: list[np.ndarray] = []
    for a, participant in enumerate(participants):
        size = int(offsets[a + 1] - offsets[a])
        if size == 0 or n_q == 0:
            continue
        d, p = _answer(participant, a, query, min(k, size), bits)
        dist_parts.append(d)
        gpos_parts.append(np.where(p >= 0, p + offsets[a], PAD_ID))

    if not dist_parts:
        empty_d = np.full((n_q, k), PAD_DISTANCE, dtype=np.int64)
        return _resolve(participants, offsets, empty_d, np.full((n_q, k), PAD_ID, np.int64))
    dist = np.concatenate(dist_parts, axis=1)
    gpos = np.concatenate(gpos_parts, axis=1)
    top = _merge_order(dist, gpos, k, bits, total)
    dist = np.take_along_axis(dist, top, axis=1)
    gpos = np.take_along_axis(gpos, top, axis=1)
    if top.shape[1] < k:  # fewer candidates than k: pad
        pad = k - top.shape[1]
        dist = np.concatenate([dist, np.full((n_q, pad), PAD_DISTANCE, np.int64)], axis=1)
        gpos = np.concatenate([gpos, np.full((n_q, pad), PAD_ID, np.int64)], axis=1)
    return _resolve(participants, offsets, dist, gpos)


def _merge_order(dist: np.ndarray, gpos: np.ndarray, k: int, bits: int, total: int) -> np.ndarray:
    """Column indices of the ``min(k, C)`` best candidates of each row, best first."""
    found = gpos >= 0
    n_cand = dist.shape[1]
    kk = min(k, n_cand)
    span = max(total, 1)
    if (bits + 1) * span < 2**62:
        key = np.where(found, dist * span + gpos, _INT64_MAX)
        if kk < n_cand:
            part = np.argpartition(key, kk - 1, axis=1)[:, :kk]
        else:
            part = np.broadcast_to(np.arange(n_cand), key.shape)
        order = np.argsort(np.take_along_axis(key, part, axis=1), axis=1, kind="stable")
        return np.asarray(np.take_along_axis(part, order, axis=1))
    # Very large archives: sort on the keys separately.
    order = np.lexsort((np.where(found, gpos, _INT64_MAX), np.where(found, dist, _INT64_MAX)))
    return np.asarray(order[:, :kk])


# ------------------------------------------------------------------------------------------------
# Central search (the reference)


class CentralIndex:
    """One :class:`HashIndex` over all archives concatenated in order: the non-federated peer.

    It needs every archive's codes (:class:`CodeHolder`), which a real federation does not
    share; it exists to check and time :func:`federated_search` against.

    Args:
        archives: participants that expose ``codes``, in the order of concatenation.

    Raises:
        ParticipantError: a participant without codes, or mismatched code lengths or models.
    """

    def __init__(self, archives: Sequence[CodeHolder]) -> None:
        participants = _check_participants(archives)
        holders: list[CodeHolder] = []
        for i, p in enumerate(participants):
            if not isinstance(p, CodeHolder):
                raise ParticipantError(
                    f"archives[{i}] ({p.name}): central search needs the codes of every archive; "
                    "this participant does not share them"
                )
            holders.append(p)
        self._participants = participants
        self._bits = int(participants[0].hash_bits)
        self._offsets = _offsets(participants)
        codes = [as_packed(p.codes, self._bits, name=f"{p.name}: codes") for p in holders]
        self._index = HashIndex(self._bits)
        self._index.add(np.concatenate(codes, axis=0))

    def __len__(self) -> int:
        return len(self._index)

    @property
    def hash_bits(self) -> int:
        """Code length ``K``."""
        return self._bits

    def search(self, query_codes: Any, k: int) -> SearchResult:
        """Global top ``k`` from the concatenated index (ties in concatenation order)."""
        k = _check_k(k)
        distances, global_positions = self._index.search(query_codes, k)
        return _resolve(self._participants, self._offsets, distances, global_positions)


def central_search(archives: Sequence[CodeHolder], query_codes: Any, k: int) -> SearchResult:
    """Global top ``k`` from one index of all archives concatenated in order.

    The reference for :func:`federated_search`, which returns the same result. Builds the index
    on every call; keep a :class:`CentralIndex` to search repeatedly.

    Args:
        archives: participants exposing ``codes`` (archives, :class:`IndexParticipant` s).
        query_codes: ``Q`` codes of ``K`` bits.
        k: hits per query, ``>= 1``.

    Returns:
        The :class:`SearchResult`.
    """
    return CentralIndex(archives).search(query_codes, k)
