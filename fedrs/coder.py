"""Entropy coder of fedrs: interleaved rANS over indexed, quantised CDF tables.

The native extension ``fedrs._coder`` (C++17, ``native/coder/``) does the work; this module checks
and converts the arguments and turns native errors into :class:`CoderError` subclasses (all of
them ``ValueError``).  The coder releases the GIL while it runs.

Tables (CompressAI's convention, ``EntropyModel._pmf_to_cdf`` and ``rans_interface.cpp``):

* ``cdfs`` is an int32 array ``(T, L)``; row ``t`` is valid up to ``cdf_lengths[t]`` entries, the
  rest is padding and ignored.  ``cdfs[t, 0] == 0``, ``cdfs[t, cdf_lengths[t] - 1] == 65536``
  (16-bit precision), non-decreasing.
* A table of ``cdf_lengths[t] = n + 2`` entries codes ``n`` regular symbols: value ``offsets[t] +
  k`` has the interval ``[cdfs[t, k], cdfs[t, k + 1])`` for ``0 <= k < n``; the last interval,
  ``[cdfs[t, n], 65536)``, is the escape symbol and must not be empty.  So a pmf of ``n``
  symbols plus its tail mass, quantised by :func:`pmf_to_quantized_cdf`, gives ``n + 2``
  entries, exactly as CompressAI builds them (:func:`cdf_tables` does this for a batch).
* A symbol outside ``[offsets[t], offsets[t] + n)``, or of zero frequency, is coded as the
  escape symbol and its value is written to separate escape bits, so every int32 round-trips.

Stream format (version 1; all integers little-endian, varints LEB128 and canonical):

===========  =====================================================================================
magic        2 bytes ``b"FR"``
version      1 byte, ``1``
count        varint, number of symbols N
chunk table  for each of C chunks: varint W_c (32-bit words of rANS data), varint E_c (escape
             bytes).  C = 0 when N = 0, else max(1, N >> 21); chunk c holds the symbols
             ``[c N / C, (c + 1) N / C)``.
payload      for each chunk: W_c words, then E_c escape bytes
crc32        4 bytes, zlib's CRC-32 of everything before it
===========  =====================================================================================

A chunk of m symbols is coded by K interleaved rANS lanes (K = 8 for m >= 2^15, 4 for m >= 2^14,
2 for m >= 2^13, else 1); symbol i of the chunk belongs to lane i mod K.  The lanes are 64-bit
rANS states in [2^31, 2^63) with 16-bit probabilities and 32-bit renormalisation words (after
F. Giesen's rans64).  The encoder starts every lane at 2^31 and codes the symbols in reverse; the
chunk's words are the K final states (low word first), then the renormalisation words in the
order the decoder reads them.  The decoder checks that every lane ends at 2^31 and that all
words and escape bits are used, so a stream decoded with the wrong tables or indexes is rejected
(with overwhelming probability) even though the CRC is right.

Escape bits are read least-significant bit first, in symbol order.  An escaped value ``v =
symbol - offsets[t]`` outside the table is written as a 4-bit count ``c`` and ``c`` 4-bit
nibbles (low first) of ``raw = 2 (v - n)`` for ``v >= n`` or ``raw = -2 v - 1`` for ``v < 0``,
with the fewest nibbles (``c = 0`` for ``raw = 0``).  A regular symbol of zero frequency is
written as ``c = 15`` and its 16-bit index ``v``.  The last byte is zero-padded.

:class:`StreamDecoder` decodes a stream a few symbols at a time, each call with its own tables
(for autoregressive models, whose tables depend on the symbols decoded before).

Any stream this encoder cannot have produced from the given indexes and tables (truncated,
extended, corrupted, a wrong symbol count, wrong tables) raises :class:`CorruptStreamError`;
malformed tables raise :class:`CdfTableError`.  Decoding never reads out of bounds and always
terminates.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt

from fedrs.errors import CdfTableError, CoderError, CorruptStreamError

try:
    from fedrs import _coder
except ImportError as _exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "fedrs._coder, the native entropy coder, is not built: reinstall fedrs with "
        "`pip install -e .` (it needs a C++17 compiler)"
    ) from _exc

__all__ = [
    "FORMAT_VERSION",
    "PRECISION",
    "CdfTableError",
    "CdfTables",
    "CoderError",
    "CorruptStreamError",
    "StreamDecoder",
    "cdf_tables",
    "decode_with_indexes",
    "encode_with_indexes",
    "pmf_to_quantized_cdf",
    "stream_symbol_count",
]

PRECISION: int = _coder.PRECISION
"""Bits of precision of every CDF table (entries run from 0 to ``2**PRECISION``)."""
FORMAT_VERSION: int = _coder.FORMAT_VERSION
"""Version byte written into every stream."""

Int32Array = npt.NDArray[np.int32]


@contextmanager
def _native_errors() -> Iterator[None]:
    """Translate the extension's ValueErrors into the typed errors of this module."""
    try:
        yield
    except _coder.TableError as exc:
        raise CdfTableError(str(exc)) from None
    except _coder.StreamError as exc:
        raise CorruptStreamError(str(exc)) from None
    except _coder.ArgumentError as exc:
        raise CoderError(str(exc)) from None


