"""Imports, at once, every fedrs module the Flower apps use while they run.

Flower's simulation runtime runs the ServerApp in one thread while it loads the ClientApp in
another.  If both import the same not-yet-loaded fedrs package at the same moment, CPython 3.11
can lose the parent package from ``sys.modules`` mid-import (``KeyError: 'fedrs.data'``), and the
run ends with no result.  Both app modules import this one first, so every fedrs module they use
is loaded while Flower holds its app-loading lock, and later imports are plain lookups.
"""

from __future__ import annotations

import fedrs.coder
import fedrs.codes
import fedrs.comm
import fedrs.compression
import fedrs.container
import fedrs.data.archive
import fedrs.data.cache
import fedrs.data.metadata
import fedrs.data.synth
import fedrs.data.transforms
import fedrs.losses
import fedrs.models
import fedrs.optim
import fedrs.partitions
import fedrs.pipeline
import fedrs.retrieval
import fedrs.settings
import fedrs.strategies
import fedrs.tracking
import fedrs.train  # noqa: F401
