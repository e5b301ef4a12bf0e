"""The errors of the models: entropy models, codecs and feature statistics."""

from __future__ import annotations

from fedrs.errors import FedrsRuntimeError, InputError

__all__ = ["EntropyModelError", "StatisticsError", "UnknownImageCodecError"]


class EntropyModelError(FedrsRuntimeError):
    """An entropy model cannot code the given data (e.g. a stream that does not decode)."""


class UnknownImageCodecError(InputError):
    """A codec name that no codec is registered under."""


class StatisticsError(InputError):
    """Feature statistics that cannot be used (wrong keys, shapes, values)."""
