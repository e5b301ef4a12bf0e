"""The client/server protocol of a fedrs federation, defined once for both sides.

A training message from the server holds the global model (an ArrayRecord under
:data:`ARRAYS`) and a ConfigRecord (:data:`CONFIG`) with:

* :data:`SERVER_ROUND` (Flower's) and :data:`ROUND_OFFSET` (rounds done before a resume);
* :data:`RATE`: whether the round optimises the rate (false in the distortion-only rounds that
  start stage 1; absent: true);
* :data:`LOCAL_KEYS`: patterns of the keys that never leave a client (:class:`LocalKeyMatcher`);
* :data:`PARTIAL_REPLIES`: whether the client sends only what it trained (its modalities' codecs
  and the shared parts) or every shared key;
* :data:`STATISTICS`: whether the client measures and sends its features' whitening statistics
  (count, sum, sums of outer products) instead of the whitening buffers themselves;
* :data:`PROXIMAL_MU` (FedProx), and the fingerprints of coded broadcasts
  (:mod:`fedrs.comm`).

A reply holds the arrays sent back under :data:`ARRAYS` and a MetricRecord under
:data:`METRICS` with the example count (:data:`NUM_EXAMPLES`, the aggregation weight),
:data:`CLIENT_ID` and the training metrics, and, when asked, the feature statistics under
:data:`STATISTICS`.

A query message (Flower's ``query`` type, with no content) asks a node its client id: the
reply holds a MetricRecord under :data:`METRICS` with :data:`CLIENT_ID` alone (the seeded
order of the turns in rounds whose clients train in turn, and the seeded sample of a round).
Nothing here imports Flower.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from fedrs.errors import InputError

ARRAYS = "arrays"
"""RecordDict key of the model arrays, both ways."""
CONFIG = "config"
"""RecordDict key of the server's ConfigRecord."""
METRICS = "metrics"
"""RecordDict key of a reply's MetricRecord."""

SERVER_ROUND = "server-round"
ROUND_OFFSET = "round-offset"
LOCAL_KEYS = "local-keys"
PARTIAL_REPLIES = "partial-replies"
PROXIMAL_MU = "proximal-mu"
RATE = "rate"
"""Training ConfigRecord: false in a distortion-only round (``federation.no_bpp_rounds``)."""
STATISTICS = "statistics"
"""Training ConfigRecord: whether the client sends the feature statistics of its shard; in a
reply: the RecordDict key of the ArrayRecord holding them (:mod:`fedrs.models.statistics`)."""
DP_CLIENT_CLIPPING = "dp-client-clipping"
"""``"fixed"`` or ``"adaptive"``: the client clips its update (Flower's central-DP mods)."""

NUM_EXAMPLES = "num-examples"
"""Reply metric: examples trained on (the aggregation weight)."""
CLIENT_ID = "client-id"
"""Reply metric: the client's id (its partition id)."""
MODALITIES = ("s1", "s2")


def modality_examples(modality: str) -> str:
    """Reply metric: patches of ``modality`` trained on per epoch (``num-examples-s1``); the
    weight of that modality's keys under partial replies."""
    return f"{NUM_EXAMPLES}-{modality}"


def modality_of(key: str) -> str | None:
    """The modality a model key belongs to (``codecs.s1.*``, ``hash_head.encoders.s2.*``), or
    None for a shared key."""
    for part in key.split(".")[:3]:
        if part in MODALITIES:
            return part
    return None


DEFAULT_LOCAL_KEYS: tuple[str, ...] = (
    "running_mean",
    "running_var",
    "num_batches_tracked",
    "whiten",
)
"""Patterns of the keys that stay on the clients when a strategy is given ``local_keys=None``."""


class LocalKeyMatcher:
    """Decides which ArrayRecord / state-dict keys are local-only.

    Args:
        patterns: Regular expressions searched anywhere in a key (a plain substring such as
            ``"running_mean"`` works as is).  ``None`` means :data:`DEFAULT_LOCAL_KEYS`;
            an empty sequence makes every key shared.  A single string is one pattern.

    Raises:
        InputError: A pattern is not a string or not a valid regular expression.
    """

    def __init__(
        self, patterns: Sequence[str] | str | None = None, *, option: str = "local_keys"
    ) -> None:
        if patterns is None:
            patterns = DEFAULT_LOCAL_KEYS
        elif isinstance(patterns, str):
            patterns = (patterns,)
        elif not isinstance(patterns, Sequence):
            raise InputError(f"{option} must be a list of patterns, got {type(patterns).__name__}")
        compiled: list[re.Pattern[str]] = []
        for pattern in patterns:
            if not isinstance(pattern, str) or not pattern:
                raise InputError(f"{option}: pattern {pattern!r} is not a non-empty string")
            try:
                compiled.append(re.compile(pattern))
            except re.error as exc:
                raise InputError(
                    f"{option}: pattern {pattern!r} is not a valid regular expression: {exc}"
                ) from exc
        self.patterns: tuple[str, ...] = tuple(patterns)
        self._compiled = tuple(compiled)

    def is_local(self, key: str) -> bool:
        """Return whether ``key`` stays on the client."""
        return any(p.search(key) for p in self._compiled)

    def shared_keys(self, keys: Iterable[str]) -> list[str]:
        """The keys of ``keys`` that leave the client, in order."""
        return [k for k in keys if not self.is_local(k)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self.patterns)!r})"
