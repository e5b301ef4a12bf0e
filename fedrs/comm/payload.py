"""Byte format of an entropy-coded update: header, fitted frequency tables, rANS stream.

A payload carries the quantisation symbols of several tensors (the keys of a model update).
Each tensor is coded with one frequency table fitted to the symbols actually sent: a tensor of
at least ``own_table_from`` elements gets its own table, smaller ones share one pooled table.
The tables travel in the payload, so the receiver needs nothing but the payload and the
reference model it was coded against.

Layout (integers little-endian):

=========  ======================================================================================
magic      4 bytes ``b"FRUP"``
version    1 byte, ``1``
header     u32 length, then that many bytes: zlib-compressed JSON ``{"keys": [[key, dtype,
           shape, step, table], ...], "tables": [[offset, n], ...], "stream": nbytes}``;
           ``table = -1`` marks a tensor sent without symbols (its reference is kept)
tables     for each table, ``n + 1`` u16 frequencies (``n`` regular symbols from ``offset``,
           then the escape symbol), each >= 1, summing to ``2**16``
stream     ``nbytes`` of :func:`fedrs.coder.encode_with_indexes` output: the symbols of every
           tensor with a table, tensor after tensor in header order, each in C order
crc32      4 bytes, zlib's CRC-32 of everything before it
=========  ======================================================================================

Symbols outside a table's range are escaped by the coder and still round-trip exactly, so a
table may leave out the rare extreme values (:data:`TAIL_FRACTION` of each end).

A payload is untrusted input (a client's reply): :func:`unpack` refuses, with an
:class:`~fedrs.comm.errors.UpdateCodecError`, anything that would make it allocate more than the
tensors it declares: a header that decompresses to more than :data:`MAX_HEADER_BYTES` or nests
too deeply, a dtype other than a plain float16/32/64, a table no tensor uses (so there are
never more tables than coded tensors), a table wider than :data:`MAX_TABLE_SYMBOLS`; and, when
the receiver passes ``expect``, any tensor that does not fit its model, before a table is read.
"""

from __future__ import annotations

import json
import math
import reprlib
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedrs import coder

from .errors import UpdateCodecError

MAGIC = b"FRUP"
VERSION = 1
MAX_TABLE_SYMBOLS = 4096
"""Widest table (regular symbols); values beyond it are escaped."""
TAIL_FRACTION = 1e-3
"""Fraction of the symbols at each end of a table's range that may be left to escapes."""
MAX_SYMBOLS = 1 << 31
"""Most symbols one payload may declare."""
MAX_HEADER_BYTES = 1 << 20
"""Largest decompressed JSON header a payload may carry (bytes)."""
MAX_DIMENSIONS = 64
"""Most dimensions a coded tensor may declare (numpy's own limit)."""
FLOAT_SIZES = (2, 4, 8)
"""Item sizes of the floating dtypes a coded tensor may have (float16, float32, float64)."""

_PRECISION_TOTAL = 1 << coder.PRECISION
_PREFIX = len(MAGIC) + 1 + 4
_CRC = 4


def short_repr(value: object) -> str:
    """A bounded repr of an untrusted value (depth, lengths and digits cut)."""
    brief = reprlib.Repr()
    brief.maxlevel, brief.maxstring, brief.maxother, brief.maxlong = 3, 60, 60, 40
    try:
        return brief.repr(value)
    except ValueError:  # an int too long to print
        return f"<{type(value).__name__}>"


@dataclass(frozen=True)
class CodedTensor:
    """One tensor of a payload.

    Attributes:
        key: Model key.
        dtype: numpy dtype string of the tensor (e.g. ``"<f4"``).
        shape: Shape of the tensor.
        step: Quantisation step: the tensor is ``reference + step * symbols``.
        symbols: The quantisation symbols (int32, C order), or ``None`` when every symbol is
            zero (nothing is coded; the reference is kept).
    """

    key: str
    dtype: str
    shape: tuple[int, ...]
    step: float
    symbols: npt.NDArray[np.int32] | None


