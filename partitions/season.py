"""``season``: clients by acquisition season (Winter, Spring, Summer, Fall).

The same algorithm as ``country`` on the ``season`` column (meteorological season of the
acquisition date): with four clients each holds one season; with more, the big seasons are split
(D'Hondt apportionment, patches dealt at random among a season's clients); with fewer, seasons
are pooled (longest-processing-time packing).  Patches without a season form the group
``unknown``.  Client ids go from the largest season to the smallest.  No options.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._grouping import group_partition
from .base import Assignment, register_partition


@register_partition("season")
def season_partition(table: pd.DataFrame, num_clients: int, rng: np.random.Generator) -> Assignment:
    """Clients by season, sized like the archive (see the module docstring)."""
    return group_partition(table, "season", num_clients, rng, partition="season")
