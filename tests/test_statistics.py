"""Whitening statistics federate exactly: clients' moments pooled equal those of the union.

The pooled statistics of K clients (unequal sizes, clients missing a modality) equal, to float64
precision, those computed on the union of the features they saw; the whitening the server sets
from them is the one a centralized pass over that union gives, and it whitens the union better
than the average of the clients' whitening matrices (what averaging the buffers did).  The
strategy reads statistics from replies as hostile input.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from _data import SMOKE
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from test_strategies import FakeGrid
from torch import nn

from fedrs import protocol
from fedrs.config import load_config
from fedrs.errors import InputError
from fedrs.models.hash_head import FeatureWhitening
from fedrs.models.statistics import (
    Moments,
    StatisticsError,
    WhiteningPool,
    apply_moments,
    moments_from_features,
    pool_moments,
    running_statistics,
    whitening_modules,
)
from fedrs.pipeline import load_run_data
from fedrs.strategies import build_strategy
from fedrs.train import build_model, iterate_batches, measure_statistics, train_local

pytestmark = pytest.mark.usefixtures("cache_env", "task_identity")


def _features(model: Any, archive: Any, rows: np.ndarray, modalities: tuple[str, ...]) -> Any:
    """The fused features (float64) whitening sees at evaluation, computed directly."""
    model.eval()
    out = []
    with torch.no_grad():
        for batch in iterate_batches(archive, rows, modalities, 7):
            result = model(batch)
            embeddings = model.hash_head.embed(result["y_hat"])
            masks = {m: result["masks"][m].float()[:, None] for m in embeddings}
            total = sum(e * masks[m] for m, e in embeddings.items())
            count = sum(masks.values())
            out.append((total / count).double())  # fused in float32, as the model does
    return torch.cat(out)


def test_pooled_statistics_equal_those_of_the_union() -> None:
    config = load_config(SMOKE)
    data = load_run_data(config.data)
    model = build_model(config)
    train_local(model, data.archive, data.train_rows, config, stage=2, epochs=1)
    meta = data.archive.metadata
    both = data.train_rows[
        meta["has_s1"].to_numpy(bool)[data.train_rows]
        & meta["has_s2"].to_numpy(bool)[data.train_rows]
    ]
    assert len(both) >= 40
    # unequal shards; the first client holds only S1, the second only S2 of multi-modal patches
    shards = [(both[:5], ("s1",)), (both[5:17], ("s2",)), (both[17:40], ("s1", "s2"))]
    parts = [
        measure_statistics(model, data.archive, rows, config, modalities=mods)
        for rows, mods in shards
    ]

    # what each client measured are the moments of its features (float32 features, so equal
    # to their rounding whatever the batching) ...
    features = [_features(model, data.archive, rows, mods) for rows, mods in shards]
    for part, own in zip(parts, features, strict=True):
        direct = moments_from_features(own, model.config.whitening_group)
        assert part["hash_head.whiten"].count == len(own)
        np.testing.assert_allclose(part["hash_head.whiten"].total, direct.total, rtol=1e-5)
        np.testing.assert_allclose(part["hash_head.whiten"].outer, direct.outer, rtol=1e-5)
    # ... and pooling is exact: the pooled moments of the clients' features are those of the
    # union of the features, to float64 precision
    pooled = pool_moments(
        [
            {"hash_head.whiten": moments_from_features(own, model.config.whitening_group)}
            for own in features
        ]
    )["hash_head.whiten"]
    union = torch.cat(features)
    assert pooled.count == len(union) == 40
    mean = union.mean(0).numpy()
    np.testing.assert_allclose(pooled.mean, mean, rtol=0, atol=1e-12)
    centred = (union - union.mean(0)).numpy()
    group = model.config.whitening_group
    grouped = centred.reshape(len(union), -1, group)
    covariance = np.einsum("ngi,ngj->gij", grouped, grouped) / len(union)
    np.testing.assert_allclose(pooled.covariance(), covariance, rtol=0, atol=1e-12)

    # the whitening set from the pooled statistics is the union's
    whiten: FeatureWhitening = model.hash_head.whiten
    apply_moments(model, {"hash_head.whiten": pooled})
    expected = whiten.whitening_from_covariance(torch.from_numpy(covariance)).float()
    torch.testing.assert_close(whiten.running_whitening, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(whiten.running_mean, torch.from_numpy(mean).float())
    assert not torch.equal(whiten.running_whitening, torch.eye(group).expand_as(expected))

    def whitened_error(matrix: torch.Tensor) -> float:
        """How far the union's covariance, whitened by ``matrix``, is from the identity."""
        w = matrix.double().numpy()
        white = np.einsum("gij,gjk,glk->gil", w, covariance, w)
        return float(np.abs(white - np.eye(group)).max())

    averaged = sum(
        p["hash_head.whiten"].count
        * whiten.whitening_from_covariance(torch.from_numpy(p["hash_head.whiten"].covariance()))
        for p in parts
    ) / sum(p["hash_head.whiten"].count for p in parts)
    assert whitened_error(expected) < 0.5 * whitened_error(averaged)


