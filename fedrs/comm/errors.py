"""Errors of the update codecs and of coded broadcasts."""

from __future__ import annotations

from fedrs.errors import FedrsError, InputError, ProtocolError

__all__ = ["MissingGlobalModelError", "UpdateCodecError"]


class _KeyedError(FedrsError):
    """Base of the errors below: ``key`` names the record or model key, ``reason`` says why."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key!r}: {reason}")

    def __reduce__(self) -> tuple[type[_KeyedError], tuple[str, str]]:
        return type(self), (self.key, self.reason)  # pickles across processes (Ray actors)


class UpdateCodecError(_KeyedError, InputError):
    """A coded model update cannot be built or read (damaged payload, wrong reference, ...).

    Attributes:
        key: The record key or model key the problem is about.
    """


class MissingGlobalModelError(_KeyedError, ProtocolError):
    """A coded broadcast refers to a global model this node does not hold.

    A state of the protocol, not bad input: the client's round fails and the server sends it
    the full model next round.

    Attributes:
        key: The ConfigRecord key that names the model (``global-base``).
    """
