"""A client's side of a round, without Flower running: the node's context and one ``train``
message through the ClientApp's ``train``."""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedrs import protocol
from fedrs.settings import RunSettings
from fedrs.train import build_model


def client_context(
    partition: int, partitions: int, state: RecordDict | None = None, node_id: int = 1
) -> Context:
    """The context of node ``node_id`` holding partition ``partition`` of ``partitions``."""
    return Context(
        run_id=1,
        node_id=node_id,
        node_config={"partition-id": partition, "num-partitions": partitions},
        state=RecordDict() if state is None else state,
        run_config={},
    )


def client_train(
    settings: RunSettings,
    partition: int,
    *,
    server_round: int = 1,
    state: RecordDict | None = None,
    arrays: ArrayRecord | None = None,
    config: dict[str, Any] | None = None,
) -> MetricRecord:
    """The metrics of node 1's reply to one ``train`` message (the arrays of a freshly built
    model unless given; ``config`` added to the server round)."""
    from fedrs.clients.app import train

    experiment = settings.experiment()
    if arrays is None:
        arrays = ArrayRecord(build_model(experiment).state_dict())
    values = {protocol.SERVER_ROUND: server_round, **(config or {})}
    message = Message(
        RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: ConfigRecord(values)}),
        dst_node_id=1,
        message_type="train",
    )
    context = client_context(partition, experiment.partition.clients, state)
    return train(message, context, settings).content.metric_records[protocol.METRICS]
