"""The faiss index of binary hash codes, and exact Hamming distances in numpy.

Codes are accepted packed or unpacked (see :mod:`fedrs.codes`, which converts between the two
forms); :func:`hamming_distances` computes exact distances with numpy.

Threads
-------
faiss parallelises searches with OpenMP. Changing the OpenMP thread count while a process is
searching makes timings and, with some builds, results erratic, so :class:`HashIndex` never sets
it. Call :func:`set_faiss_threads` once per process (e.g. at the start of a Ray worker) if the
default (all cores) does not suit.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from fedrs.codes import as_packed, check_bits
from fedrs.errors import InputError
from fedrs.retrieval.errors import CorruptIndexError

__all__ = [
    "PAD_DISTANCE",
    "PAD_ID",
    "CorruptIndexError",
    "HashIndex",
    "hamming_distances",
    "set_faiss_threads",
]

_COUNTING_MAX_BYTES = 64 * 2**20
PAD_ID = -1
"""Id returned by :meth:`HashIndex.search` in slots beyond the size of the database."""

PAD_DISTANCE = int(np.iinfo(np.int32).max)
"""Distance returned by :meth:`HashIndex.search` in slots beyond the size of the database."""


# ------------------------------------------------------------------------------------------------
# Hamming distances


def _words(packed: np.ndarray) -> np.ndarray:
    """View packed codes as 64-bit words (zero-padded), shape (N, ceil(B/8))."""
    n, width = packed.shape
    padded_width = -(-width // 8) * 8
    if padded_width != width:
        padded = np.zeros((n, padded_width), dtype=np.uint8)
        padded[:, :width] = packed
        packed = padded
    return np.ascontiguousarray(packed).view(np.uint64)


_POPCOUNT_TABLE = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount64(x: np.ndarray) -> np.ndarray:
    """Bits set in each uint64 of ``x`` (any shape), as a small unsigned integer array."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.asarray(np.bitwise_count(x))
    as_bytes = x.view(np.uint8).reshape(*x.shape, 8)
    return _POPCOUNT_TABLE[as_bytes].sum(axis=-1, dtype=np.uint8)


def _hamming_words(query_words: np.ndarray, db_words: np.ndarray) -> np.ndarray:
    """Hamming distances between word views, ``(Q, N)`` int32; loops over the few words only."""
    out = np.zeros((query_words.shape[0], db_words.shape[0]), dtype=np.int32)
    for w in range(query_words.shape[1]):
        out += _popcount64(np.bitwise_xor(query_words[:, w, None], db_words[None, :, w]))
    return out


def hamming_distances(query_codes: Any, db_codes: Any) -> np.ndarray:
    """Exact Hamming distances between two sets of codes, in numpy.

    Args:
        query_codes: ``Q`` codes, packed or unpacked.
        db_codes: ``N`` codes of the same length, packed or unpacked.

    Returns:
        ``int32`` array ``(Q, N)``. It is materialised whole: chunk the queries for large sets.

    Raises:
        InputError: bad codes or different code lengths.
    """
    q = as_packed(query_codes, name="query_codes")
    d = as_packed(db_codes, 8 * q.shape[1], name="db_codes")
    return _hamming_words(_words(q), _words(d))


# ------------------------------------------------------------------------------------------------
# Threads


class _ThreadSetting:
    """The OpenMP thread count chosen for faiss in this process (set at most once)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.value: int | None = None


_THREADS = _ThreadSetting()


def set_faiss_threads(n: int) -> int:
    """Set the number of OpenMP threads faiss uses in this process, once.

    The first call sets ``faiss.omp_set_num_threads(n)``. Later calls with the same ``n`` do
    nothing; later calls with a different ``n`` are **ignored with a** ``RuntimeWarning`` (the
    setting is per process, so each Ray worker makes its own first call). Nothing in fedrs calls
    this implicitly.

    Args:
        n: number of threads, ``>= 1``.

    Returns:
        The thread count in effect after the call.

    Raises:
        InputError: ``n`` is not a positive integer.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise InputError(f"faiss threads: expected a positive integer, got {n!r}")
    n = int(n)
    with _THREADS.lock:
        if _THREADS.value is None:
            faiss.omp_set_num_threads(n)
            _THREADS.value = n
        elif _THREADS.value != n:
            warnings.warn(
                f"faiss threads already set to {_THREADS.value} in this process; "
                f"ignoring the request for {n}",
                RuntimeWarning,
                stacklevel=2,
            )
        return _THREADS.value


