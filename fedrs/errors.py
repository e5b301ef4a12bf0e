"""Base error types.  Every error a user can cause by bad input derives from ``InputError``;
the CLI turns it into one line on stderr and exit code 2."""

from __future__ import annotations


class FedrsError(Exception):
    """Base of all fedrs errors."""


class InputError(FedrsError, ValueError):
    """Bad input from the user: a file, a value, an argument.  The message names it."""
