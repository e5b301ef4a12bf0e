"""Typed errors of the data layer."""

from __future__ import annotations

from fedrs.errors import InputError, PathError


class ArchiveNotFoundError(InputError, FileNotFoundError):
    """A path given as an archive holds no BigEarthNet layout that fedrs recognises."""


class CorruptPatchError(PathError):
    """A patch file (GeoTIFF, JSON, parquet or cache) is missing, unreadable or malformed.

    ``path`` names the offending file; ``reason`` says what is wrong with it.
    """