def test_moments_round_trip_through_the_wire_form() -> None:
    x = torch.randn(11, 8, dtype=torch.float64)
    moments = moments_from_features(x, group=4)
    pool = WhiteningPool(_Tiny())
    arrays = moments.arrays("whiten")
    read = pool.read(arrays)["whiten"]
    assert read.count == 11
    np.testing.assert_array_equal(read.total, moments.total)
    np.testing.assert_array_equal(read.outer, moments.outer)
    assert set(arrays) == set(pool.shapes())


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))
        self.whiten = FeatureWhitening(8, group=4)


def _moments(seed: int, count: int) -> Moments:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(count, 8, generator=gen, dtype=torch.float64) * (1 + seed) + seed
    return moments_from_features(x, group=4)


def _reply(instruction: Message, weight: float, stats: dict[str, Any] | None) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord(
                {
                    "w": Array(np.full(2, weight, dtype=np.float32)),
                    "whiten.weight": Array(np.ones(8, dtype=np.float32)),
                    "whiten.bias": Array(np.zeros(8, dtype=np.float32)),
                }
            ),
            "metrics": MetricRecord({"num-examples": weight}),
        }
    )
    if stats is not None:
        content[protocol.STATISTICS] = ArrayRecord({k: Array(v) for k, v in stats.items()})
    return Message(content, reply_to=instruction)


def _run_round(replies_stats: list[dict[str, Any] | None], **options: Any) -> Any:
    model = _Tiny()
    pool = WhiteningPool(model)
    strategy = build_strategy(
        "fedavg", min_train_nodes=1, min_available_nodes=1, statistics=pool, **options
    )
    arrays = ArrayRecord(model.state_dict())
    grid = FakeGrid(range(1, len(replies_stats) + 1))
    messages = sorted(
        strategy.configure_train(1, arrays, ConfigRecord(), grid),
        key=lambda m: m.metadata.dst_node_id,
    )
    config = messages[0].content.config_records["config"]
    assert config[protocol.STATISTICS] is True
    replies = [
        _reply(m, 10.0 * (i + 1), s)
        for i, (m, s) in enumerate(zip(messages, replies_stats, strict=True))
    ]
    merged, _ = strategy.aggregate_train(1, replies)
    return strategy, merged


def test_strategy_sets_whitening_from_the_pooled_statistics_of_the_replies() -> None:
    parts = [_moments(0, 5), _moments(1, 18)]
    strategy, merged = _run_round([p.arrays("whiten") for p in parts] + [None])
    assert strategy.round_stats[1].clients_ok == 3  # statistics are optional in a reply
    pooled = parts[0] + parts[1]
    module = FeatureWhitening(8, group=4)
    expected = module.whitening_from_covariance(torch.from_numpy(pooled.covariance()))
    np.testing.assert_allclose(
        merged["whiten.running_mean"].numpy(), pooled.mean.astype(np.float32), rtol=1e-6
    )
    np.testing.assert_allclose(
        merged["whiten.running_whitening"].numpy(), expected.float().numpy(), rtol=1e-5, atol=1e-6
    )
    # the weights are averaged by example count as before (10, 20 and 30 examples)
    np.testing.assert_allclose(merged["w"].numpy(), (10 * 10 + 20 * 20 + 30 * 30) / 60, rtol=1e-6)


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        ("nan", "NaN or inf"),
        ("negative-variance", "negative variance"),
        ("count-above-weight", "at most 20"),
        ("zero-count", "at least 1"),
        ("unknown-key", "is not expected"),
        ("wrong-shape", "expected float64(2, 4, 4)"),
        ("missing-part", "miss"),
        ("float32", "expected float64"),
    ],
)
def test_hostile_statistics_fail_their_reply_only(attack: str, reason: str) -> None:
    honest = _moments(0, 5).arrays("whiten")
    bad = dict(_moments(1, 18).arrays("whiten"))
    if attack == "nan":
        bad["whiten/sum"] = bad["whiten/sum"] * np.nan
    elif attack == "negative-variance":
        bad["whiten/outer"] = -bad["whiten/outer"]
    elif attack == "count-above-weight":  # more features than the 20 patches it claims
        bad["whiten/count"] = np.asarray(21.0)
    elif attack == "zero-count":
        bad["whiten/count"] = np.asarray(0.0)
    elif attack == "unknown-key":
        bad["whiten/extra"] = np.zeros(1)
    elif attack == "wrong-shape":
        bad["whiten/outer"] = np.zeros((4, 4, 4))
    elif attack == "missing-part":
        del bad["whiten/outer"]
    elif attack == "float32":
        bad["whiten/sum"] = bad["whiten/sum"].astype(np.float32)
    strategy, merged = _run_round([honest, bad], max_weight=1000.0)
    stats = strategy.round_stats[1]
    assert stats.clients_ok == 1 and stats.clients_failed == 1
    assert reason in stats.failures[0].reason, stats.failures[0].reason
    expected = _moments(0, 5).mean.astype(np.float32)
    np.testing.assert_allclose(merged["whiten.running_mean"].numpy(), expected, rtol=1e-6)


