"""What the compression pipelines share: argument types, the info stream group, checks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fedrs.compression.trained import TrainedModel
from fedrs.errors import InputError

__all__ = ["INFO_GROUP"]

INFO_GROUP = "info"
"""Stream group of a record that holds its descriptive fields (not a modality)."""

INFO_STREAM = "json"
"""The stream of :data:`INFO_GROUP` that holds those fields, as UTF-8 JSON."""

Model = TrainedModel | str | Path
Progress = Callable[[str, int], Callable[[int], None]]
"""``progress(description, total)`` returns an ``advance(n)`` callback (as in fedrs.pipeline)."""


def check_batch_size(batch_size: int) -> int:
    """``batch_size`` when it is a positive integer; InputError otherwise."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size
