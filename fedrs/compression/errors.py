"""The errors of compression and decompression."""

from __future__ import annotations

from fedrs.errors import InputError

__all__ = ["ModelMismatchError"]


class ModelMismatchError(InputError):
    """The given model did not produce the archive (fingerprint or configuration differ)."""
