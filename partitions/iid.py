"""``iid``: patches shuffled (seeded) and dealt to clients in equal parts (sizes differ by at most
one).  Each client gets the modalities its patches have.  No options.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .base import Assignment, even_split, register_partition


@register_partition("iid")
def iid_partition(table: pd.DataFrame, num_clients: int, rng: np.random.Generator) -> Assignment:
    """Uniformly random equal-size shards."""
    return Assignment(even_split(len(table), num_clients, rng).astype(np.int64))