def _int32(name: str, value: Any, ndim: int | None = None) -> Int32Array:
    """``value`` as a C-contiguous int32 array (no copy when it already is one).

    Args:
        name: argument name for error messages.
        value: a numpy array of an integer dtype.
        ndim: required number of dimensions; ``None`` flattens any shape.

    Raises:
        CoderError: not a numpy integer array, wrong dimensions, or values outside int32.
    """
    if not isinstance(value, np.ndarray):
        raise CoderError(f"{name} must be a numpy integer array, got {type(value).__name__}")
    if value.dtype.kind not in "iu":
        raise CoderError(f"{name} must have an integer dtype, got {value.dtype}")
    if ndim is None:
        value = value.reshape(-1)
    elif value.ndim != ndim:
        raise CoderError(f"{name} must be {ndim}-D, got shape {value.shape}")
    if value.dtype != np.int32:
        info = np.iinfo(np.int32)
        if value.size and (value.min() < info.min or value.max() > info.max):
            raise CoderError(f"{name} has values outside int32")
        value = value.astype(np.int32)
    return np.ascontiguousarray(value)


def _stream(stream: Any) -> bytes:
    if isinstance(stream, bytes):
        return stream
    if isinstance(stream, bytearray | memoryview):
        return bytes(stream)
    raise CoderError(f"stream must be bytes, got {type(stream).__name__}")


def _threads(threads: int) -> int:
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 256:
        raise CoderError(f"threads must be an integer in [1, 256], got {threads!r}")
    return threads


def _tables(cdfs: Any, cdf_lengths: Any, offsets: Any) -> tuple[Int32Array, Int32Array, Int32Array]:
    return (
        _int32("cdfs", cdfs, 2),
        _int32("cdf_lengths", cdf_lengths, 1),
        _int32("offsets", offsets, 1),
    )


def encode_with_indexes(
    symbols: npt.NDArray[np.integer],
    indexes: npt.NDArray[np.integer],
    cdfs: npt.NDArray[np.integer],
    cdf_lengths: npt.NDArray[np.integer],
    offsets: npt.NDArray[np.integer],
    *,
    threads: int = 1,
) -> bytes:
    """Entropy-code ``symbols[i]`` with table ``indexes[i]``.

    Args:
        symbols: int32 values (any shape, read in C order).
        indexes: table index of every symbol, same size as ``symbols``.
        cdfs: (T, L) quantised CDFs, see the module docstring.
        cdf_lengths: (T,) valid entries of each row (regular symbols + 2).
        offsets: (T,) value of the first symbol of each table.
        threads: threads coding independent chunks (streams of more than 4 M symbols); the
            stream does not depend on it.

    Returns:
        The stream (format in the module docstring).

    Raises:
        CdfTableError: a malformed table.
        CoderError: bad arguments (e.g. an index outside ``[0, T)``).
    """
    sym = _int32("symbols", symbols)
    idx = _int32("indexes", indexes)
    tables = _tables(cdfs, cdf_lengths, offsets)
    with _native_errors():
        return _coder.encode_with_indexes(sym, idx, *tables, threads=_threads(threads))


def decode_with_indexes(
    stream: bytes | bytearray | memoryview,
    indexes: npt.NDArray[np.integer],
    cdfs: npt.NDArray[np.integer],
    cdf_lengths: npt.NDArray[np.integer],
    offsets: npt.NDArray[np.integer],
    *,
    threads: int = 1,
) -> Int32Array:
    """Decode a stream of :func:`encode_with_indexes` given the same indexes and tables.

    Returns:
        int32 symbols with the shape of ``indexes``.

    Raises:
        CorruptStreamError: the stream is damaged or does not match the arguments.
        CdfTableError: a malformed table.
        CoderError: bad arguments.
    """
    data = _stream(stream)
    shape = indexes.shape if isinstance(indexes, np.ndarray) else None
    idx = _int32("indexes", indexes)
    tables = _tables(cdfs, cdf_lengths, offsets)
    with _native_errors():
        out = _coder.decode_with_indexes(data, idx, *tables, threads=_threads(threads))
    return out.reshape(shape) if shape is not None else out


