"""The Flower ClientApp: turns a training Message into one round of :mod:`fedrs.client_round`.

The work is framework-free and lives in ``fedrs``: the client's shard
(:mod:`fedrs.client_data`), the global model of a coded broadcast (:mod:`fedrs.comm.broadcast`),
local training, the reply's update codec and statistics (:mod:`fedrs.client_round`).  This module
converts Flower's Message, Context and records to those calls and back, and keeps what a client
carries from one round to the next in the node's state (``context.state``) under the keys below.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod

from fedrs import protocol
from fedrs.client_data import ClientData, HeldShard, load_shard, node_client_id
from fedrs.client_round import (
    KeptOptimizer,
    client_config,
    encode_reply,
    reply_metrics,
    round_statistics,
    train_round,
)
from fedrs.comm import UPDATE_PAYLOAD_KEY, rebuild_global
from fedrs.config import ExperimentConfig
from fedrs.errors import FedrsRuntimeError
from fedrs.settings import RunSettings

LOCAL_STATE_KEY = "fedrs-local"
"""Node state: the values of the keys the server marks local (``local-keys``)."""
GLOBAL_STATE_KEY = "fedrs-global"
"""Node state: the last global model received (reference of coded broadcasts)."""
GLOBAL_META_KEY = "fedrs-global-meta"
"""Node state: ConfigRecord with the ``fingerprint`` of :data:`GLOBAL_STATE_KEY`."""
RESIDUAL_STATE_KEY = "fedrs-residual"
"""Node state: the update codec's error-feedback residual."""
SHARD_STATE_KEY = "fedrs-shard"
"""Node state: ArrayRecord with the ``rows`` this node trains on (rows of the run's cache)."""
SHARD_META_KEY = "fedrs-shard-meta"
"""Node state: ConfigRecord, ``fingerprint`` and ``modalities`` of :data:`SHARD_STATE_KEY`."""
OPTIMIZER_STATE_KEY = "fedrs-optimizer"
"""Node state: Adam's state at the end of the last round (``federation.keep_optimizer``)."""
OPTIMIZER_META_KEY = "fedrs-optimizer-meta"
"""Node state: ConfigRecord with the ``stage`` and ``rate`` that Adam state was reached in."""


class InjectedClientFailure(FedrsRuntimeError):
    """Raised by a client listed in ``federation.fail_clients`` (fault-tolerance tests).

    A test hook of this app, not a public error of fedrs: it stays here, and Flower reports it
    to the server as ``fedrs.clients.app.InjectedClientFailure`` in the error reply's reason.
    """


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _kept(state: RecordDict, key: str) -> dict[str, np.ndarray] | None:
    """The arrays kept in the node's ``state`` under ``key``, if any."""
    record = state.array_records.get(key)
    return None if record is None else _numpy(record)


def load_client_data(
    config: ExperimentConfig, node_config: dict[str, Any], state: RecordDict | None = None
) -> ClientData:
    """The shard of this node (:func:`fedrs.client_data.load_shard`); with ``state`` (the
    node's ``context.state``), kept there in the first round and read from there in later ones."""
    meta = None if state is None else state.config_records.get(SHARD_META_KEY)
    record = None if state is None else state.array_records.get(SHARD_STATE_KEY)
    held = None
    if meta is not None and record is not None and "rows" in record:
        held = HeldShard(record["rows"].numpy(), dict(meta))
    data, kept = load_shard(config, node_config, held)
    if state is not None and kept is not None:
        state.array_records[SHARD_STATE_KEY] = ArrayRecord({"rows": Array(kept.rows)})
        state.config_records[SHARD_META_KEY] = ConfigRecord(kept.meta)
    return data


