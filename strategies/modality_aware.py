"""Modality-aware FedAvg: each parameter averaged over the clients that trained it.

Registered as ``"modality-aware"``.  In a federation of archives with different sensors a client
holding only Sentinel-1 trains and sends ``codecs.s1.*`` plus the shared ``hash_head.*``; one
holding only Sentinel-2 sends ``codecs.s2.*`` plus ``hash_head.*``.  Flower's ``FedAvg`` rejects
replies with different key sets; here each group of keys is averaged by Flower's ``FedAvg`` over
the replies that carry it, weighted by their example counts, and every key no client returned
(and the local-only keys) keeps its value.

Example: clients A (100 examples, S1 only) and B (300 examples, both) give
``codecs.s1.w = (100 * w_A + 300 * w_B) / 400``, ``codecs.s2.w = w_B`` and
``hash_head.w = (100 * h_A + 300 * h_B) / 400``.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg

from .guard import GuardedStrategy
from .registry import register_strategy


@register_strategy("modality-aware")
class ModalityAwareFedAvg(GuardedStrategy):
    """FedAvg over partial replies: per-key weighted average over the clients that sent the key.

    A reply may carry any non-empty subset of the global model's shared keys; each array must
    match the global dtype and shape, otherwise the whole reply is a failed reply.  Metrics are
    averaged per key over the replies that report them.
    """

    flower = FedAvg
    partial_default = True
