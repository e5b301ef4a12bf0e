"""Modality-aware FedAvg: each parameter averaged over the clients that trained it.

Registered as ``"modality-aware"``.  In a federation of archives with different sensors a client
holding only Sentinel-1 trains and sends ``codecs.s1.*`` plus the shared ``hash_head.*``; one
holding only Sentinel-2 sends ``codecs.s2.*`` plus ``hash_head.*``.  Flower's ``FedAvg`` rejects
replies with different key sets; this strategy averages each key over the replies that carry
it, weighted by their example counts, and keeps from the previous global model every key no
client returned (and the local-only keys).

Example: clients A (100 examples, S1 only) and B (300 examples, both) give
``codecs.s1.w = (100 * w_A + 300 * w_B) / 400``, ``codecs.s2.w = w_B`` and
``hash_head.w = (100 * h_A + 300 * h_B) / 400``.
"""

from __future__ import annotations

from .base import AccountedFedAvg
from .registry import register_strategy


@register_strategy("modality-aware")
class ModalityAwareFedAvg(AccountedFedAvg):
    """FedAvg over partial replies: per-key weighted average over the clients that sent the key.

    Options are those of :class:`~fedrs.strategies.base.AccountedFedAvg`.  A reply may carry
    any non-empty subset of the global model's shared keys; each array must match the global
    dtype and shape, otherwise the whole reply is a failed reply.  Metrics are averaged per key
    over the replies that report them.
    """

    requires_all_shared_keys = False
