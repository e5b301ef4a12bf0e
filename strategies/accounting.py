"""Round accounting: what a round cost in bytes and who took part in it.

Bytes are measured on the messages themselves (:func:`message_bytes`): the objects Flower
transfers for a message (the message, its RecordDict, records, arrays and array chunks, each
deflated as Flower pushes and pulls them, each distinct object once), summed over messages.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, Message
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from .errors import ClientFailure


def array_bytes(record: ArrayRecord) -> int:
    """Return the serialised size of the arrays of ``record`` in bytes (``.npy`` data only)."""
    return sum(len(array.data) for array in record.values())


def _tree_bytes(obj: Any) -> int:
    return sum(len(o.deflate()) for o in get_all_nested_objects(obj).values())


def message_bytes(msg: Message) -> int:
    """Return the bytes Flower transfers for ``msg``.

    Flower sends a message as a tree of objects, each deflated to bytes (protobuf or JSON
    head, raw body): the message (metadata, error), its RecordDict, each record, each Array
    (dtype, shape) and the chunks of each array's data.  Distinct objects are sent once, so
    this sums the deflated size of each distinct object of the tree.
    """
    return _tree_bytes(msg)


def messages_bytes(messages: Iterable[Message]) -> int:
    """Return the sum of :func:`message_bytes` over ``messages`` (shared contents measured once)."""
    content_bytes: dict[int, int] = {}
    total = 0
    for msg in messages:
        total += len(msg.deflate())
        if msg.has_content():
            content = msg.content
            if id(content) not in content_bytes:
                content_bytes[id(content)] = _tree_bytes(content)
            total += content_bytes[id(content)]
    return total


@dataclass
class RoundStats:
    """What happened in one round.

    Attributes:
        server_round: The round number (from 1).
        sampled: Clients sent a training message.
        clients_ok: Training replies used for aggregation.
        clients_failed: Sampled clients whose training reply was dropped or never came.
        clients_missing: Sampled clients that did not reply before the timeout (included in
            ``clients_failed``).
        bytes_up: Bytes of all training replies received, used or not (:func:`message_bytes`).
        bytes_down: Bytes of the training messages sent (:func:`message_bytes`).
        eval_sampled: Clients sent an evaluation message.
        eval_ok: Evaluation replies used.
        eval_failed: Evaluation replies dropped or missing.
        bytes_down_eval: Bytes of the evaluation messages sent.
        failures: The dropped training replies with their reasons.
        train_metrics: The training metrics of the usable replies, aggregated.
        per_client: For each usable reply that reports its ``client-id``, the metrics of
            :data:`CLIENT_METRICS` it carries, under their tracking names (``loss``,
            ``examples``, ``train_s``, ``has_s1``, ``has_s2``); keyed by client id.
    """

    server_round: int
    sampled: int = 0
    clients_ok: int = 0
    clients_failed: int = 0
    clients_missing: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    eval_sampled: int = 0
    eval_ok: int = 0
    eval_failed: int = 0
    bytes_down_eval: int = 0
    failures: list[ClientFailure] = field(default_factory=list)
    train_metrics: dict[str, float] = field(default_factory=dict)
    per_client: dict[int, dict[str, float]] = field(default_factory=dict)

    def as_metrics(self) -> dict[str, int]:
        """Return the counts under the tracking names (``clients/ok``, ``comm/bytes_up``, ...).

        ``comm/bytes_down`` is the training broadcast; ``comm/bytes_down_eval`` the
        evaluation broadcast.
        """
        return {
            "clients/ok": self.clients_ok,
            "clients/failed": self.clients_failed,
            "comm/bytes_up": self.bytes_up,
            "comm/bytes_down": self.bytes_down,
            "comm/bytes_down_eval": self.bytes_down_eval,
        }

    def client_metrics(self) -> dict[str, float]:
        """Return :attr:`per_client` under the tracking names ``client/<id>/<name>``."""
        return {
            f"client/{client}/{name}": value
            for client, values in sorted(self.per_client.items())
            for name, value in values.items()
        }
