"""Errors of the update codecs."""

from __future__ import annotations

from fedrs.errors import InputError


class UpdateCodecError(InputError):
    """A coded model update cannot be built or read (damaged payload, wrong reference, ...).

    Attributes:
        key: The record key or model key the problem is about.
    """

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key!r}: {reason}")
