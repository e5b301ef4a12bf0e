"""``country``: each client is one country, part of a big country, or a pool of small ones.

Clients are sized like the real archive (BigEarthNet v2: Finland 155,227 patches, Portugal
89,792, ... Kosovo 1,616).  With as many clients as countries, each client is one whole country.
With more clients, big countries are split: every country gets one client and each further client
goes to the country with the most patches per client (D'Hondt apportionment); a split country's
patches are dealt at random (seeded) among its clients.  With fewer clients, the largest
countries open one client each and the smaller ones join, largest first, the client with the
fewest patches (longest-processing-time packing).  Patches without a country form the group
``unknown``.  Client ids go from the largest country to the smallest.  No options.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._grouping import group_partition
from .base import Assignment, register_partition


@register_partition("country")
def country_partition(
    table: pd.DataFrame, num_clients: int, rng: np.random.Generator
) -> Assignment:
    """Clients by country, sized like the archive (see the module docstring)."""
    return group_partition(table, "country", num_clients, rng, partition="country")
