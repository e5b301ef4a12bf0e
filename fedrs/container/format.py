"""The ``.fedrs`` file format: its layout, and the encoding and decoding of its parts.

One ``.fedrs`` file holds a whole archive: a header, one *record* per patch, and an *index*
with the codes of all records stored together, so that opening the archive and building its
faiss index reads neither the records nor the bitstreams.
:class:`~fedrs.container.ArchiveWriter` writes it and
:class:`~fedrs.container.CompressedArchive` reads it.

Format, version 1
-----------------
All integers are little-endian and unsigned. The file is, in order::

    preamble | header | record 0 | record 1 | ... | record N-1 | index | trailer

**Preamble** (32 bytes at offset 0). Bytes 0-9 (magic and version) keep this meaning in every
future version, so that any reader can tell which version wrote a file:

======  =====  ==============================================================================
offset  size   field
======  =====  ==============================================================================
0       8      magic ``89 46 45 44 52 53 0D 0A`` (``b"\\x89FEDRS\\r\\n"``)
8       2      format version (``1``)
10      2      flags, ``0`` (reserved)
12      4      ``header_length``: bytes of the header that follows the preamble
16      4      CRC-32 (``zlib.crc32``) of the header bytes
20      12     reserved, zero
======  =====  ==============================================================================

**Header** (``header_length`` bytes at offset 32): a UTF-8 JSON object with the keys
``format`` (``"fedrs-container"``; ``"fedrs-archive"``, written by earlier versions, is read
alike), ``hash_bits`` (``K``, a positive multiple of 8),
``model_fingerprint`` (non-empty string: which model produced the bitstreams and codes; codes of
different models are not comparable), ``label_names`` (list of the ``L`` class names, in the order
of the label bits; BigEarthNet's 19 classes by default), ``name`` (string or ``null``: the
archive's display name), ``created`` (object: ``utc`` ISO-8601 time and ``fedrs_version``) and
``meta`` (any JSON value given by the writer, e.g. the model configuration). Readers ignore keys
they do not know.

**Records** follow the header back to back, record ``i`` at ``record_offsets[i]`` of the index::

    record_length  u32    bytes of the record after this field (= 4 + len(body))
    crc32          u32    CRC-32 of body
    body:
      meta_length  u32
      meta         meta_length bytes, UTF-8 JSON (below)
      code         K/8 bytes, the packed hash code (numpy.packbits bit order)
      labels       ceil(L/8) bytes, the multi-hot labels packed (numpy.packbits bit order)
      payload      the bitstreams, concatenated in the order the meta lists them

The record ``meta`` is a JSON object: ``patch_id`` (a string that can name a file: no path
separator, no ``..``, no leading dot, no control character, at most 200 UTF-8 bytes; see
:func:`fedrs.io.name_problem`); ``streams``: a list of
``[modality, [[stream_name, byte_length], ...]]`` pairs (e.g. ``[["s2", [["y", 1234],
["z", 56]]]]``) whose lengths add up to the payload size; ``shapes``: an object
``{modality: {name: [int, ...]}}`` of small non-negative integers (latent shapes);
``georef``: an object ``{modality: {"crs": str, "transform": [a, b, c, d, e, f], "width": int,
"height": int}}`` (CRS as WKT or ``"EPSG:n"``; the six coefficients of ``affine.Affine`` /
``rasterio``'s transform, ``x = a*col + b*row + c``, ``y = d*col + e*row + f``). A record is
self-contained: its code and labels repeat those of the index, and the reader checks that they
agree.

**Index** (at ``index_offset`` of the trailer, ``index_length`` bytes)::

    count           u64   N, the number of records
    code_bytes      u32   K/8
    label_count     u32   L
    ids_length      u64   bytes of the patch-id block
    record_offsets  u64[N+1]   absolute file offsets of the records; the last is index_offset
    codes           u8[N * K/8]          all hash codes, row after row
    labels          u8[N * ceil(L/8)]    all packed labels, row after row
    patch_ids       ids_length bytes: the N patch ids in UTF-8, separated by NUL bytes

**Trailer** (the last 32 bytes)::

    index_offset    u64
    index_length    u64
    index_crc32     u32   CRC-32 of the index bytes
    reserved        u32   zero
    end_magic       8     b"FEDRSEND"

Robustness: every length and offset read from the file is checked against the file size before
anything is allocated from it; the header and the index carry their own CRC, and each record its
own, and the reserved fields of the preamble and the trailer must be zero, so that no bit of the
file goes unchecked.  A damaged record, or one whose patch id cannot name a file, raises
:class:`CorruptRecordError` naming it while the other records remain readable.  A file is
written under a temporary name in the target folder and renamed when complete, so the final name
never holds a partial archive.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fedrs.container.record import GeoReference
from fedrs.errors import InputError

__all__ = ["CONTAINER_FORMAT", "END_MAGIC", "FORMAT_VERSION", "MAGIC"]

MAGIC = b"\x89FEDRS\r\n"
"""First 8 bytes of every ``.fedrs`` file."""

END_MAGIC = b"FEDRSEND"
"""Last 8 bytes of every complete ``.fedrs`` file."""

FORMAT_VERSION = 1
"""The container format version this fedrs writes and reads."""

CONTAINER_FORMAT = "fedrs-container"
"""The header's ``format``: what the file is (a ``.fedrs`` container). What its records hold
is said by the writer in ``meta`` (``"fedrs-compressed-archive"``: :mod:`fedrs.compression`)."""

_READ_FORMAT_NAMES = (CONTAINER_FORMAT, "fedrs-archive")
"""Header ``format`` values read: this version's and the one earlier versions wrote (a tuple:
the value comes from the file and need not be hashable)."""

# the fixed-size parts of the layout and the encoding and decoding of the others are the
# reader's and the writer's (fedrs.container.reader, fedrs.container.writer)
PREAMBLE = struct.Struct("<8sHHII12s")
TRAILER = struct.Struct("<QQII8s")
INDEX_HEAD = struct.Struct("<QIIQ")
U32 = struct.Struct("<I")
REC_HEAD = struct.Struct("<II")
U32_MAX = 2**32 - 1
_SHAPE_MAX = 2**63 - 1


class FormatProblem(Exception):  # control flow: never leaves fedrs.container
    """A structural problem found while parsing; the reader turns it into a typed error
    (:class:`CorruptArchiveError`, :class:`CorruptRecordError`)."""


# ------------------------------------------------------------------------------------------------
# Encoding (raise InputError)


def check_stored_name(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise InputError(f"{where}: {what} must be a non-empty string without NUL, got {value!r}")
    return value


def encode_labels(
    labels: Any, names: tuple[str, ...], index: Mapping[str, int], where: str
) -> np.ndarray:
    """Labels in any accepted form -> bool vector (L,)."""
    out = np.zeros(len(names), dtype=bool)
    if labels is None:
        return out
    if isinstance(labels, str):
        raise InputError(f"{where}: labels must be a list of class names, not a single string")
    if isinstance(labels, Sequence | set | frozenset) and all(isinstance(x, str) for x in labels):
        unknown = [x for x in labels if x not in index]
        if unknown:
            raise InputError(f"{where}: unknown class names {unknown}; the archive knows {names}")
        out[[index[x] for x in labels]] = True
        return out
    arr = np.asarray(labels)
    if arr.dtype.kind in "US" and arr.ndim == 1:  # a numpy array of class names
        return encode_labels(arr.tolist(), names, index, where)
    if arr.shape != (len(names),):
        raise InputError(
            f"{where}: labels must be a multi-hot vector of {len(names)} values or a list of "
            f"class names, got shape {arr.shape}"
        )
    if arr.dtype != np.bool_:
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise InputError(f"{where}: labels must be bool or numeric, got dtype {arr.dtype}")
        if not ((arr == 0) | (arr == 1)).all():
            raise InputError(f"{where}: multi-hot labels must be 0 or 1")
    return arr.astype(bool)


def encode_streams(streams: Any, where: str) -> tuple[list[Any], list[bytes]]:
    if not isinstance(streams, Mapping):
        raise InputError(f"{where}: streams must be a mapping {{modality: {{name: bytes}}}}")
    meta: list[Any] = []
    payload: list[bytes] = []
    for modality, named in streams.items():
        check_stored_name(modality, "a modality name", f"{where}: streams")
        if not isinstance(named, Mapping):
            raise InputError(f"{where}: streams[{modality!r}] must be a mapping {{name: bytes}}")
        entries = []
        for name, data in named.items():
            check_stored_name(name, "a stream name", f"{where}: streams[{modality!r}]")
            if not isinstance(data, bytes | bytearray | memoryview):
                raise InputError(
                    f"{where}: streams[{modality!r}][{name!r}] must be bytes, got "
                    f"{type(data).__name__}"
                )
            blob = bytes(data)
            entries.append([name, len(blob)])
            payload.append(blob)
        meta.append([modality, entries])
    return meta, payload


def encode_shapes(shapes: Any, where: str) -> dict[str, dict[str, list[int]]]:
    if not isinstance(shapes, Mapping):
        raise InputError(f"{where}: shapes must be a mapping {{modality: {{name: [int, ...]}}}}")
    out: dict[str, dict[str, list[int]]] = {}
    for modality, named in shapes.items():
        check_stored_name(modality, "a modality name", f"{where}: shapes")
        if not isinstance(named, Mapping):
            raise InputError(f"{where}: shapes[{modality!r}] must be a mapping {{name: [int]}}")
        out[modality] = {}
        for name, dims in named.items():
            check_stored_name(name, "a shape name", f"{where}: shapes[{modality!r}]")
            values = list(dims) if isinstance(dims, Iterable) else None
            if values is None or not all(
                not isinstance(v, bool) and isinstance(v, int | np.integer) and 0 <= v <= _SHAPE_MAX
                for v in values
            ):
                raise InputError(
                    f"{where}: shapes[{modality!r}][{name!r}] must be a list of non-negative "
                    f"integers, got {dims!r}"
                )
            out[modality][name] = [int(v) for v in values]
    return out


def encode_georef(georef: Any, where: str) -> dict[str, dict[str, Any]]:
    if not isinstance(georef, Mapping):
        raise InputError(f"{where}: georef must be a mapping {{modality: GeoReference}}")
    out = {}
    for modality, value in georef.items():
        check_stored_name(modality, "a modality name", f"{where}: georef")
        out[modality] = GeoReference.coerce(value, f"{where}: georef[{modality!r}]").to_json()
    return out


# ------------------------------------------------------------------------------------------------
# Decoding (raise FormatProblem)


def parse_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatProblem(f"not UTF-8 JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") not in _READ_FORMAT_NAMES:
        raise FormatProblem(f"not a {CONTAINER_FORMAT} header")
    bits = header.get("hash_bits")
    if isinstance(bits, bool) or not isinstance(bits, int) or bits <= 0 or bits % 8:
        raise FormatProblem(f"hash_bits {bits!r} is not a positive multiple of 8")
    fp = header.get("model_fingerprint")
    if not isinstance(fp, str) or not fp:
        raise FormatProblem("model_fingerprint missing")
    names = header.get("label_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise FormatProblem("label_names is not a list of strings")
    name = header.get("name")
    if name is not None and not isinstance(name, str):
        raise FormatProblem("name is not a string")
    header.setdefault("name", None)
    created = header.get("created", {})
    if not isinstance(created, dict):
        raise FormatProblem("created is not an object")
    header["created"] = created
    header.setdefault("meta", None)
    return header


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def decode_streams(meta: Any, body: bytes, at: int) -> dict[str, dict[str, bytes]]:
    if not isinstance(meta, list):
        raise FormatProblem("streams is not a list")
    streams: dict[str, dict[str, bytes]] = {}
    for entry in meta:
        if not (isinstance(entry, list) and len(entry) == 2 and _is_name(entry[0])):
            raise FormatProblem("bad streams entry")
        modality, named = entry
        if not isinstance(named, list) or modality in streams:
            raise FormatProblem(f"bad streams of {modality!r}")
        streams[modality] = {}
        for item in named:
            if not (
                isinstance(item, list)
                and len(item) == 2
                and _is_name(item[0])
                and isinstance(item[1], int)
                and not isinstance(item[1], bool)
                and item[1] >= 0
            ):
                raise FormatProblem(f"bad stream entry in {modality!r}")
            name, length = item
            if at + length > len(body):
                raise FormatProblem(f"stream {modality}/{name} runs past the end of the record")
            streams[modality][name] = body[at : at + length]
            at += length
    if at != len(body):
        raise FormatProblem(f"{len(body) - at} bytes after the last stream")
    return streams


def decode_shapes(meta: Any) -> dict[str, dict[str, list[int]]]:
    if not isinstance(meta, dict):
        raise FormatProblem("shapes is not an object")
    for named in meta.values():
        if not isinstance(named, dict):
            raise FormatProblem("bad shapes entry")
        for dims in named.values():
            if not isinstance(dims, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in dims
            ):
                raise FormatProblem("bad shape")
    return meta


def decode_georef(meta: Any) -> dict[str, GeoReference]:
    if not isinstance(meta, dict):
        raise FormatProblem("georef is not an object")
    try:
        return {m: GeoReference.coerce(v, f"georef[{m!r}]") for m, v in meta.items()}
    except InputError as exc:
        raise FormatProblem(str(exc)) from None
