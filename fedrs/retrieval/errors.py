"""The errors of retrieval: hash index files and federated search participants."""

from __future__ import annotations

from fedrs.errors import InputError, PathError

__all__ = ["CorruptIndexError", "ParticipantError"]


class CorruptIndexError(PathError):
    """An index file is missing, unreadable or not a fedrs hash index.

    ``path`` names the offending file; ``reason`` says what is wrong with it.
    """


class ParticipantError(InputError):
    """A participant of a federated search is unusable or answered malformed results."""
