"""Read a ``.fedrs`` archive: :class:`CompressedArchive` and its :class:`RecordIterator`.

Opening reads the header, the index and the trailer only; records are read and verified on
demand (the format: :mod:`fedrs.container.format`).
"""

from __future__ import annotations

import json
import os
import threading
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from fedrs.container.errors import (
    ContainerVersionError,
    CorruptArchiveError,
    CorruptRecordError,
    NotAContainerError,
    RecordNotFoundError,
)
from fedrs.container.format import (
    END_MAGIC,
    FORMAT_VERSION,
    INDEX_HEAD,
    MAGIC,
    PREAMBLE,
    REC_HEAD,
    TRAILER,
    U32,
    FormatProblem,
    decode_georef,
    decode_shapes,
    decode_streams,
    parse_header,
)
from fedrs.container.record import Record
from fedrs.errors import InputError
from fedrs.io import name_problem

__all__ = ["CompressedArchive", "RecordIterator"]


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
    """A ``.fedrs`` archive opened for reading (the format: :mod:`fedrs.container.format`).

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
        head = self._read(0, PREAMBLE.size)
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
        min_size = PREAMBLE.size + TRAILER.size + INDEX_HEAD.size + 8
        if size < min_size:
            raise CorruptArchiveError(
                path, f"truncated: {size} bytes, a complete archive has at least {min_size}"
            )
        _, _, flags, header_len, header_crc, reserved = PREAMBLE.unpack(head)
        if flags != 0:
            raise CorruptArchiveError(path, f"unknown flags {flags:#06x} in the preamble")
        if any(reserved):
            raise CorruptArchiveError(path, "non-zero reserved bytes in the preamble")
        if PREAMBLE.size + header_len + TRAILER.size > size:
            raise CorruptArchiveError(
                path, f"header length {header_len} exceeds the file size {size}"
            )
        header_bytes = self._read(PREAMBLE.size, header_len)
        if zlib.crc32(header_bytes) != header_crc:
            raise CorruptArchiveError(path, "header checksum mismatch (damaged header)")
        try:
            header = parse_header(header_bytes)
        except FormatProblem as exc:
            raise CorruptArchiveError(path, f"bad header: {exc}") from None
        self._header = header
        self._records_start = PREAMBLE.size + header_len

        trailer = self._read(size - TRAILER.size, TRAILER.size)
        index_offset, index_len, index_crc, reserved_tail, end = TRAILER.unpack(trailer)
        if end != END_MAGIC:
            raise CorruptArchiveError(
                path, "truncated or damaged: no end marker (the write may not have completed)"
            )
        if reserved_tail != 0:
            raise CorruptArchiveError(path, "non-zero reserved bytes in the trailer")
        if index_offset < self._records_start or index_offset + index_len != size - TRAILER.size:
            raise CorruptArchiveError(
                path,
                f"index at {index_offset} (+{index_len} bytes) does not fit a {size}-byte file",
            )
        index = self._read(index_offset, index_len)
        if len(index) != index_len or zlib.crc32(index) != index_crc:
            raise CorruptArchiveError(path, "index checksum mismatch (damaged index)")
        try:
            self._parse_index(index, index_offset)
        except FormatProblem as exc:
            raise CorruptArchiveError(path, f"bad index: {exc}") from None
        stored = header["name"]
        self._name = name if name is not None else (stored if stored else path.stem)

    def _parse_index(self, index: bytes, index_offset: int) -> None:
        if len(index) < INDEX_HEAD.size:
            raise FormatProblem("shorter than its fixed part")
        count, code_bytes, label_count, ids_len = INDEX_HEAD.unpack_from(index)
        bits = self._header["hash_bits"]
        names = self._header["label_names"]
        if code_bytes * 8 != bits:
            raise FormatProblem(f"{code_bytes} code bytes but the header says {bits} bits")
        if label_count != len(names):
            raise FormatProblem(f"{label_count} labels but the header names {len(names)}")
        label_bytes = -(-label_count // 8)
        expected = INDEX_HEAD.size + 8 * (count + 1) + count * (code_bytes + label_bytes) + ids_len
        if expected != len(index):
            raise FormatProblem(f"{count} records do not fit its {len(index)} bytes")
        at = INDEX_HEAD.size
        raw_offsets = np.frombuffer(index, dtype="<u8", count=count + 1, offset=at)
        at += 8 * (count + 1)
        min_record = REC_HEAD.size + 4 + code_bytes + label_bytes
        if int(raw_offsets[0]) != self._records_start or int(raw_offsets[-1]) != index_offset:
            raise FormatProblem("record offsets do not span the records section")
        if int(raw_offsets.max()) > index_offset:
            raise FormatProblem("record offsets beyond the records section")
        offsets = raw_offsets.astype(np.int64)
        if count and int(np.diff(offsets).min()) < min_record:
            raise FormatProblem("record offsets out of order or records too short")
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
            raise FormatProblem(f"patch ids are not UTF-8 ({exc.reason})") from None
        ids = blob.split("\x00") if count else []
        if len(ids) != count or (count and not all(ids)):
            raise FormatProblem(f"{len(ids)} patch ids for {count} records")
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
        except FormatProblem as exc:
            raise CorruptRecordError(self._path, self._ids[position], str(exc), position) from None

    def _decode(self, position: int, data: bytes, expected: int) -> Record:
        if len(data) != expected:
            raise FormatProblem(f"truncated: {len(data)} of {expected} bytes readable")
        rec_len, crc = REC_HEAD.unpack_from(data)
        if rec_len != expected - 4:
            raise FormatProblem(f"length field says {rec_len + 4} bytes, the index {expected}")
        body = data[REC_HEAD.size :]
        actual = zlib.crc32(body)
        if actual != crc:
            raise FormatProblem(f"checksum mismatch (stored {crc:#010x}, computed {actual:#010x})")
        (meta_len,) = U32.unpack_from(body)
        code_bytes = self._codes.shape[1]
        label_bytes = self._packed_labels.shape[1]
        fixed = 4 + meta_len + code_bytes + label_bytes
        if fixed > len(body):
            raise FormatProblem(f"meta length {meta_len} exceeds the record")
        try:
            meta = json.loads(body[4 : 4 + meta_len].decode())
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise FormatProblem(f"meta is not UTF-8 JSON ({exc})") from None
        at = 4 + meta_len
        code = np.frombuffer(body, dtype=np.uint8, count=code_bytes, offset=at).copy()
        at += code_bytes
        packed_labels = np.frombuffer(body, dtype=np.uint8, count=label_bytes, offset=at)
        at += label_bytes
        if not isinstance(meta, dict):
            raise FormatProblem("meta is not a JSON object")
        if meta.get("patch_id") != self._ids[position]:
            raise FormatProblem(f"patch id {meta.get('patch_id')!r} differs from the index")
        if not np.array_equal(code, self._codes[position]):
            raise FormatProblem("hash code differs from the index")
        if not np.array_equal(packed_labels, self._packed_labels[position]):
            raise FormatProblem("labels differ from the index")
        shapes = decode_shapes(meta.get("shapes", {}))
        georef = decode_georef(meta.get("georef", {}))
        streams = decode_streams(meta.get("streams"), body, at)
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

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the file (idempotent). Codes, labels and ids stay usable; records do not."""
        handle, self._file = self._file, None
        if handle is not None:
            handle.close()

    def __enter__(self) -> CompressedArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (str(self._path), self._name))


def _reopen(path: str, name: str) -> CompressedArchive:
    return CompressedArchive.open(path, name=name)
