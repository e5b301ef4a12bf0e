"""The Flower ClientApp: turns a training Message into one call of ``fedrs.train.train_local``.

A client's shard (which rows of the run's cache it trains on, worked out once per run and kept
in the node's state) is :mod:`fedrs.client_data`'s.

Under modality-aware aggregation a client sends back only what it trained: the codecs of its
modalities and the shared parts (strategies that average whole models get the whole model),
never the keys the server marks local (``local-keys``), which stay in the node's state between
rounds.  When the server pools whitening statistics (``statistics`` in the ConfigRecord), the
whitening buffers are not sent: the client measures, with its trained model, the count, sum
and sums of outer products of the features each whitened branch sees over its shard, and sends
those (:mod:`fedrs.models.statistics`).  No pixels leave the client: replies hold model arrays,
those feature statistics and scalar metrics only.

Update codec (``federation.update_codec``): the reply's arrays are encoded by the configured
:class:`fedrs.comm.UpdateCodec` against the global model received in the same message
(``"entropy"``: quantised, entropy-coded differences), with the codec's error-feedback residual
kept in the node's state between rounds.  When the server sends its model coded as a difference
to the previous one, the client rebuilds it from the previous global model it kept in its state
(:mod:`fedrs.comm.broadcast`).

Device (``train.device``, default ``"auto"``): a simulated client trains on the GPU Ray reserved
for it (``federation.num_gpus``), on the CPU when it was given no GPU share; a deployed client on
the GPU its process sees, if any (:mod:`fedrs.devices`).  The reply's metrics say which
(``device-cuda``, and on a GPU ``cuda-max-memory-mb``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import fedrs.preload  # noqa: F401  (before the apps run: see its docstring)
from fedrs import protocol
from fedrs.client_data import ClientData, HeldShard, load_shard, sent_modalities
from fedrs.comm import rebuild_global
from fedrs.config import ExperimentConfig
from fedrs.devices import resolve_device
from fedrs.settings import RunSettings

LOCAL_STATE_KEY = "fedrs-local"
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


class InjectedClientFailure(RuntimeError):
    """Raised by a client listed in ``federation.fail_clients`` (fault-tolerance tests)."""


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


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
    held = state.array_records.get(GLOBAL_STATE_KEY)
    arrays, keep = rebuild_global(
        _numpy(record),
        cfg,
        None if meta is None else meta.get("fingerprint"),
        None if held is None else _numpy(held),
    )
    if keep is not None:
        state.array_records[GLOBAL_STATE_KEY] = _record(arrays)
        state.config_records[GLOBAL_META_KEY] = ConfigRecord({"fingerprint": keep})
    return arrays


def kept_optimizer_state(state: RecordDict, stage: int, rate: bool) -> dict[str, np.ndarray]:
    """The Adam state this node kept from its last round when that round trained the same
    stage with the same objective (a new stage, or the end of a distortion-only warm-up,
    starts a fresh optimizer); empty otherwise."""
    meta = state.config_records.get(OPTIMIZER_META_KEY)
    if meta is None or OPTIMIZER_STATE_KEY not in state.array_records:
        return {}
    if meta.get("stage") != stage or meta.get("rate") != rate:
        return {}
    return _numpy(state.array_records[OPTIMIZER_STATE_KEY])


def train(msg: Message, context: Context, settings: RunSettings) -> Message:
    """Train on the local shard from the received global model; reply with what was trained."""
    from fedrs.models.statistics import WhiteningPool
    from fedrs.train import build_model, measure_statistics, train_local

    config = settings.experiment()
    data = load_client_data(config, dict(context.node_config), context.state)
    if data.client_id in config.federation.fail_clients:
        raise InjectedClientFailure(f"client {data.client_id} is set to fail")
    import torch

    # a simulated client trains on the GPU Ray reserved for it (its cuda:0), on the CPU when it
    # was given no GPU share; the device is reported in the reply (device-cuda)
    gpu_share = "data-path" in context.node_config or config.federation.num_gpus > 0
    device = resolve_device(config.train.device, cuda_allowed=gpu_share)
    local: dict[str, Any] = {"device": str(device)}
    if config.federation.local_batch_size is not None:  # FedAvg's B
        local["batch_size"] = config.federation.local_batch_size
    config = config.model_copy(update={"train": config.train.model_copy(update=local)})

    cfg: dict[str, Any] = dict(msg.content.config_records[protocol.CONFIG])
    global_arrays = receive_global(msg.content.array_records[protocol.ARRAYS], cfg, context.state)
    received = {k: torch.from_numpy(np.array(v)) for k, v in global_arrays.items()}
    global_round = int(cfg.get(protocol.ROUND_OFFSET, 0)) + int(cfg[protocol.SERVER_ROUND])
    is_local = protocol.LocalKeyMatcher([str(p) for p in cfg.get(protocol.LOCAL_KEYS, [])]).is_local
    partial = bool(cfg.get(protocol.PARTIAL_REPLIES, True))
    send_statistics = bool(cfg.get(protocol.STATISTICS, False))
    keep_adam = config.federation.keep_optimizer

    model = build_model(config)
    state = model.state_dict()
    state.update(received)
    if LOCAL_STATE_KEY in context.state.array_records:
        state.update(context.state.array_records[LOCAL_STATE_KEY].to_torch_state_dict())
    model.load_state_dict(state)
    stage = 1 if global_round <= config.federation.stage1_rounds else 2
    rate = bool(cfg.get(protocol.RATE, True))  # the server says when a round leaves it out
    optimizer_state = kept_optimizer_state(context.state, stage, rate) if keep_adam else None
    metrics = train_local(
        model,
        data.archive,
        data.rows,
        config,
        modalities=data.modalities,
        stage=stage,
        rate=rate,
        epochs=config.federation.local_epochs,
        seed=(config.seed, global_round, data.client_id),
        proximal_mu=float(cfg.get(protocol.PROXIMAL_MU, 0.0)),
        reference={k: v for k, v in received.items() if not is_local(k)},
        optimizer_state=optimizer_state,
    )
    if optimizer_state is not None:
        context.state.array_records[OPTIMIZER_STATE_KEY] = _record(optimizer_state)
        context.state.config_records[OPTIMIZER_META_KEY] = ConfigRecord(
            {"stage": stage, "rate": rate}
        )
    trained = model.state_dict()
    sent = sent_modalities(config, data, partial)
    # with pooled statistics the whitening buffers are computed by the server, not sent
    derived = set(WhiteningPool(model).derived_keys()) if send_statistics else set()
    keys = [k for k in model.keys_for_modalities(sent) if not is_local(k) and k not in derived]
    local = {k: v for k, v in trained.items() if is_local(k)}
    if local:
        context.state.array_records[LOCAL_STATE_KEY] = ArrayRecord(
            {k: v.detach().cpu().contiguous() for k, v in local.items()}
        )
    codec = config.federation.build_update_codec(config.seed)
    residual = context.state.array_records.get(RESIDUAL_STATE_KEY)
    encoded = codec.encode(
        {k: trained[k].detach().cpu().numpy() for k in keys},
        global_arrays,
        residual=None if residual is None else _numpy(residual),
        rng=np.random.default_rng([config.seed, global_round, data.client_id, 2]),
    )
    if encoded.residual or residual is not None:
        context.state.array_records[RESIDUAL_STATE_KEY] = _record(encoded.residual)
    reply = _record(encoded.payload)
    values: dict[str, int | float | list[int] | list[float]] = {
        k: float(v) for k, v in metrics.items()
    }
    values[protocol.CLIENT_ID] = data.client_id
    # who trained what, for per-client tracking (train_s: seconds of train_local's loop)
    values |= {f"has-{m}": int(m in data.modalities) for m in ("s1", "s2")}
    content = RecordDict({protocol.ARRAYS: reply, protocol.METRICS: MetricRecord(values)})
    if send_statistics:
        moments = measure_statistics(
            model,
            data.archive,
            data.rows,
            config,
            modalities=data.modalities,
            limit=int(metrics[protocol.NUM_EXAMPLES]),
        )
        content[protocol.STATISTICS] = ArrayRecord(
            {k: Array(v) for name, m in moments.items() for k, v in m.arrays(name).items()}
        )
    return Message(content, reply_to=msg)


def dp_clipping_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """Flower's client-side clipping mods, applied where the server asks for them
    (:data:`fedrs.protocol.DP_CLIENT_CLIPPING` in a training message's config)."""
    from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod

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


"""The ClientApp of ``flwr run`` (``[tool.flwr.app.components] clientapp``)."""
