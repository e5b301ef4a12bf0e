"""Typed errors of the data layer."""

from __future__ import annotations

from pathlib import Path

from fedrs.errors import InputError


class ArchiveNotFoundError(InputError, FileNotFoundError):
    """A path given as an archive holds no BigEarthNet layout that fedrs recognises."""


class CorruptPatchError(InputError):
    """A patch file (GeoTIFF, JSON, parquet or cache) is missing, unreadable or malformed.

    ``path`` names the offending file; the message says what is wrong with it.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # picklable across Ray workers
        return (type(self), (str(self.path), self.reason))
