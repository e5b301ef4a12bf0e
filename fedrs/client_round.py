"""One training round of a federated client, without Flower: from the global model and the
server's ConfigRecord (:mod:`fedrs.protocol`) to the arrays, metrics and statistics of the reply,
and what the client keeps for its next round.

Under modality-aware aggregation a client sends back only what it trained: the codecs of its
modalities and the shared parts (strategies that average whole models get the whole model),
never the keys the server marks local (``local-keys``), which the client keeps between rounds.
When the server pools whitening statistics (``statistics`` in the ConfigRecord), the whitening
buffers are not sent: the client measures, with its trained model, the count, sum and sums of
outer products of the features each whitened branch sees over its shard, and sends those
(:mod:`fedrs.models.statistics`).  No pixels leave the client: replies hold model arrays, those
feature statistics and scalar metrics only.

Update codec (``federation.update_codec``): the reply's arrays are encoded by the configured
:class:`fedrs.comm.UpdateCodec` against the global model received in the same message
(``"entropy"``: quantised, entropy-coded differences), with the codec's error-feedback residual
kept between rounds.  With ``federation.keep_optimizer`` the client also keeps Adam's state
between the rounds of a stage.

Device (``train.device``, default ``"auto"``): a simulated client trains on the GPU Ray reserved
for it (``federation.num_gpus``), on the CPU when it was given no GPU share; a deployed client on
the GPU its process sees, if any (:mod:`fedrs.devices`).  The reply's metrics say which
(``device-cuda``, and on a GPU ``cuda-max-memory-mb``).

What a client keeps is plain data here (dicts of arrays and of facts); the Flower app stores it
in the node's state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedrs import protocol
from fedrs.client_data import ClientData, sent_modalities
from fedrs.config import ExperimentConfig
from fedrs.devices import resolve_device
from fedrs.models.joint import JointModel
from fedrs.models.statistics import WhiteningPool, whitening_modules
from fedrs.train import build_model, measure_statistics, train_hash_head, train_local


@dataclass(frozen=True)
class KeptOptimizer:
    """Adam's state at the end of a client's round.

    Attributes:
        arrays: The state (:meth:`fedrs.train.LocalTrainer.optimizer_state`).
        meta: The ``stage`` and ``rate`` it was reached in.
    """

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]


@dataclass(frozen=True)
class TrainedRound:
    """What a round of local training produced.

    Attributes:
        model: The trained model.
        metrics: :func:`fedrs.train.train_local`'s.
        global_round: The round over the whole run (resumes included).
        arrays: The model arrays the reply carries (before the update codec).
        local: The values of the keys the server marks local, to keep.
        optimizer: Adam's state to keep (``federation.keep_optimizer``), else ``None``.
        statistics: Whether the server asked for the whitening statistics.
    """

    model: JointModel
    metrics: dict[str, float]
    global_round: int
    arrays: dict[str, np.ndarray]
    local: dict[str, Tensor]
    optimizer: KeptOptimizer | None
    statistics: bool


def client_config(config: ExperimentConfig, node_config: Mapping[str, Any]) -> ExperimentConfig:
    """``config`` with the device this client trains on and its batch size (FedAvg's B)."""
    # a simulated client trains on the GPU Ray reserved for it (its cuda:0), on the CPU when it
    # was given no GPU share; the device is reported in the reply (device-cuda)
    gpu_share = "data-path" in node_config or config.federation.num_gpus > 0
    device = resolve_device(config.train.device, cuda_allowed=gpu_share)
    local: dict[str, Any] = {"device": str(device)}
    if config.federation.local_batch_size is not None:  # FedAvg's B
        local["batch_size"] = config.federation.local_batch_size
    return config.model_copy(update={"train": config.train.model_copy(update=local)})


def kept_optimizer_state(
    kept: KeptOptimizer | None, stage: int, rate: bool
) -> dict[str, np.ndarray]:
    """The Adam state this node kept from its last round when that round trained the same
    stage with the same objective (a new stage, or the end of a distortion-only warm-up,
    starts a fresh optimizer); empty otherwise."""
    if kept is None:
        return {}
    if kept.meta.get("stage") != stage or kept.meta.get("rate") != rate:
        return {}
    return dict(kept.arrays)  # a dict of its own: training replaces its items


def train_round(
    config: ExperimentConfig,
    data: ClientData,
    global_arrays: Mapping[str, np.ndarray],
    cfg: Mapping[str, Any],
    *,
    local: Mapping[str, Tensor] | None = None,
    optimizer: KeptOptimizer | None = None,
) -> TrainedRound:
    """Train on ``data`` from the received global model, as the server's ``cfg`` says.

    Args:
        config: The experiment, as :func:`client_config` made it for this client.
        global_arrays: The global model (:func:`fedrs.comm.rebuild_global`).
        local: The local keys' values kept from the last round, if any.
        optimizer: Adam's state kept from the last round, if any.
    """

    received = {k: torch.from_numpy(np.array(v)) for k, v in global_arrays.items()}
    global_round = int(cfg.get(protocol.ROUND_OFFSET, 0)) + int(cfg[protocol.SERVER_ROUND])
    is_local = protocol.LocalKeyMatcher([str(p) for p in cfg.get(protocol.LOCAL_KEYS, [])]).is_local
    partial = bool(cfg.get(protocol.PARTIAL_REPLIES, True))
    send_statistics = bool(cfg.get(protocol.STATISTICS, False))
    keep_adam = config.federation.keep_optimizer

    model = build_model(config)
    state = model.state_dict()
    state.update(received)
    if local is not None:
        state.update(local)
    model.load_state_dict(state)
    if config.federation.local_whitening == "running":
        for module in whitening_modules(model).values():
            module.batch_statistics = False
    stage = 1 if global_round <= config.federation.stage1_rounds else 2
    rate = bool(cfg.get(protocol.RATE, True))  # the server says when a round leaves it out
    optimizer_state = kept_optimizer_state(optimizer, stage, rate) if keep_adam else None
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
    if stage == 2 and config.federation.head_epochs:
        metrics |= train_hash_head(
            model,
            data.archive,
            data.rows,
            config,
            modalities=data.modalities,
            epochs=config.federation.head_epochs,
            batch_size=config.federation.head_batch_size,
            seed=(config.seed, global_round, data.client_id, 3),
        )
    trained = model.state_dict()
    sent = sent_modalities(config, data, partial)
    # with pooled statistics the whitening buffers are computed by the server, not sent
    derived = set(WhiteningPool(model).derived_keys()) if send_statistics else set()
    keys = [k for k in model.keys_for_modalities(sent) if not is_local(k) and k not in derived]
    return TrainedRound(
        model=model,
        metrics=metrics,
        global_round=global_round,
        arrays={k: trained[k].detach().cpu().numpy() for k in keys},
        local={k: v.detach().cpu().contiguous() for k, v in trained.items() if is_local(k)},
        optimizer=(
            None
            if optimizer_state is None
            else KeptOptimizer(optimizer_state, {"stage": stage, "rate": rate})
        ),
        statistics=send_statistics,
    )


def encode_reply(
    config: ExperimentConfig,
    data: ClientData,
    trained: TrainedRound,
    global_arrays: Mapping[str, np.ndarray],
    residual: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """The reply's arrays, encoded by the configured update codec against the global model.

    Args:
        residual: The codec's error-feedback residual kept from the last round, if any.

    Returns:
        The arrays, and the residual to keep (``None``: nothing to keep).
    """
    codec = config.federation.build_update_codec(config.seed)
    encoded = codec.encode(
        trained.arrays,
        global_arrays,
        residual=residual,
        rng=np.random.default_rng([config.seed, trained.global_round, data.client_id, 2]),
    )
    kept = encoded.residual if encoded.residual or residual is not None else None
    return encoded.payload, kept


def reply_metrics(data: ClientData, trained: TrainedRound) -> dict[str, int | float]:
    """The reply's metrics: the training metrics, the client's id and its modalities."""
    values: dict[str, int | float] = {k: float(v) for k, v in trained.metrics.items()}
    values[protocol.CLIENT_ID] = data.client_id
    # who trained what, for per-client tracking (train_s: seconds of train_local's loop)
    values |= {f"has-{m}": int(m in data.modalities) for m in ("s1", "s2")}
    return values


def round_statistics(
    config: ExperimentConfig, data: ClientData, trained: TrainedRound
) -> dict[str, np.ndarray]:
    """The whitening statistics of the trained model over the examples it trained on, in their
    wire form (:meth:`fedrs.models.statistics.Moments.arrays`)."""

    moments = measure_statistics(
        trained.model,
        data.archive,
        data.rows,
        config,
        modalities=data.modalities,
        limit=int(trained.metrics[protocol.NUM_EXAMPLES]),
    )
    return {k: v for name, m in moments.items() for k, v in m.arrays(name).items()}
