"""The ``.fedrs`` compressed-archive container: bitstreams, hash codes, labels, georeference.

An archive owner stores every patch of its archive as the bitstreams of the learned codec and
answers content queries from the hash codes read from those bitstreams. One ``.fedrs`` file holds
a whole archive: a header, one *record* per patch, and an *index* with the codes of all records
stored together, so that opening the archive and building its faiss index reads neither the
records nor the bitstreams.

Writing::

    with ArchiveWriter("client-3.fedrs", hash_bits=64, model_fingerprint=fp, meta=config) as w:
        for patch in patches:
            w.add(Record(patch_id, code, streams={"s2": {"y": y_bytes, "z": z_bytes}},
                         shapes={"s2": {"y": [8, 8], "z": [2, 2]}}, labels=multi_hot))

Reading::

    archive = CompressedArchive.open("client-3.fedrs")
    distances, positions = archive.search(query_codes, k=20)
    record = archive.record(int(positions[0, 0]))  # or archive.record("S2A_MSIL2A_...")

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
``format`` (``"fedrs-archive"``), ``hash_bits`` (``K``, a positive multiple of 8),
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

import contextlib
import json
import math
import os
import secrets
import struct
import threading
import weakref
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np

from fedrs.codes import _check_bits, as_packed
from fedrs.errors import InputError
from fedrs.io import name_problem, sync_folder
from fedrs.retrieval.index import HashIndex

__all__ = [
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

MAGIC = b"\x89FEDRS\r\n"
"""First 8 bytes of every ``.fedrs`` file."""

END_MAGIC = b"FEDRSEND"
"""Last 8 bytes of every complete ``.fedrs`` file."""

FORMAT_VERSION = 1
"""The container format version this fedrs writes and reads."""

_PREAMBLE = struct.Struct("<8sHHII12s")
_TRAILER = struct.Struct("<QQII8s")
_INDEX_HEAD = struct.Struct("<QIIQ")
_U32 = struct.Struct("<I")
_REC_HEAD = struct.Struct("<II")
_FORMAT_NAME = "fedrs-archive"
_U32_MAX = 2**32 - 1
_SHAPE_MAX = 2**63 - 1
_O_BINARY = getattr(os, "O_BINARY", 0)

# ------------------------------------------------------------------------------------------------
# Errors


class ContainerError(InputError):
    """Base of the errors about a ``.fedrs`` file. ``path`` names it, ``reason`` says why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across Ray workers
        return (type(self), (str(self.path), self.reason))


class NotAContainerError(ContainerError):
    """The file does not exist, is not a regular file, or does not start with the magic."""


class CorruptArchiveError(ContainerError):
    """The file is a ``.fedrs`` container but its header, index or trailer is damaged."""


class ContainerExistsError(ContainerError):
    """The target of an :class:`ArchiveWriter` exists and ``overwrite`` was not given."""


class ContainerVersionError(ContainerError):
    """The file was written in a format version this fedrs does not read.

    ``found`` is the file's version, ``supported`` the one this fedrs reads.
    """

    def __init__(self, path: str | Path, found: int, supported: int = FORMAT_VERSION) -> None:
        self.found = int(found)
        self.supported = int(supported)
        super().__init__(
            path,
            f"written by format version {self.found}; this fedrs reads {self.supported} "
            f"({'upgrade fedrs' if self.found > self.supported else 'rewrite the archive'})",
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self.path), self.found, self.supported))


class CorruptRecordError(ContainerError):
    """One record of an archive is damaged; the others may still be read.

    Attributes:
        path: the archive file.
        record: the record's patch id when the index knows it, else its position.
        position: the record's position in the archive, when known.
        reason: what is wrong.
    """

    def __init__(
        self, path: str | Path, record: str | int, reason: str, position: int | None = None
    ) -> None:
        self.record = record
        self.position = position
        where = f"record {record!r}" if isinstance(record, str) else f"record #{record}"
        if isinstance(record, str) and position is not None:
            where += f" (#{position})"
        super().__init__(path, f"{where}: {reason}")
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self.path), self.record, self.reason, self.position))


class RecordNotFoundError(ContainerError, KeyError):
    """No record of the archive has the requested patch id or position."""

    def __str__(self) -> str:  # KeyError would quote the message
        return f"{self.path}: {self.reason}"


class _Bad(Exception):
    """Internal: a structural problem found while parsing; turned into a typed error."""


