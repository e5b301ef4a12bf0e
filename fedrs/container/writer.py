"""Write a ``.fedrs`` archive: :class:`ArchiveWriter` (format: :mod:`fedrs.container.format`)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import weakref
import zlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np

from fedrs import __version__
from fedrs.codes import as_packed, check_bits
from fedrs.container.errors import ContainerExistsError
from fedrs.container.format import (
    CONTAINER_FORMAT,
    END_MAGIC,
    FORMAT_VERSION,
    INDEX_HEAD,
    MAGIC,
    PREAMBLE,
    REC_HEAD,
    TRAILER,
    U32,
    U32_MAX,
    check_stored_name,
    encode_georef,
    encode_labels,
    encode_shapes,
    encode_streams,
)
from fedrs.container.record import Record
from fedrs.data.facts import LABELS_19
from fedrs.errors import InputError
from fedrs.io import name_problem, sync_folder

__all__ = ["ArchiveWriter"]

_O_BINARY = getattr(os, "O_BINARY", 0)


def _default_label_names() -> tuple[str, ...]:
    return tuple(LABELS_19)


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
        self.hash_bits = check_bits(hash_bits)
        if not isinstance(model_fingerprint, str) or not model_fingerprint:
            raise InputError(
                f"model_fingerprint: expected a non-empty string, got {model_fingerprint!r}"
            )
        names = _default_label_names() if label_names is None else tuple(label_names)
        for label in names:
            check_stored_name(label, "a label name", "label_names")
        if len(set(names)) != len(names):
            raise InputError("label_names: duplicate class names")
        if name is not None:
            check_stored_name(name, "the archive name", "name")
        self.label_names = names
        self._label_index = {n: i for i, n in enumerate(names)}
        self._label_bytes = -(-len(names) // 8)
        self._code_bytes = self.hash_bits // 8
        self.overwrite = bool(overwrite)
        header = {
            "format": CONTAINER_FORMAT,
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
        if len(header_bytes) > U32_MAX:
            raise InputError("meta: too large for the archive header (4 GiB)")
        self._check_target()

        fd, self._tmp = _create_temporary(self.path)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        # Removes the temporary file if the writer is dropped without close() or abort().
        self._cleanup = weakref.finalize(self, _discard, self._file, self._tmp)
        preamble = PREAMBLE.pack(
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
        pid = check_stored_name(record.patch_id, "patch_id", "record")
        where = f"record {pid!r}"
        problem = name_problem(pid)
        if problem is not None:
            raise InputError(f"{where}: patch_id cannot name a file ({problem})")
        if pid in self._seen:
            raise InputError(f"{where}: duplicate patch id in {self.path}")
        code = self._encode_code(record.code, where)
        labels = encode_labels(record.labels, self.label_names, self._label_index, where)
        streams_meta, payload = encode_streams(record.streams, where)
        meta = {
            "patch_id": pid,
            "streams": streams_meta,
            "shapes": encode_shapes(record.shapes, where),
            "georef": encode_georef(record.georef, where),
        }
        meta_bytes = json.dumps(meta, ensure_ascii=False, allow_nan=False).encode()
        packed_labels = np.packbits(labels).tobytes() if labels.size else b""
        body = b"".join((U32.pack(len(meta_bytes)), meta_bytes, code, packed_labels, *payload))
        if len(body) + 4 > U32_MAX:
            raise InputError(f"{where}: larger than 4 GiB")
        self._file.write(REC_HEAD.pack(len(body) + 4, zlib.crc32(body)))
        self._file.write(body)
        position = len(self._offsets)
        self._offsets.append(self._cursor)
        self._cursor += REC_HEAD.size + len(body)
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
                    INDEX_HEAD.pack(
                        len(self._ids), self._code_bytes, len(self.label_names), len(ids_blob)
                    ),
                    offsets.tobytes(),
                    bytes(self._codes),
                    bytes(self._labels),
                    ids_blob,
                )
            )
            trailer = TRAILER.pack(self._cursor, len(index), zlib.crc32(index), 0, END_MAGIC)
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
    return __version__