def test_pool_refuses_statistics_of_an_unknown_branch() -> None:
    with pytest.raises(StatisticsError, match="no whitened branch"):
        apply_moments(_Tiny(), {"other": _moments(0, 3)})
    assert list(whitening_modules(_Tiny())) == ["whiten"]


def test_dp_needs_averaged_statistics() -> None:
    with pytest.raises(InputError, match="statistics = 'averaged'"):
        load_config(SMOKE, {"federation.dp.clipping": "fixed"})
    config = load_config(
        SMOKE, {"federation.dp.clipping": "fixed", "federation.statistics": "averaged"}
    )
    assert config.federation.statistics == "averaged"


def test_local_statistics_keep_the_whitening_at_home_and_pool_for_the_server() -> None:
    """FedBN-style: the whitening buffers are never broadcast, the server's are pooled."""
    from fedrs.server_strategy import strategy_for

    config = load_config(SMOKE, {"federation.statistics": "local"})
    strategy = strategy_for(config, 3)
    assert strategy.local_keys.is_local("hash_head.whiten.running_whitening")
    assert not strategy.local_keys.is_local("hash_head.whiten.weight")
    assert strategy.statistics is not None
    averaged = strategy_for(load_config(SMOKE, {"federation.statistics": "averaged"}), 3)
    assert averaged.statistics is None


def test_whitening_trains_with_its_running_statistics_when_told() -> None:
    """``batch_statistics = False``: training whitens exactly as evaluation does, the buffers
    stay, and gradients still reach the input and the affine map."""
    torch.manual_seed(0)
    whiten = FeatureWhitening(32, group=16)
    moments = moments_from_features(torch.randn(200, 32, dtype=torch.float64) * 3, 16)
    mean, matrix = running_statistics(whiten, moments)
    whiten.running_mean.copy_(mean)
    whiten.running_whitening.copy_(matrix)
    x = torch.randn(4, 32, requires_grad=True)
    whiten.eval()
    expected = whiten(x).detach()

    whiten.train()
    moved = whiten(x)  # a batch of 4 whitens with its own (rank-3) covariance
    assert not torch.allclose(moved, expected, atol=1e-3)
    assert not torch.equal(whiten.running_mean, mean)

    whiten.running_mean.copy_(mean)
    whiten.running_whitening.copy_(matrix)
    whiten.batch_statistics = False
    out = whiten(x)
    torch.testing.assert_close(out, expected)
    assert torch.equal(whiten.running_mean, mean)
    assert torch.equal(whiten.running_whitening, matrix)
    out.square().sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert whiten.weight.grad is not None and float(whiten.weight.grad.abs().sum()) > 0


@pytest.mark.parametrize("mode", ["batch", "running"])
def test_client_whitens_with_the_received_statistics_under_local_whitening_running(
    mode: str,
) -> None:
    """``federation.local_whitening = "running"``: a client's stage-2 round trains its hash head
    under the whitening statistics it received (the buffers come back unchanged); ``"batch"``
    (the default) whitens each batch and moves them."""
    from fedrs.client_data import ClientData
    from fedrs.client_round import train_round

    config = load_config(SMOKE, {"federation.local_whitening": mode})
    assert config.federation.local_whitening == mode
    data = load_run_data(config.data)
    model = build_model(config)
    apply_moments(model, measure_statistics(model, data.archive, data.train_rows, config))
    received = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    client = ClientData(0, data.archive, data.train_rows[:24], ("s1", "s2"))
    trained = train_round(
        config,
        client,
        received,
        {protocol.SERVER_ROUND: config.federation.stage1_rounds + 1, protocol.STATISTICS: True},
    )
    state = trained.model.state_dict()
    kept = all(
        np.array_equal(state[k].numpy(), received[k])
        for k in ("hash_head.whiten.running_mean", "hash_head.whiten.running_whitening")
    )
    assert kept == (mode == "running")
    assert not np.array_equal(
        state["hash_head.whiten.weight"].numpy(), received["hash_head.whiten.weight"]
    )


def test_local_whitening_refuses_unknown_modes() -> None:
    with pytest.raises(InputError, match="local_whitening"):
        load_config(SMOKE, {"federation.local_whitening": "pooled"})