# ------------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class GeoReference:
    """Where a patch lies: CRS, affine transform and raster size of one modality.

    Args:
        crs: WKT or ``"EPSG:n"`` string (a ``rasterio`` ``CRS`` is converted with
            ``to_string()``).
        transform: the six coefficients ``(a, b, c, d, e, f)`` of ``affine.Affine`` (what
            ``rasterio`` returns as ``dataset.transform``; an ``Affine`` is accepted).
        width: raster width in pixels.
        height: raster height in pixels.
    """

    crs: str
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int

    @classmethod
    def coerce(cls, value: Any, where: str) -> GeoReference:
        """Build from a :class:`GeoReference` or a mapping with the same keys; validate.

        Raises:
            InputError: a missing key or a bad value, naming ``where``.
        """
        if isinstance(value, GeoReference):
            crs, transform, width, height = value.crs, value.transform, value.width, value.height
        elif isinstance(value, Mapping):
            missing = {"crs", "transform", "width", "height"} - set(value)
            if missing:
                raise InputError(f"{where}: georeference lacks {sorted(missing)}")
            crs, transform = value["crs"], value["transform"]
            width, height = value["width"], value["height"]
        else:
            raise InputError(
                f"{where}: georeference must be a GeoReference or a mapping, got "
                f"{type(value).__name__}"
            )
        if hasattr(crs, "to_string") and not isinstance(crs, str):
            crs = crs.to_string()
        if not isinstance(crs, str) or not crs.strip():
            raise InputError(f"{where}: crs must be a non-empty WKT or 'EPSG:n' string")
        try:
            coeffs = [float(x) for x in transform]
        except (TypeError, ValueError) as exc:
            raise InputError(f"{where}: transform must be 6 numbers ({exc})") from exc
        if len(coeffs) == 9 and coeffs[6:] == [0.0, 0.0, 1.0]:  # a full affine.Affine matrix
            coeffs = coeffs[:6]
        if len(coeffs) != 6 or not all(math.isfinite(x) for x in coeffs):
            raise InputError(f"{where}: transform must be 6 finite numbers (a, b, c, d, e, f)")
        for key, size in (("width", width), ("height", height)):
            if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
                raise InputError(f"{where}: {key} must be a positive integer, got {size!r}")
        return cls(crs, (*coeffs,), int(width), int(height))  # type: ignore[arg-type]

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored in a record."""
        return {
            "crs": self.crs,
            "transform": list(self.transform),
            "width": self.width,
            "height": self.height,
        }


@dataclass(eq=False, repr=False)
class Record:
    """One patch of a compressed archive.

    When written, fields accept several forms (normalised by :meth:`ArchiveWriter.add`); when
    read back (:meth:`CompressedArchive.record`) they have the canonical form given here.

    Attributes:
        patch_id: the patch name; unique within an archive, and usable as a file name (see
            :func:`fedrs.io.name_problem`).
        code: the hash code; read back as packed ``uint8`` ``(K/8,)``. Written as packed
            ``uint8`` ``(K/8,)`` or unpacked ``(K,)`` (``±1``, bool, scores with bit = value > 0).
        streams: ``{modality: {stream_name: bytes}}``, e.g. ``{"s2": {"y": b"...", "z":
            b"..."}}``; a modality the patch lacks is simply absent. Order is preserved.
        shapes: ``{modality: {name: [int, ...]}}``, small non-negative integers such as the
            latent shapes the decoder needs.
        labels: read back as ``float32`` multi-hot ``(L,)``. Written as a multi-hot vector of
            length ``L`` (bool or 0/1 numbers), a list of class names from the archive's
            ``label_names``, or ``None`` (no label).
        georef: ``{modality: GeoReference}`` (mappings with the same keys are accepted).
        position: the record's position in its archive (set by the reader).
    """

    patch_id: str
    code: Any
    streams: dict[str, dict[str, bytes]] = field(default_factory=dict)
    shapes: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    labels: Any = None
    georef: dict[str, GeoReference] = field(default_factory=dict)
    position: int | None = None

    def __repr__(self) -> str:
        sizes = {m: {n: len(b) for n, b in s.items()} for m, s in self.streams.items()}
        return f"Record(patch_id={self.patch_id!r}, streams={sizes}, position={self.position})"

    @property
    def num_bytes(self) -> int:
        """Total bytes of the bitstreams."""
        return sum(len(b) for s in self.streams.values() for b in s.values())


def _default_label_names() -> tuple[str, ...]:
    from fedrs.data.facts import LABELS_19

    return tuple(LABELS_19)


def _check_name(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise InputError(f"{where}: {what} must be a non-empty string without NUL, got {value!r}")
    return value


def _encode_labels(
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
        return _encode_labels(arr.tolist(), names, index, where)
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


# ------------------------------------------------------------------------------------------------
# Writer


class ArchiveWriter:
    """Write a ``.fedrs`` archive, record by record; use it as a context manager.

    The file is written under a temporary name (``.<name>.<random>.partial``) in the target
    folder and renamed to ``path`` by :meth:`close` (the end of the ``with`` block). If the block
    raises, or :meth:`abort` is called, the temporary file is removed and ``path`` is left as it
    was. An existing ``path`` is replaced only with ``overwrite=True``.

    Args:
        path: the archive to write (conventionally ``*.fedrs``).
        hash_bits: code length ``K``, a positive multiple of 8.
        model_fingerprint: identifies the model that produced streams and codes.
        meta: any JSON-serialisable value stored in the header (e.g. the model config).
        label_names: class names of the label bits; BigEarthNet's 19 classes by default.
        name: display name of the archive (stored in the header; federated search results use
            it); defaults to the file stem when read.
        overwrite: replace an existing file at ``path``.

    Raises:
        InputError: bad arguments, a missing target folder, or ``meta`` not JSON-serialisable.
        ContainerExistsError: ``path`` exists and ``overwrite`` is false.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        hash_bits: int,
        model_fingerprint: str,
        meta: Any = None,
        label_names: Sequence[str] | None = None,
        name: str | None = None,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        self.hash_bits = _check_bits(hash_bits)
        if not isinstance(model_fingerprint, str) or not model_fingerprint:
            raise InputError(
                f"model_fingerprint: expected a non-empty string, got {model_fingerprint!r}"
            )
        names = _default_label_names() if label_names is None else tuple(label_names)
        for label in names:
            _check_name(label, "a label name", "label_names")
        if len(set(names)) != len(names):
            raise InputError("label_names: duplicate class names")
        if name is not None:
            _check_name(name, "the archive name", "name")
        self.label_names = names
        self._label_index = {n: i for i, n in enumerate(names)}
        self._label_bytes = -(-len(names) // 8)
        self._code_bytes = self.hash_bits // 8
        self.overwrite = bool(overwrite)
        header = {
            "format": _FORMAT_NAME,
            "hash_bits": self.hash_bits,
            "model_fingerprint": model_fingerprint,
            "label_names": list(names),
            "name": name,
            "created": {
                "utc": datetime.now(UTC).isoformat(timespec="seconds"),
                "fedrs_version": _fedrs_version(),
            },
            "meta": meta,
        }
        try:
            header_bytes = json.dumps(header, ensure_ascii=False, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise InputError(f"meta: not JSON-serialisable ({exc})") from exc
        if len(header_bytes) > _U32_MAX:
            raise InputError("meta: too large for the archive header (4 GiB)")
        self._check_target()

        fd, self._tmp = _create_temporary(self.path)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        # Removes the temporary file if the writer is dropped without close() or abort().
        self._cleanup = weakref.finalize(self, _discard, self._file, self._tmp)
        preamble = _PREAMBLE.pack(
            MAGIC, FORMAT_VERSION, 0, len(header_bytes), zlib.crc32(header_bytes), bytes(12)
        )
        try:
            self._file.write(preamble + header_bytes)
        except BaseException:
            self._cleanup()
            raise
        self._cursor = len(preamble) + len(header_bytes)
        self._offsets: list[int] = []
        self._codes = bytearray()
        self._labels = bytearray()
        self._ids: list[str] = []
        self._seen: set[str] = set()
        self._closed = False

    # -- target checks --------------------------------------------------------------------

    def _check_target(self) -> None:
        parent = self.path.parent
        if not parent.is_dir():
            raise InputError(f"{self.path}: folder {parent} does not exist")
        if self.path.is_dir():
            raise ContainerExistsError(self.path, "is a folder")
        if self.path.exists() and not self.overwrite:
            raise ContainerExistsError(
                self.path, "already exists; pass overwrite=True to replace it"
            )

    # -- context manager ------------------------------------------------------------------

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __len__(self) -> int:
        return len(self._offsets)

    # -- writing --------------------------------------------------------------------------

    def add(self, record: Record) -> int:
        """Append one record.

        The record is validated before anything is written, so a rejected record leaves the
        writer usable.

        Args:
            record: the patch (see :class:`Record` for the accepted forms of each field).

        Returns:
            The record's position in the archive.

        Raises:
            InputError: a bad field (named with the patch id), a duplicate patch id, or a closed
                writer.
        """
        if self._closed or self._file is None:
            raise InputError(f"{self.path}: the writer is closed")
        if not isinstance(record, Record):
            raise InputError(f"add: expected a Record, got {type(record).__name__}")
        pid = _check_name(record.patch_id, "patch_id", "record")
        where = f"record {pid!r}"
        problem = name_problem(pid)
        if problem is not None:
            raise InputError(f"{where}: patch_id cannot name a file ({problem})")
        if pid in self._seen:
            raise InputError(f"{where}: duplicate patch id in {self.path}")
        code = self._encode_code(record.code, where)
        labels = _encode_labels(record.labels, self.label_names, self._label_index, where)
        streams_meta, payload = _encode_streams(record.streams, where)
        meta = {
            "patch_id": pid,
            "streams": streams_meta,
            "shapes": _encode_shapes(record.shapes, where),
            "georef": _encode_georef(record.georef, where),
        }
        meta_bytes = json.dumps(meta, ensure_ascii=False, allow_nan=False).encode()
        packed_labels = np.packbits(labels).tobytes() if labels.size else b""
        body = b"".join((_U32.pack(len(meta_bytes)), meta_bytes, code, packed_labels, *payload))
        if len(body) + 4 > _U32_MAX:
            raise InputError(f"{where}: larger than 4 GiB")
        self._file.write(_REC_HEAD.pack(len(body) + 4, zlib.crc32(body)))
        self._file.write(body)
        position = len(self._offsets)
        self._offsets.append(self._cursor)
        self._cursor += _REC_HEAD.size + len(body)
        self._codes += code
        self._labels += packed_labels
        self._ids.append(pid)
        self._seen.add(pid)
        return position

    def extend(self, records: Iterable[Record]) -> None:
        """Append several records (see :meth:`add`)."""
        for record in records:
            self.add(record)

    def _encode_code(self, code: Any, where: str) -> bytes:
        arr = np.asarray(code)
        if arr.ndim != 1:
            raise InputError(f"{where}: code must be 1-D ((K/8,) packed or (K,) unpacked)")
        packed = as_packed(arr[None, :], self.hash_bits, name=f"{where}: code")
        return packed.tobytes()

    # -- finishing ------------------------------------------------------------------------

    def close(self) -> Path:
        """Write the index and trailer, and move the file to its final name.

        Returns:
            The final path. Calling ``close`` again returns it without doing anything.

        Raises:
            ContainerExistsError: ``path`` appeared meanwhile and ``overwrite`` is false (the
                temporary file is removed).
        """
        if self._closed:
            return self.path
        if self._file is None:
            raise InputError(f"{self.path}: the writer was aborted")
        try:
            ids_blob = "\x00".join(self._ids).encode()
            offsets = np.asarray([*self._offsets, self._cursor], dtype="<u8")
            index = b"".join(
                (
                    _INDEX_HEAD.pack(
                        len(self._ids), self._code_bytes, len(self.label_names), len(ids_blob)
                    ),
                    offsets.tobytes(),
                    bytes(self._codes),
                    bytes(self._labels),
                    ids_blob,
                )
            )
            trailer = _TRAILER.pack(self._cursor, len(index), zlib.crc32(index), 0, END_MAGIC)
            self._file.write(index)
            self._file.write(trailer)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            self._publish()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._cleanup.detach()
        return self.path

    def _publish(self) -> None:
        if self.overwrite:
            os.replace(self._tmp, self.path)
        else:
            try:
                os.link(self._tmp, self.path)  # atomic: fails if path exists
            except FileExistsError as exc:
                raise ContainerExistsError(
                    self.path, "already exists; pass overwrite=True to replace it"
                ) from exc
            except OSError:  # no hard links on this file system
                if self.path.exists():
                    raise ContainerExistsError(
                        self.path, "already exists; pass overwrite=True to replace it"
                    ) from None
                os.replace(self._tmp, self.path)
            else:
                self._tmp.unlink()
        sync_folder(self.path.parent)

    def abort(self) -> None:
        """Discard everything written; ``path`` is left untouched."""
        if self._closed:
            return
        _discard(self._file, self._tmp)
        self._file = None
        self._cleanup.detach()


def _create_temporary(path: Path) -> tuple[int, Path]:
    """Create ``.<name>.<random>.partial`` beside ``path`` (mode 0666 less the umask)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.partial")
        try:
            return os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | _O_BINARY, 0o666), tmp
        except FileExistsError:
            continue
    raise InputError(f"{path}: cannot create a temporary file beside it")


def _discard(handle: BinaryIO | None, tmp: Path) -> None:
    if handle is not None:
        with contextlib.suppress(OSError):
            handle.close()
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()


def _fedrs_version() -> str:
    from fedrs import __version__

    return __version__


def _encode_streams(streams: Any, where: str) -> tuple[list[Any], list[bytes]]:
    if not isinstance(streams, Mapping):
        raise InputError(f"{where}: streams must be a mapping {{modality: {{name: bytes}}}}")
    meta: list[Any] = []
    payload: list[bytes] = []
    for modality, named in streams.items():
        _check_name(modality, "a modality name", f"{where}: streams")
        if not isinstance(named, Mapping):
            raise InputError(f"{where}: streams[{modality!r}] must be a mapping {{name: bytes}}")
        entries = []
        for name, data in named.items():
            _check_name(name, "a stream name", f"{where}: streams[{modality!r}]")
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


def _encode_shapes(shapes: Any, where: str) -> dict[str, dict[str, list[int]]]:
    if not isinstance(shapes, Mapping):
        raise InputError(f"{where}: shapes must be a mapping {{modality: {{name: [int, ...]}}}}")
    out: dict[str, dict[str, list[int]]] = {}
    for modality, named in shapes.items():
        _check_name(modality, "a modality name", f"{where}: shapes")
        if not isinstance(named, Mapping):
            raise InputError(f"{where}: shapes[{modality!r}] must be a mapping {{name: [int]}}")
        out[modality] = {}
        for name, dims in named.items():
            _check_name(name, "a shape name", f"{where}: shapes[{modality!r}]")
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


def _encode_georef(georef: Any, where: str) -> dict[str, dict[str, Any]]:
    if not isinstance(georef, Mapping):
        raise InputError(f"{where}: georef must be a mapping {{modality: GeoReference}}")
    out = {}
    for modality, value in georef.items():
        _check_name(modality, "a modality name", f"{where}: georef")
        out[modality] = GeoReference.coerce(value, f"{where}: georef[{modality!r}]").to_json()
    return out


# ------------------------------------------------------------------------------------------------
# Reader


class RecordIterator(Iterator[Record]):
    """Iterator over the records of an archive (:meth:`CompressedArchive.iter_records`).

    With ``skip_bad=True`` damaged records are not yielded; their errors collect in
    :attr:`skipped` (complete once the iteration has ended).
    """

    def __init__(
        self, archive: CompressedArchive, positions: Iterable[int], skip_bad: bool
    ) -> None:
        self._archive = archive
        self._positions = iter(positions)
        self._skip_bad = skip_bad
        self.skipped: list[CorruptRecordError] = []

    def __iter__(self) -> RecordIterator:
        return self

    def __next__(self) -> Record:
        for position in self._positions:
            try:
                return self._archive.record(position)
            except CorruptRecordError as exc:
                if not self._skip_bad:
                    raise
                self.skipped.append(exc)
        raise StopIteration


class CompressedArchive:
    """A ``.fedrs`` archive opened for reading (see the module docstring for the format).

    Opening reads the preamble, header, index and trailer only: the codes, labels, patch ids
    and record offsets. Records are read on demand and verified (CRC-32, agreement with the
    index). The object holds the file open; close it with :meth:`close` or a ``with`` block. It
    pickles as its path (the receiving process reopens the file).

    Args:
        path: the ``.fedrs`` file.
        name: display name (see :meth:`open`).
    """

    def __init__(self, path: str | Path, *, name: str | None = None) -> None:
        """Open an archive (same as :meth:`open`)."""
        source = Path(path)
        self._path = source
        self._lock = threading.Lock()
        self._file: BinaryIO | None = None
        self._index: HashIndex | None = None
        if not source.exists():
            raise NotAContainerError(source, "no such file")
        if not source.is_file():
            raise NotAContainerError(source, "not a regular file")
        try:
            self._file = source.open("rb")
        except OSError as exc:
            raise NotAContainerError(source, f"cannot be read ({exc.strerror or exc})") from exc
        try:
            self._load(name)
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, path: str | Path, *, name: str | None = None) -> CompressedArchive:
        """Open an archive.

        Args:
            path: the ``.fedrs`` file.
            name: display name used by federated search; by default the name stored in the
                header, else the file stem.

        Raises:
            NotAContainerError: missing file, a folder, or not a ``.fedrs`` file (bad magic).
            ContainerVersionError: written by another format version.
            CorruptArchiveError: truncated, or a damaged header, index or trailer.
        """
        return cls(path, name=name)

    # -- parsing --------------------------------------------------------------------------

    def _read(self, offset: int, length: int) -> bytes:
        if self._file is None:
            raise InputError(f"{self._path}: the archive is closed")
        with self._lock:
            self._file.seek(offset)
            return self._file.read(length)

    def _load(self, name: str | None) -> None:
        path = self._path
        if self._file is None:
            raise InputError(f"{path}: the archive is closed")
        size = os.fstat(self._file.fileno()).st_size
        self._size = size
        head = self._read(0, _PREAMBLE.size)
        if len(head) < len(MAGIC) or head[: len(MAGIC)] != MAGIC:
            raise NotAContainerError(
                path, "not a fedrs archive (the file does not start with its magic bytes)"
            )
        if len(head) < 10:
            raise CorruptArchiveError(path, f"truncated: {size} bytes")
        version = int.from_bytes(head[8:10], "little")
        if version != FORMAT_VERSION:
            raise ContainerVersionError(path, version)
        self._version = version
        min_size = _PREAMBLE.size + _TRAILER.size + _INDEX_HEAD.size + 8
        if size < min_size:
            raise CorruptArchiveError(
                path, f"truncated: {size} bytes, a complete archive has at least {min_size}"
            )
        _, _, flags, header_len, header_crc, reserved = _PREAMBLE.unpack(head)
        if flags != 0:
            raise CorruptArchiveError(path, f"unknown flags {flags:#06x} in the preamble")
        if any(reserved):
            raise CorruptArchiveError(path, "non-zero reserved bytes in the preamble")
        if _PREAMBLE.size + header_len + _TRAILER.size > size:
            raise CorruptArchiveError(
                path, f"header length {header_len} exceeds the file size {size}"
            )
        header_bytes = self._read(_PREAMBLE.size, header_len)
        if zlib.crc32(header_bytes) != header_crc:
            raise CorruptArchiveError(path, "header checksum mismatch (damaged header)")
        try:
            header = _parse_header(header_bytes)
        except _Bad as exc:
            raise CorruptArchiveError(path, f"bad header: {exc}") from None
        self._header = header
        self._records_start = _PREAMBLE.size + header_len

        trailer = self._read(size - _TRAILER.size, _TRAILER.size)
        index_offset, index_len, index_crc, reserved_tail, end = _TRAILER.unpack(trailer)
        if end != END_MAGIC:
            raise CorruptArchiveError(
                path, "truncated or damaged: no end marker (the write may not have completed)"
            )
        if reserved_tail != 0:
            raise CorruptArchiveError(path, "non-zero reserved bytes in the trailer")
        if index_offset < self._records_start or index_offset + index_len != size - _TRAILER.size:
            raise CorruptArchiveError(
                path,
                f"index at {index_offset} (+{index_len} bytes) does not fit a {size}-byte file",
            )
        index = self._read(index_offset, index_len)
        if len(index) != index_len or zlib.crc32(index) != index_crc:
            raise CorruptArchiveError(path, "index checksum mismatch (damaged index)")
        try:
            self._parse_index(index, index_offset)
        except _Bad as exc:
            raise CorruptArchiveError(path, f"bad index: {exc}") from None
        stored = header["name"]
        self._name = name if name is not None else (stored if stored else path.stem)

    def _parse_index(self, index: bytes, index_offset: int) -> None:
        if len(index) < _INDEX_HEAD.size:
            raise _Bad("shorter than its fixed part")
        count, code_bytes, label_count, ids_len = _INDEX_HEAD.unpack_from(index)
        bits = self._header["hash_bits"]
        names = self._header["label_names"]
        if code_bytes * 8 != bits:
            raise _Bad(f"{code_bytes} code bytes but the header says {bits} bits")
        if label_count != len(names):
            raise _Bad(f"{label_count} labels but the header names {len(names)}")
        label_bytes = -(-label_count // 8)
        expected = _INDEX_HEAD.size + 8 * (count + 1) + count * (code_bytes + label_bytes) + ids_len
        if expected != len(index):
            raise _Bad(f"{count} records do not fit its {len(index)} bytes")
        at = _INDEX_HEAD.size
        raw_offsets = np.frombuffer(index, dtype="<u8", count=count + 1, offset=at)
        at += 8 * (count + 1)
        min_record = _REC_HEAD.size + 4 + code_bytes + label_bytes
        if int(raw_offsets[0]) != self._records_start or int(raw_offsets[-1]) != index_offset:
            raise _Bad("record offsets do not span the records section")
        if int(raw_offsets.max()) > index_offset:
            raise _Bad("record offsets beyond the records section")
        offsets = raw_offsets.astype(np.int64)
        if count and int(np.diff(offsets).min()) < min_record:
            raise _Bad("record offsets out of order or records too short")
        self._offsets = offsets
        codes = np.frombuffer(index, dtype=np.uint8, count=count * code_bytes, offset=at)
        at += count * code_bytes
        self._codes = codes.reshape(count, code_bytes).copy()
        self._codes.flags.writeable = False
        packed_labels = np.frombuffer(index, dtype=np.uint8, count=count * label_bytes, offset=at)
        at += count * label_bytes
        self._packed_labels = packed_labels.reshape(count, label_bytes).copy()
        self._labels: np.ndarray | None = None
        try:
            blob = index[at : at + ids_len].decode()
        except UnicodeDecodeError as exc:
            raise _Bad(f"patch ids are not UTF-8 ({exc.reason})") from None
        ids = blob.split("\x00") if count else []
        if len(ids) != count or (count and not all(ids)):
            raise _Bad(f"{len(ids)} patch ids for {count} records")
        self._ids = tuple(ids)
        self._id_array = np.array(ids, dtype=object) if count else np.zeros(0, dtype=object)
        self._id_lookup: dict[str, int] | None = None

    # -- properties -----------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The archive file."""
        return self._path

    @property
    def name(self) -> str:
        """Display name (argument of :meth:`open`, else the header's name, else the file stem)."""
        return self._name

    @property
    def version(self) -> int:
        """Format version of the file."""
        return self._version

    @property
    def hash_bits(self) -> int:
        """Code length ``K``."""
        return int(self._header["hash_bits"])

    @property
    def model_fingerprint(self) -> str:
        """The model that produced the streams and codes."""
        return str(self._header["model_fingerprint"])

    @property
    def label_names(self) -> tuple[str, ...]:
        """Class names of the label columns."""
        return tuple(self._header["label_names"])

    @property
    def created(self) -> dict[str, Any]:
        """Creation info from the header (``utc``, ``fedrs_version``)."""
        return dict(self._header["created"])

    @property
    def meta(self) -> Any:
        """The writer's ``meta`` value (e.g. the model configuration)."""
        return self._header["meta"]

    @property
    def header(self) -> dict[str, Any]:
        """The whole header object."""
        return dict(self._header)

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return (
            f"CompressedArchive({str(self._path)!r}, records={len(self)}, "
            f"hash_bits={self.hash_bits}, model={self.model_fingerprint!r})"
        )

    @property
    def patch_ids(self) -> tuple[str, ...]:
        """Patch ids in record order."""
        return self._ids

    @property
    def codes(self) -> np.ndarray:
        """All hash codes, packed ``uint8`` ``(N, K/8)`` in record order (read-only)."""
        return self._codes

    @property
    def labels(self) -> np.ndarray:
        """All labels, ``float32`` multi-hot ``(N, L)`` in record order (read-only)."""
        if self._labels is None:
            unpacked = np.unpackbits(self._packed_labels, axis=1, count=len(self.label_names))
            labels = unpacked.astype(np.float32)
            labels.flags.writeable = False
            self._labels = labels
        return self._labels

    def record_sizes(self) -> np.ndarray:
        """Bytes of each record in the file, ``int64`` ``(N,)``."""
        return np.diff(self._offsets)

    def position(self, patch_id: str) -> int:
        """Position of the record named ``patch_id``.

        Raises:
            RecordNotFoundError: no such patch id.
        """
        if self._id_lookup is None:
            lookup = {pid: i for i, pid in enumerate(self._ids)}
            if len(lookup) != len(self._ids):
                raise CorruptArchiveError(self._path, "bad index: duplicate patch ids")
            self._id_lookup = lookup
        try:
            return self._id_lookup[patch_id]
        except (KeyError, TypeError):
            raise RecordNotFoundError(self._path, f"no record with patch id {patch_id!r}") from None

    def patch_ids_at(self, positions: Any) -> np.ndarray:
        """Patch ids of the given positions (any shape), as an ``object`` array of ``str``.

        Raises:
            RecordNotFoundError: a position outside ``0 .. len(self) - 1``.
        """
        pos = np.asarray(positions)
        if pos.size and (
            not np.issubdtype(pos.dtype, np.integer) or pos.min() < 0 or pos.max() >= len(self)
        ):
            raise RecordNotFoundError(self._path, f"positions outside 0..{len(self) - 1}")
        return np.asarray(self._id_array[pos.astype(np.int64)], dtype=object)

    # -- records --------------------------------------------------------------------------

    def record(self, key: int | str) -> Record:
        """Read and verify one record.

        Args:
            key: position (``int``, negative counts from the end) or patch id (``str``).

        Returns:
            The :class:`Record` with bytes, shapes, labels and georeference as written.

        Raises:
            RecordNotFoundError: no such position or patch id.
            CorruptRecordError: the record is damaged (checksum, structure, or disagreement with
                the index); the other records are unaffected.
        """
        if isinstance(key, str):
            position = self.position(key)
        elif isinstance(key, int | np.integer) and not isinstance(key, bool):
            position = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= position < len(self):
                raise RecordNotFoundError(self._path, f"no record #{key} ({len(self)} records)")
        else:
            raise InputError(f"record: expected a position or a patch id, got {key!r}")
        problem = name_problem(self._ids[position])
        if problem is not None:
            reason = f"patch id cannot name a file ({problem})"
            raise CorruptRecordError(self._path, self._ids[position], reason, position)
        start, stop = int(self._offsets[position]), int(self._offsets[position + 1])
        data = self._read(start, stop - start)
        try:
            return self._decode(position, data, stop - start)
        except _Bad as exc:
            raise CorruptRecordError(self._path, self._ids[position], str(exc), position) from None

    def _decode(self, position: int, data: bytes, expected: int) -> Record:
        if len(data) != expected:
            raise _Bad(f"truncated: {len(data)} of {expected} bytes readable")
        rec_len, crc = _REC_HEAD.unpack_from(data)
        if rec_len != expected - 4:
            raise _Bad(f"length field says {rec_len + 4} bytes, the index {expected}")
        body = data[_REC_HEAD.size :]
        actual = zlib.crc32(body)
        if actual != crc:
            raise _Bad(f"checksum mismatch (stored {crc:#010x}, computed {actual:#010x})")
        (meta_len,) = _U32.unpack_from(body)
        code_bytes = self._codes.shape[1]
        label_bytes = self._packed_labels.shape[1]
        fixed = 4 + meta_len + code_bytes + label_bytes
        if fixed > len(body):
            raise _Bad(f"meta length {meta_len} exceeds the record")
        try:
            meta = json.loads(body[4 : 4 + meta_len].decode())
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise _Bad(f"meta is not UTF-8 JSON ({exc})") from None
        at = 4 + meta_len
        code = np.frombuffer(body, dtype=np.uint8, count=code_bytes, offset=at).copy()
        at += code_bytes
        packed_labels = np.frombuffer(body, dtype=np.uint8, count=label_bytes, offset=at)
        at += label_bytes
        if not isinstance(meta, dict):
            raise _Bad("meta is not a JSON object")
        if meta.get("patch_id") != self._ids[position]:
            raise _Bad(f"patch id {meta.get('patch_id')!r} differs from the index")
        if not np.array_equal(code, self._codes[position]):
            raise _Bad("hash code differs from the index")
        if not np.array_equal(packed_labels, self._packed_labels[position]):
            raise _Bad("labels differ from the index")
        shapes = _decode_shapes(meta.get("shapes", {}))
        georef = _decode_georef(meta.get("georef", {}))
        streams = _decode_streams(meta.get("streams"), body, at)
        labels = np.unpackbits(packed_labels, count=len(self.label_names)).astype(np.float32)
        return Record(
            patch_id=self._ids[position],
            code=code,
            streams=streams,
            shapes=shapes,
            labels=labels,
            georef=georef,
            position=position,
        )

    def iter_records(self, *, skip_bad: bool = False) -> RecordIterator:
        """Iterate over all records in order.

        Args:
            skip_bad: skip damaged records instead of raising; their
                :class:`CorruptRecordError` s collect in the iterator's ``skipped`` list.

        Returns:
            A :class:`RecordIterator`.
        """
        return RecordIterator(self, range(len(self)), skip_bad)

    def __iter__(self) -> Iterator[Record]:
        return self.iter_records()

    def verify(self) -> list[CorruptRecordError]:
        """Read every record; return the errors of the damaged ones (empty when all are good)."""
        iterator = self.iter_records(skip_bad=True)
        for _ in iterator:
            pass
        return iterator.skipped

    # -- search ---------------------------------------------------------------------------

    def index(self) -> HashIndex:
        """A new :class:`HashIndex` of all codes; its ids are the record positions."""
        index = HashIndex(self.hash_bits)
        index.add(self._codes)
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

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the file (idempotent). Codes, labels and ids stay usable; records do not."""
        handle, self._file = self._file, None
        if handle is not None:
            handle.close()

    def __enter__(self) -> CompressedArchive:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (str(self._path), self._name))


def _reopen(path: str, name: str) -> CompressedArchive:
    return CompressedArchive.open(path, name=name)


# ------------------------------------------------------------------------------------------------
# Parsing helpers (raise _Bad)


def _parse_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _Bad(f"not UTF-8 JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != _FORMAT_NAME:
        raise _Bad(f"not a {_FORMAT_NAME} header")
    bits = header.get("hash_bits")
    if isinstance(bits, bool) or not isinstance(bits, int) or bits <= 0 or bits % 8:
        raise _Bad(f"hash_bits {bits!r} is not a positive multiple of 8")
    fp = header.get("model_fingerprint")
    if not isinstance(fp, str) or not fp:
        raise _Bad("model_fingerprint missing")
    names = header.get("label_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _Bad("label_names is not a list of strings")
    name = header.get("name")
    if name is not None and not isinstance(name, str):
        raise _Bad("name is not a string")
    header.setdefault("name", None)
    created = header.get("created", {})
    if not isinstance(created, dict):
        raise _Bad("created is not an object")
    header["created"] = created
    header.setdefault("meta", None)
    return header


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _decode_streams(meta: Any, body: bytes, at: int) -> dict[str, dict[str, bytes]]:
    if not isinstance(meta, list):
        raise _Bad("streams is not a list")
    streams: dict[str, dict[str, bytes]] = {}
    for entry in meta:
        if not (isinstance(entry, list) and len(entry) == 2 and _is_name(entry[0])):
            raise _Bad("bad streams entry")
        modality, named = entry
        if not isinstance(named, list) or modality in streams:
            raise _Bad(f"bad streams of {modality!r}")
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
                raise _Bad(f"bad stream entry in {modality!r}")
            name, length = item
            if at + length > len(body):
                raise _Bad(f"stream {modality}/{name} runs past the end of the record")
            streams[modality][name] = body[at : at + length]
            at += length
    if at != len(body):
        raise _Bad(f"{len(body) - at} bytes after the last stream")
    return streams


def _decode_shapes(meta: Any) -> dict[str, dict[str, list[int]]]:
    if not isinstance(meta, dict):
        raise _Bad("shapes is not an object")
    for named in meta.values():
        if not isinstance(named, dict):
            raise _Bad("bad shapes entry")
        for dims in named.values():
            if not isinstance(dims, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in dims
            ):
                raise _Bad("bad shape")
    return meta


def _decode_georef(meta: Any) -> dict[str, GeoReference]:
    if not isinstance(meta, dict):
        raise _Bad("georef is not an object")
    try:
        return {m: GeoReference.coerce(v, f"georef[{m!r}]") for m, v in meta.items()}
    except InputError as exc:
        raise _Bad(str(exc)) from None
