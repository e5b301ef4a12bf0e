"""Temporary: keeps ``from fedrs.retrieval.container import GeoReference`` working.

The ``.fedrs`` container lives in :mod:`fedrs.container`; import from there. Only
``fedrs/retrieval/patch_files.py`` still imports this path (it is being changed elsewhere and
will move); delete this module when it imports :mod:`fedrs.container` instead.
"""

from __future__ import annotations

from fedrs.container.record import GeoReference

__all__ = ["GeoReference"]