def _fit_range(symbols: npt.NDArray[np.int32]) -> tuple[int, int]:
    """Lowest value and number of regular symbols of a table for ``symbols``."""
    count = symbols.size
    cut = int(count * TAIL_FRACTION)
    if cut:
        ends = np.partition(symbols, (cut, count - 1 - cut))
        low, high = int(ends[cut]), int(ends[count - 1 - cut])
    else:
        low, high = int(symbols.min()), int(symbols.max())
    if high - low + 1 > MAX_TABLE_SYMBOLS:
        centre = int(np.median(symbols))
        low = max(low, centre - MAX_TABLE_SYMBOLS // 2)
        high = low + MAX_TABLE_SYMBOLS - 1
    return low, high - low + 1


def fit_tables(
    groups: Sequence[npt.NDArray[np.int32]],
) -> tuple[npt.NDArray[np.int32], list[npt.NDArray[np.uint16]]]:
    """Fit one table to each group of symbols.

    Returns:
        The offsets ``(T,)`` and, per table, its ``n + 1`` frequencies (escape last).
    """
    offsets = np.zeros(len(groups), dtype=np.int32)
    lengths = np.zeros(len(groups), dtype=np.int32)
    for t, symbols in enumerate(groups):
        offsets[t], lengths[t] = _fit_range(symbols)
    width = int(lengths.max())
    pmfs = np.zeros((len(groups), width), dtype=np.float64)
    tails = np.zeros(len(groups), dtype=np.float64)
    for t, symbols in enumerate(groups):
        shifted = symbols.astype(np.int64) - int(offsets[t])
        inside = (shifted >= 0) & (shifted < lengths[t])
        counts = np.bincount(shifted[inside], minlength=int(lengths[t]))
        pmfs[t, : lengths[t]] = counts / symbols.size
        tails[t] = (symbols.size - int(inside.sum())) / symbols.size
    cdfs, cdf_lengths = coder.cdf_tables(pmfs, lengths, tails, coder.PRECISION)
    freqs = [np.diff(cdfs[t, : cdf_lengths[t]]).astype(np.uint16) for t in range(len(groups))]
    return offsets, freqs


def _cdf_arrays(
    offsets: Sequence[int] | npt.NDArray[np.int32], freqs: Sequence[npt.NDArray[np.uint16]]
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    width = max(len(f) for f in freqs) + 1
    cdfs = np.zeros((len(freqs), width), dtype=np.int32)
    for t, f in enumerate(freqs):
        cdfs[t, 1 : len(f) + 1] = np.cumsum(f, dtype=np.int64)
    lengths = np.array([len(f) + 1 for f in freqs], dtype=np.int32)
    return cdfs, lengths, np.asarray(offsets, dtype=np.int32)


def pack(tensors: Sequence[CodedTensor], *, own_table_from: int = 4096) -> bytes:
    """Entropy-code ``tensors`` into one payload (format in the module docstring).

    Args:
        tensors: The tensors, in the order the receiver will see them.
        own_table_from: Tensors with at least this many symbols get their own table; the
            others share one.

    Returns:
        The payload bytes.
    """
    table_of: list[int] = []
    groups: list[list[npt.NDArray[np.int32]]] = []
    pooled = -1
    for tensor in tensors:
        if tensor.symbols is None:
            table_of.append(-1)
            continue
        if tensor.symbols.size >= own_table_from:
            table_of.append(len(groups))
            groups.append([tensor.symbols.reshape(-1)])
            continue
        if pooled < 0:
            pooled = len(groups)
            groups.append([])
        groups[pooled].append(tensor.symbols.reshape(-1))
        table_of.append(pooled)
    stream = b""
    offsets: npt.NDArray[np.int32] = np.zeros(0, dtype=np.int32)
    freqs: list[npt.NDArray[np.uint16]] = []
    if groups:
        offsets, freqs = fit_tables([np.concatenate(g) for g in groups])
        coded = [
            (t, s.symbols.reshape(-1))
            for t, s in zip(table_of, tensors, strict=True)
            if s.symbols is not None
        ]
        symbols = np.concatenate([values for _, values in coded])
        sizes = [values.size for _, values in coded]
        indexes = np.repeat(np.array([t for t, _ in coded], dtype=np.int32), sizes)
        stream = coder.encode_with_indexes(symbols, indexes, *_cdf_arrays(offsets, freqs))
    header = {
        "keys": [
            [t.key, t.dtype, list(t.shape), float(t.step), table]
            for t, table in zip(tensors, table_of, strict=True)
        ],
        "tables": [[int(o), len(f) - 1] for o, f in zip(offsets, freqs, strict=True)],
        "stream": len(stream),
    }
    head = zlib.compress(json.dumps(header, separators=(",", ":")).encode("utf-8"), 9)
    body = b"".join(
        [
            MAGIC,
            bytes([VERSION]),
            struct.pack("<I", len(head)),
            head,
            *(f.astype("<u2").tobytes() for f in freqs),
            stream,
        ]
    )
    return body + struct.pack("<I", zlib.crc32(body))


@dataclass(frozen=True)
class _Entry:
    key: str
    dtype: np.dtype
    shape: tuple[int, ...]
    step: float
    table: int


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_dtype(key: str, dtype: object) -> np.dtype:
    """The dtype a header entry names: a plain float16, float32 or float64, nothing else."""
    if not isinstance(dtype, str):
        raise UpdateCodecError(key, f"dtype must be a string, got {short_repr(dtype)}")
    try:
        parsed = np.dtype(dtype)
    except Exception:  # np.dtype raises TypeError, ValueError, SyntaxError ... on bad strings
        raise UpdateCodecError(key, f"unknown dtype {short_repr(dtype)}") from None
    if parsed.kind != "f" or parsed.shape != () or parsed.itemsize not in FLOAT_SIZES:
        raise UpdateCodecError(
            key, f"coded tensors must be floating point (float16/32/64), got {short_repr(dtype)}"
        )
    return parsed


def _parse_entry(name: str, raw: object, num_tables: int) -> _Entry:
    if not isinstance(raw, list) or len(raw) != 5 or not isinstance(raw[0], str):
        raise UpdateCodecError(name, f"malformed header entry {short_repr(raw)}")
    key, dtype, shape, step, table = raw
    parsed = _parse_dtype(key, dtype)
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMENSIONS
        or not all(_is_int(n) and n >= 0 for n in shape)
    ):
        raise UpdateCodecError(key, f"malformed shape {short_repr(shape)}")
    if not isinstance(step, int | float) or isinstance(step, bool) or not math.isfinite(step):
        raise UpdateCodecError(key, f"malformed step {short_repr(step)}")
    if not _is_int(table) or not -1 <= table < num_tables:
        raise UpdateCodecError(key, f"table {short_repr(table)} outside [-1, {num_tables})")
    if table >= 0 and step <= 0:
        raise UpdateCodecError(key, f"step must be positive, got {step!r}")
    return _Entry(key, parsed, tuple(int(n) for n in shape), float(step), int(table))


def _inflate_header(name: str, compressed: bytes) -> bytes:
    """The decompressed header, refused beyond :data:`MAX_HEADER_BYTES` (never inflated further)."""
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(compressed, MAX_HEADER_BYTES + 1)
    except zlib.error as exc:
        raise UpdateCodecError(name, f"header cannot be read: {exc}") from None
    if len(text) > MAX_HEADER_BYTES:
        raise UpdateCodecError(
            name, f"header decompresses to more than {MAX_HEADER_BYTES} bytes (MAX_HEADER_BYTES)"
        )
    if not inflater.eof:
        raise UpdateCodecError(name, "header cannot be read: incomplete compressed data")
    return text


def _header(name: str, blob: bytes) -> tuple[dict[str, object], int]:
    if len(blob) < _PREFIX + _CRC:
        raise UpdateCodecError(name, f"payload truncated ({len(blob)} bytes)")
    if blob[: len(MAGIC)] != MAGIC:
        raise UpdateCodecError(name, "not a coded update (bad magic bytes)")
    if blob[len(MAGIC)] != VERSION:
        raise UpdateCodecError(name, f"unsupported payload version {blob[len(MAGIC)]}")
    (crc,) = struct.unpack("<I", blob[-_CRC:])
    if zlib.crc32(blob[:-_CRC]) != crc:
        raise UpdateCodecError(name, "checksum mismatch: the payload is damaged or truncated")
    (head_len,) = struct.unpack("<I", blob[len(MAGIC) + 1 : _PREFIX])
    if _PREFIX + head_len > len(blob) - _CRC:
        raise UpdateCodecError(name, "header runs past the end of the payload")
    text = _inflate_header(name, blob[_PREFIX : _PREFIX + head_len])
    try:
        header = json.loads(text)
    except RecursionError:
        raise UpdateCodecError(name, "header cannot be read: JSON nested too deeply") from None
    except ValueError as exc:
        raise UpdateCodecError(name, f"header cannot be read: {exc}") from None
    if not isinstance(header, dict) or not {"keys", "tables", "stream"} <= set(header):
        raise UpdateCodecError(name, "malformed header")
    return header, _PREFIX + head_len


def unpack(
    blob: bytes,
    *,
    name: str,
    expect: Callable[[str, np.dtype, tuple[int, ...]], None] | None = None,
) -> list[tuple[str, np.dtype, tuple[int, ...], float, npt.NDArray[np.int32] | None]]:
    """Read a payload of :func:`pack`.

    Args:
        blob: The payload.
        name: What to call the payload in errors (its record key).
        expect: Called with each tensor's key, dtype and shape before any table is read or the
            stream is decoded (to refuse a payload that does not fit the receiver's model
            early; it should raise :class:`UpdateCodecError`).

    Returns:
        Per tensor, in payload order: key, dtype, shape, step and symbols (``None`` when the
        tensor was sent without symbols).

    Raises:
        UpdateCodecError: The payload is truncated, damaged, malformed or declares more than it
            may (see the module docstring); the message names the payload or the model key
            concerned.
    """
    header, position = _header(name, blob)
    tables, keys, stream = header["tables"], header["keys"], header["stream"]
    if not isinstance(tables, list) or not isinstance(keys, list) or not isinstance(stream, int):
        raise UpdateCodecError(name, "malformed header")
    stream_len = int(stream)
    # The tensors first: what the receiver expects, and which tables they use, bound what may
    # be read and allocated next (at most one table per coded tensor).
    entries = [_parse_entry(name, raw, len(tables)) for raw in keys]
    seen: set[str] = set()
    total = 0
    for entry in entries:
        if entry.key in seen:
            raise UpdateCodecError(entry.key, "key appears twice in the payload")
        seen.add(entry.key)
        if expect is not None:
            expect(entry.key, entry.dtype, entry.shape)
        if entry.table >= 0:
            total += math.prod(entry.shape)
            if total > MAX_SYMBOLS:
                raise UpdateCodecError(entry.key, "payload declares too many symbols")
    coded_count = sum(1 for e in entries if e.table >= 0)
    if len(tables) > coded_count:
        raise UpdateCodecError(
            name, f"{len(tables)} tables for {coded_count} coded tensors (at most one each)"
        )
    used = {e.table for e in entries if e.table >= 0}
    unused = [t for t in range(len(tables)) if t not in used]
    if unused:
        raise UpdateCodecError(name, f"table {unused[0]} is used by no tensor")
    offsets: list[int] = []
    freqs: list[npt.NDArray[np.uint16]] = []
    end = len(blob) - _CRC
    for t, table in enumerate(tables):
        if (
            not isinstance(table, list)
            or len(table) != 2
            or not all(_is_int(v) for v in table)
            or not 1 <= table[1] <= MAX_TABLE_SYMBOLS
            or not -(1 << 31) <= table[0] < (1 << 31) - table[1]
        ):
            raise UpdateCodecError(name, f"malformed table {t}: {short_repr(table)}")
        size = 2 * (table[1] + 1)
        if position + size > end:
            raise UpdateCodecError(name, f"table {t} runs past the end of the payload")
        freq = np.frombuffer(blob, dtype="<u2", count=table[1] + 1, offset=position)
        position += size
        if int(freq.min()) < 1 or int(freq.sum(dtype=np.int64)) != _PRECISION_TOTAL:
            raise UpdateCodecError(name, f"table {t} is not a valid frequency table")
        offsets.append(table[0])
        freqs.append(freq.astype(np.uint16))
    if position + stream_len != end:
        raise UpdateCodecError(
            name, f"stream length {stream_len} does not match the payload ({end - position})"
        )
    symbols = np.zeros(0, dtype=np.int32)
    if total:
        coded = [e for e in entries if e.table >= 0]
        indexes = np.repeat(
            np.array([e.table for e in coded], dtype=np.int32),
            [math.prod(e.shape) for e in coded],
        )
        try:
            symbols = coder.decode_with_indexes(
                blob[position:end], indexes, *_cdf_arrays(offsets, freqs)
            )
        except coder.CoderError as exc:
            raise UpdateCodecError(name, f"entropy-coded stream: {exc}") from None
    elif stream_len:
        raise UpdateCodecError(name, "stream present but no tensor has symbols")
    out: list[tuple[str, np.dtype, tuple[int, ...], float, npt.NDArray[np.int32] | None]] = []
    start = 0
    for entry in entries:
        values = None
        if entry.table >= 0:
            size = math.prod(entry.shape)
            values = symbols[start : start + size].reshape(entry.shape)
            start += size
        out.append((entry.key, entry.dtype, entry.shape, entry.step, values))
    return out
