"""The errors of the ``.fedrs`` container: :class:`ContainerError` and its subclasses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedrs.container.format import FORMAT_VERSION
from fedrs.errors import PathError

__all__ = [
    "ContainerError",
    "ContainerExistsError",
    "ContainerVersionError",
    "CorruptArchiveError",
    "CorruptRecordError",
    "NotAContainerError",
    "RecordNotFoundError",
]


class ContainerError(PathError):
    """Base of the errors about a ``.fedrs`` file. ``path`` names it, ``reason`` says why."""


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