def receive_global(
    record: ArrayRecord, cfg: dict[str, Any], state: RecordDict
) -> dict[str, np.ndarray]:
    """The global model a training message carries (:func:`fedrs.comm.rebuild_global`), rebuilt
    from the one kept in ``state``; kept there when the message names its fingerprint."""
    meta = state.config_records.get(GLOBAL_META_KEY)
    held = None if meta is None else meta.get("fingerprint")
    # the kept model is read only for a coded broadcast, the one message that refers to it
    kept = _kept(state, GLOBAL_STATE_KEY) if UPDATE_PAYLOAD_KEY in record else None
    arrays, keep = rebuild_global(_numpy(record), cfg, held, kept)
    if keep is not None:
        state.array_records[GLOBAL_STATE_KEY] = _record(arrays)
        state.config_records[GLOBAL_META_KEY] = ConfigRecord({"fingerprint": keep})
    return arrays


def train(msg: Message, context: Context, settings: RunSettings) -> Message:
    """Train on the local shard from the received global model; reply with what was trained."""
    config = settings.experiment()
    state = context.state
    data = load_client_data(config, dict(context.node_config), state)
    if data.client_id in config.federation.fail_clients:
        raise InjectedClientFailure(f"client {data.client_id} is set to fail")
    config = client_config(config, context.node_config)
    cfg: dict[str, Any] = dict(msg.content.config_records[protocol.CONFIG])
    global_arrays = receive_global(msg.content.array_records[protocol.ARRAYS], cfg, state)
    local = state.array_records.get(LOCAL_STATE_KEY)
    meta = state.config_records.get(OPTIMIZER_META_KEY)
    adam = None if meta is None else _kept(state, OPTIMIZER_STATE_KEY)
    trained = train_round(
        config,
        data,
        global_arrays,
        cfg,
        local=None if local is None else local.to_torch_state_dict(),
        optimizer=None if meta is None or adam is None else KeptOptimizer(adam, dict(meta)),
    )
    if trained.optimizer is not None:
        state.array_records[OPTIMIZER_STATE_KEY] = _record(trained.optimizer.arrays)
        state.config_records[OPTIMIZER_META_KEY] = ConfigRecord(trained.optimizer.meta)
    if trained.local:
        state.array_records[LOCAL_STATE_KEY] = ArrayRecord(trained.local)
    residual = _kept(state, RESIDUAL_STATE_KEY)
    payload, residual = encode_reply(config, data, trained, global_arrays, residual)
    if residual is not None:
        state.array_records[RESIDUAL_STATE_KEY] = _record(residual)
    metrics = MetricRecord({**reply_metrics(data, trained)})
    content = RecordDict({protocol.ARRAYS: _record(payload), protocol.METRICS: metrics})
    if trained.statistics:
        statistics = round_statistics(config, data, trained)
        content[protocol.STATISTICS] = ArrayRecord({k: Array(v) for k, v in statistics.items()})
    return Message(content, reply_to=msg)


def client_id(msg: Message, context: Context) -> Message:
    """Reply to a query with this node's client id (:data:`fedrs.protocol.CLIENT_ID`), read
    from its node config alone: the server orders the clients of an in-turn round, and lists
    the nodes it samples from, by it."""
    metrics = MetricRecord({protocol.CLIENT_ID: node_client_id(dict(context.node_config))})
    return Message(RecordDict({protocol.METRICS: metrics}), reply_to=msg)


def dp_clipping_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """Flower's client-side clipping mods, applied where the server asks for them
    (:data:`fedrs.protocol.DP_CLIENT_CLIPPING` in a training message's config)."""

    kind = None
    if msg.has_content() and protocol.CONFIG in msg.content.config_records:
        kind = msg.content.config_records[protocol.CONFIG].get(protocol.DP_CLIENT_CLIPPING)
    if kind == "fixed":
        return fixedclipping_mod(msg, context, call_next)
    if kind == "adaptive":
        return adaptiveclipping_mod(msg, context, call_next)
    reply: Message = call_next(msg, context)
    return reply


app = ClientApp(mods=[dp_clipping_mod])


@app.train()
def _train(msg: Message, context: Context) -> Message:
    """The run config names the experiment (``RunSettings.from_run_config``)."""
    return train(msg, context, RunSettings.from_run_config(context.run_config))


@app.query()
def _query(msg: Message, context: Context) -> Message:
    """The node's client id, for the order of in-turn rounds."""
    return client_id(msg, context)


"""The ClientApp of ``flwr run`` (``[tool.flwr.app.components] clientapp``)."""