def stream_symbol_count(stream: bytes | bytearray | memoryview) -> int:
    """Number of symbols a stream declares in its header (the CRC is not checked here)."""
    with _native_errors():
        return _coder.stream_symbol_count(_stream(stream))


class CdfTables:
    """Tables validated and prepared once, for many calls (e.g. one per image).

    Equivalent to passing the same ``cdfs, cdf_lengths, offsets`` to every call of
    :func:`encode_with_indexes` / :func:`decode_with_indexes`, without their per-call
    preparation.  Picklable (the arrays are pickled, the native tables rebuilt).
    """

    def __init__(
        self,
        cdfs: npt.NDArray[np.integer],
        cdf_lengths: npt.NDArray[np.integer],
        offsets: npt.NDArray[np.integer],
    ) -> None:
        self._arrays = _tables(cdfs, cdf_lengths, offsets)
        with _native_errors():
            self._native = _coder.Tables(*self._arrays)

    @property
    def num_tables(self) -> int:
        """Number of tables T."""
        return int(self._native.num_tables)

    @property
    def arrays(self) -> tuple[Int32Array, Int32Array, Int32Array]:
        """``(cdfs, cdf_lengths, offsets)`` as int32 arrays."""
        cdfs, cdf_lengths, offsets = self._arrays
        return cdfs, cdf_lengths, offsets

    def encode(
        self,
        symbols: npt.NDArray[np.integer],
        indexes: npt.NDArray[np.integer],
        *,
        threads: int = 1,
    ) -> bytes:
        """:func:`encode_with_indexes` with these tables."""
        sym = _int32("symbols", symbols)
        idx = _int32("indexes", indexes)
        with _native_errors():
            return self._native.encode(sym, idx, threads=_threads(threads))

    def decode(
        self,
        stream: bytes | bytearray | memoryview,
        indexes: npt.NDArray[np.integer],
        *,
        threads: int = 1,
    ) -> Int32Array:
        """:func:`decode_with_indexes` with these tables."""
        data = _stream(stream)
        shape = indexes.shape if isinstance(indexes, np.ndarray) else None
        idx = _int32("indexes", indexes)
        with _native_errors():
            out = self._native.decode(data, idx, threads=_threads(threads))
        return out.reshape(shape) if shape is not None else out

    def __getstate__(self) -> dict[str, Int32Array]:
        cdfs, cdf_lengths, offsets = self._arrays
        return {"cdfs": cdfs, "cdf_lengths": cdf_lengths, "offsets": offsets}

    def __setstate__(self, state: dict[str, Int32Array]) -> None:
        self.__init__(state["cdfs"], state["cdf_lengths"], state["offsets"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"CdfTables(num_tables={self.num_tables}, width={self._arrays[0].shape[1]})"


class StreamDecoder:
    """Decodes one stream of :func:`encode_with_indexes` in order, a few symbols per call.

    Each call of :meth:`decode` names the tables of its symbols, so the tables of later symbols
    may depend on the symbols decoded before (an autoregressive model decodes position by
    position).  The symbols of all calls together are those :func:`decode_with_indexes` gives for
    the concatenated indexes, had every call used the same tables; the stream's layout and CRC
    are checked when the decoder is made, the rest as the symbols are decoded.

    Example::

        decoder = StreamDecoder(stream)
        first = decoder.decode(tables_a, indexes_a)
        second = decoder.decode(tables_b(first), indexes_b)
        decoder.finish()

    Raises:
        CorruptStreamError: the stream is damaged or does not match the tables and indexes (a
            decoder that raised it while decoding refuses every later call); more symbols asked
            for than remain; :meth:`finish` before the last symbol.
        CoderError: bad arguments (an index outside the tables), with the decoder unchanged.
    """

    def __init__(self, stream: bytes | bytearray | memoryview) -> None:
        with _native_errors():
            self._native = _coder.StreamDecoder(_stream(stream))

    @property
    def count(self) -> int:
        """Symbols the stream holds."""
        return int(self._native.count)

    @property
    def position(self) -> int:
        """Symbols decoded so far."""
        return int(self._native.position)

    def decode(self, tables: CdfTables, indexes: npt.NDArray[np.integer]) -> Int32Array:
        """The next ``indexes.size`` symbols, symbol ``i`` with table ``indexes[i]`` of ``tables``.

        Returns:
            int32 symbols with the shape of ``indexes``.
        """
        if not isinstance(tables, CdfTables):
            raise CoderError(f"tables must be CdfTables, got {type(tables).__name__}")
        shape = indexes.shape if isinstance(indexes, np.ndarray) else None
        idx = _int32("indexes", indexes)
        with _native_errors():
            out = self._native.decode(tables._native, idx)
        return out.reshape(shape) if shape is not None else out

    def finish(self) -> None:
        """Check that every symbol was decoded and every check passed.

        Raises:
            CorruptStreamError: symbols are left, or decoding failed earlier.
        """
        with _native_errors():
            self._native.finish()

    def __repr__(self) -> str:
        return f"StreamDecoder(count={self.count}, position={self.position})"


def _float32_rows(name: str, value: Any) -> npt.NDArray[np.float32]:
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise CoderError(f"{name} must be a real-valued array, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def pmf_to_quantized_cdf(
    pmf: npt.ArrayLike, precision: int = 16, *, lengths: npt.ArrayLike | None = None
) -> Int32Array:
    """Quantise probabilities into a CDF in which every symbol has a non-zero frequency.

    The same integers as CompressAI's ``pmf_to_quantized_cdf`` (probabilities rounded as
    float32, scaled to ``2**precision``, the closing entry forced to ``2**precision``, then each
    zero frequency takes one unit from the smallest frequency above one), computed natively.

    Args:
        pmf: ``(m,)`` probabilities (need not sum to one), or ``(B, M)`` for a batch.
        precision: bits of the CDF, 1 ... 16 (the coder uses 16).
        lengths: for a batch, the number of probabilities of each row (default: all ``M``).

    Returns:
        ``(m + 1,)`` int32 CDF from 0 to ``2**precision``, or ``(B, M + 1)`` with row ``b``
        valid up to ``lengths[b] + 1`` entries and zero after.

    Raises:
        CoderError: negative or non-finite probabilities, an all-zero row, more symbols than
            ``2**precision``, a bad precision or bad lengths.
    """
    rows = _float32_rows("pmf", pmf)
    single = rows.ndim == 1
    if single:
        rows = rows[None, :]
    if rows.ndim != 2:
        raise CoderError(f"pmf must be 1-D or 2-D, got shape {rows.shape}")
    if lengths is None:
        lens = np.full(rows.shape[0], rows.shape[1], dtype=np.int32)
    else:
        if single:
            raise CoderError("lengths applies to a batch (2-D pmf) only")
        lens = _int32("lengths", np.asarray(lengths), 1)
    if isinstance(precision, bool) or not isinstance(precision, int | np.integer):
        raise CoderError(f"precision must be an integer, got {precision!r}")
    try:
        out = _coder.pmf_to_quantized_cdf(rows, lens, int(precision))
    except ValueError as exc:
        raise CoderError(str(exc)) from None
    return out[0] if single else out


def cdf_tables(
    pmfs: npt.ArrayLike,
    pmf_lengths: npt.ArrayLike,
    tail_masses: npt.ArrayLike,
    precision: int = 16,
) -> tuple[Int32Array, Int32Array]:
    """CDF tables with an escape symbol, as CompressAI's ``EntropyModel._pmf_to_cdf``.

    Row ``t`` quantises ``pmfs[t, :pmf_lengths[t]]`` followed by ``tail_masses[t]`` (the escape
    symbol's probability).

    Args:
        pmfs: ``(T, M)`` probabilities, entries past a row's length ignored.
        pmf_lengths: ``(T,)`` regular symbols per table, ``1 <= pmf_lengths[t] <= M``.
        tail_masses: ``(T,)`` probability mass outside the table.
        precision: bits of the CDF (16 for the coder).

    Returns:
        ``cdfs`` ``(T, M + 2)`` int32 and ``cdf_lengths = pmf_lengths + 2`` ``(T,)`` int32.
    """
    rows = _float32_rows("pmfs", pmfs)
    if rows.ndim != 2:
        raise CoderError(f"pmfs must be 2-D, got shape {rows.shape}")
    num, width = rows.shape
    lens = np.asarray(pmf_lengths)
    tails = _float32_rows("tail_masses", tail_masses)
    if lens.shape != (num,) or tails.shape != (num,):
        raise CoderError(f"pmf_lengths and tail_masses must have shape ({num},)")
    lens = _int32("pmf_lengths", lens, 1)
    if num and (lens.min() < 1 or lens.max() > width):
        raise CoderError(f"pmf_lengths must lie in [1, {width}]")
    columns = np.arange(width + 1)
    probs = np.zeros((num, width + 1), dtype=np.float32)
    probs[:, :width] = np.where(columns[None, :width] < lens[:, None], rows, 0.0)
    probs[np.arange(num), lens] = tails
    cdfs = pmf_to_quantized_cdf(probs, precision, lengths=lens + 1)
    return cdfs, (lens + 2).astype(np.int32)
