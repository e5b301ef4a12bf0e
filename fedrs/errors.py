"""The fedrs error hierarchy, and the errors of the top-level modules (:mod:`fedrs.coder`).

Every error fedrs raises on purpose derives from :class:`FedrsError`, in one of three kinds:

- :class:`InputError` (also a ``ValueError``): bad input from the user, a file, a value or an
  argument; the message names it.  The CLI prints it as one line on stderr and exits with
  code 2.  :class:`PathError` is the input error about one file: it carries ``path`` and
  ``reason`` and pickles across processes (Ray workers, multiprocessing).
- :class:`ProtocolError`: a state of the client/server protocol, not a fault of the user's
  input (e.g. a client that no longer holds the global model a coded broadcast refers to).
  Raised in a ClientApp it fails that client's round (the server counts a failed reply);
  should one reach the CLI, it prints one line and exits with code 1.
- Runtime errors: the run cannot go on (:class:`FedrsRuntimeError`, also a ``RuntimeError``,
  or :class:`FedrsError` together with a framework's own error type, e.g.
  :class:`fedrs.strategies.RoundFailedError`, a Flower ``AggregationError``).  The CLI prints
  one line and exits with code 1; a ServerApp run by a SuperLink ends with Flower's exit code
  for the Flower type.

Each package keeps its public errors in its own ``errors.py`` (:mod:`fedrs.data.errors`,
:mod:`fedrs.container.errors`, :mod:`fedrs.comm.errors`, ...), built on the classes here.
Anything else escaping a command is a bug and shows its traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "CdfTableError",
    "CoderError",
    "CorruptStreamError",
    "FedrsError",
    "FedrsRuntimeError",
    "InputError",
    "PathError",
    "ProtocolError",
]


class FedrsError(Exception):
    """Base of all fedrs errors."""


class InputError(FedrsError, ValueError):
    """Bad input from the user: a file, a value, an argument.  The message names it."""


class ProtocolError(FedrsError):
    """A state of the client/server protocol that ends a client's round (not bad input)."""


class FedrsRuntimeError(FedrsError, RuntimeError):
    """The run or the operation cannot go on (a process, a round, a model failed)."""


class PathError(InputError):
    """A file given as input is missing, unreadable or malformed.

    Attributes:
        path: The offending file.
        reason: What is wrong with it; the message is ``"<path>: <reason>"``.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across Ray workers
        return (type(self), (str(self.path), self.reason))


# ------------------------------------------------------------------------------------------------
# fedrs.coder


class CoderError(InputError):
    """Bad arguments to the coder (types, shapes, table indexes, symbol counts)."""


class CdfTableError(CoderError):
    """A CDF table is malformed (length, start, end, monotonicity, empty escape interval)."""


class CorruptStreamError(CoderError):
    """A stream is truncated, corrupted, or does not match the indexes and tables given."""