# ------------------------------------------------------------------------------------------------
# Index


class HashIndex:
    """Exact Hamming-distance index of ``K``-bit hash codes with external int64 ids.

    Backed by ``faiss.IndexBinaryIDMap`` over ``faiss.IndexBinaryFlat`` (brute force, exact).

    Ordering: results are sorted by Hamming distance, and equal distances by database
    (insertion) order. faiss' k-selection heaps compare ``(distance, position)`` pairs, so the
    boundary of the top ``k`` already follows insertion order (checked against numpy in the
    tests); the result is additionally re-sorted on ``(distance, position)``, which makes the
    order within the returned ``k`` independent of the faiss build.

    When ``k`` exceeds the number of stored codes, the extra slots hold id :data:`PAD_ID`
    (``-1``) and distance :data:`PAD_DISTANCE` (``2**31 - 1``), after all real results.

    The object pickles (``faiss.serialize_index_binary``), so Ray can ship it, and
    :meth:`save` / :meth:`load` use faiss' own binary-index file format (readable by
    ``faiss.read_index_binary``).

    Args:
        bits: code length ``K``, a positive multiple of 8.

    Example::

        index = HashIndex(64)
        index.add(codes, ids)  # codes: (N, 64) ±1 or (N, 8) uint8; ids: (N,) int64
        distances, neighbours = index.search(query_codes, k=20)
    """

    def __init__(self, bits: int) -> None:
        self._bits = check_bits(bits)
        self._set_index(faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(self._bits)))

    def _set_index(self, index: Any) -> None:
        self._index = index
        self._flat = faiss.downcast_IndexBinary(index.index)
        self._ids = faiss.vector_to_array(index.id_map).astype(np.int64, copy=False)
        self._sorted_ids = np.sort(self._ids)

    @property
    def bits(self) -> int:
        """Code length ``K`` in bits."""
        return self._bits

    @property
    def ids(self) -> np.ndarray:
        """External ids in insertion order (a read-only ``int64`` array)."""
        view = self._ids.view()
        view.flags.writeable = False
        return view

    def packed_codes(self) -> np.ndarray:
        """All stored codes in insertion order, packed ``uint8`` ``(N, K/8)`` (a copy)."""
        codes = np.asarray(self._flat.reconstruct_n(0, len(self)), dtype=np.uint8)
        return codes.reshape(len(self), self._bits // 8).copy()

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def __repr__(self) -> str:
        return f"HashIndex(bits={self._bits}, size={len(self)})"

    def add(self, codes: Any, ids: Any = None) -> None:
        """Append codes with their external ids.

        Args:
            codes: ``(N, K/8)`` packed ``uint8`` or ``(N, K)`` unpacked (``±1``, ``{0, 1}`` as
                bool/int8, or real scores with bit = value > 0).
            ids: ``(N,)`` non-negative integer ids, unique across the index; defaults to the
                insertion positions ``len(self) ... len(self) + N - 1``.

        Raises:
            InputError: bad codes, wrong code length, bad, negative or duplicate ids.
        """
        packed = as_packed(codes, self._bits)
        n = packed.shape[0]
        if ids is None:
            new_ids = np.arange(len(self), len(self) + n, dtype=np.int64)
        else:
            raw = np.asarray(ids)
            if raw.ndim != 1 or raw.shape[0] != n:
                raise InputError(f"ids: expected shape ({n},) to match the codes, got {raw.shape}")
            if n and not np.issubdtype(raw.dtype, np.integer):
                raise InputError(f"ids: expected integers, got dtype {raw.dtype}")
            if n and raw.dtype == np.uint64 and int(raw.max()) > np.iinfo(np.int64).max:
                raise InputError("ids: larger than the int64 range")
            new_ids = raw.astype(np.int64)
            if n and new_ids.min() < 0:
                raise InputError("ids: must be non-negative (-1 marks empty result slots)")
        if n == 0:
            return
        batch_sorted = np.sort(new_ids)
        if np.any(batch_sorted[1:] == batch_sorted[:-1]):
            raise InputError("ids: duplicate ids within the batch")
        where = np.searchsorted(self._sorted_ids, batch_sorted)
        clash = where < self._sorted_ids.size
        if np.any(self._sorted_ids[where[clash]] == batch_sorted[clash]):
            raise InputError("ids: some ids are already in the index")
        self._index.add_with_ids(packed, np.ascontiguousarray(new_ids))
        self._ids = np.concatenate([self._ids, new_ids])
        self._sorted_ids = np.insert(self._sorted_ids, where, batch_sorted)

    def search(self, codes: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Find the ``k`` nearest stored codes of each query by Hamming distance.

        Args:
            codes: ``Q`` query codes, packed or unpacked, ``K`` bits.
            k: number of neighbours, ``>= 1``; may exceed ``len(self)`` (see the class notes on
                padding).

        Returns:
            ``(distances, ids)``: ``int32`` ``(Q, k)`` Hamming distances and ``int64`` ``(Q, k)``
            external ids, each row sorted by ``(distance, insertion position)``.

        Raises:
            InputError: bad codes, wrong code length, or ``k < 1``.
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InputError(f"k: expected a positive integer, got {k!r}")
        k = int(k)
        packed = as_packed(codes, self._bits, name="query codes")
        q = packed.shape[0]
        if q == 0:
            return np.zeros((0, k), dtype=np.int32), np.zeros((0, k), dtype=np.int64)
        # Counting k-selection (faiss hammings_knn_mc): exact, ties in insertion order, and
        # its cost does not grow when an archive is split into several indexes; its buffer is
        # 32 * (bits + 1) * k int64 per query batch, so a large k keeps the heap.
        self._flat.use_heap = 32 * (self._bits + 1) * k * 8 > _COUNTING_MAX_BYTES  # type: ignore[attr-defined]
        distances, positions = self._flat.search(packed, k)
        distances = distances.astype(np.int32, copy=False)
        positions = positions.astype(np.int64, copy=False)
        # Stable order on (distance, position); empty slots (position -1) sort last.
        pos_key = np.where(positions < 0, np.iinfo(np.int64).max, positions)
        order = np.lexsort((pos_key, distances), axis=1)
        distances = np.take_along_axis(distances, order, axis=1)
        positions = np.take_along_axis(positions, order, axis=1)
        found = positions >= 0
        ids = np.full(positions.shape, PAD_ID, dtype=np.int64)
        ids[found] = self._ids[positions[found]]
        distances = np.where(found, distances, np.int32(PAD_DISTANCE)).astype(np.int32)
        return distances, ids

    # -- persistence ------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the index (codes and ids) to ``path`` in faiss' binary-index format.

        Returns:
            The path written.
        """
        target = Path(path)
        faiss.write_index_binary(self._index, str(target))
        return target

    @classmethod
    def load(cls, path: str | Path) -> HashIndex:
        """Read an index written by :meth:`save`.

        A plain ``faiss.IndexBinaryFlat`` file is accepted too; its ids are the positions.

        Raises:
            CorruptIndexError: missing, unreadable or not a flat binary index.
        """
        source = Path(path)
        if not source.is_file():
            raise CorruptIndexError(source, "no such index file")
        try:
            raw = faiss.read_index_binary(str(source))
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
            raise CorruptIndexError(source, f"not a faiss binary index ({reason})") from exc
        return cls._from_faiss(raw, source)

    @classmethod
    def _from_faiss(cls, raw: Any, source: str | Path) -> HashIndex:
        obj = cls.__new__(cls)
        index = raw  # read/deserialize return the concrete, owning faiss type
        if isinstance(index, faiss.IndexBinaryFlat):
            wrapped = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(index.d))
            if index.ntotal:
                codes = np.asarray(index.reconstruct_n(0, index.ntotal), dtype=np.uint8)
                wrapped.add_with_ids(codes, np.arange(index.ntotal, dtype=np.int64))
            index = wrapped
        elif not isinstance(index, faiss.IndexBinaryIDMap) or not isinstance(
            faiss.downcast_IndexBinary(index.index), faiss.IndexBinaryFlat
        ):
            raise CorruptIndexError(
                source, f"expected a flat binary index, got {type(index).__name__}"
            )
        obj._bits = check_bits(int(index.d))
        obj._set_index(index)
        return obj

    def __getstate__(self) -> dict[str, Any]:
        return {"bits": self._bits, "faiss": faiss.serialize_index_binary(self._index)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        restored = self._from_faiss(faiss.deserialize_index_binary(state["faiss"]), "<pickle>")
        self.__dict__.update(restored.__dict__)
