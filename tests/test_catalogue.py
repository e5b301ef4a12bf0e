"""The strategy catalogue: every Flower strategy by name, with fedrs' guarantees around it.

Hand-made replies go through ``configure_train`` / ``aggregate_train`` (no Flower run); the
slow tests run each name through ``fedrs simulate`` on the smoke experiment.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _data import SMOKE
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp.strategy import FedAdam
from test_strategies import (
    HEAD,
    S1,
    S2,
    FakeGrid,
    f32,
    global_model,
    head,
    instructions,
    numpy_of,
    reply,
)

from fedrs.cli import main as cli
from fedrs.errors import InputError
from fedrs.strategies import (
    STRATEGIES,
    GuardedStrategy,
    NoSuccessfulClientsError,
    build_strategy,
    strategy_names,
)

pytestmark = pytest.mark.usefixtures("task_identity")
CATALOGUE = [
    "bulyan",
    "fedadagrad",
    "fedadam",
    "fedavg",
    "fedavgm",
    "fedmedian",
    "fedprox",
    "fedtrimmedavg",
    "fedyogi",
    "krum",
    "modality-aware",
    "multikrum",
]


def test_every_name_is_a_flower_strategy_with_fedrs_guarantees() -> None:
    assert strategy_names() == CATALOGUE
    for name in CATALOGUE:
        strategy = build_strategy(name)
        assert isinstance(strategy, GuardedStrategy), name
        assert isinstance(strategy.primary, STRATEGIES[name].flower), name


def test_flower_options_are_checked_and_named() -> None:
    with pytest.raises(InputError, match="bogus"):
        build_strategy("fedadam", bogus=1)
    with pytest.raises(InputError, match=r"FedTrimmedAvg: .*beta"):
        build_strategy("fedtrimmedavg", beta=0.7)
    strategy = build_strategy("fedadam", eta=0.01, tau=1e-4)
    assert (strategy.primary.eta, strategy.primary.tau) == (0.01, 1e-4)


def _attacked_round(name: str, **options: object) -> dict[str, np.ndarray]:
    """One round of five whole-model replies, the last one scaled by 1e6."""
    strategy = build_strategy(name, min_train_nodes=5, partial_replies=False, **options)
    sent = instructions(strategy, 5)
    rng = np.random.default_rng(0)
    honest = [
        {
            S1: (f32(1, 2) + rng.normal(0, 0.01, 2)).astype(np.float32),
            S2: f32(3, 3, 3),
            HEAD: head(0.5),
        }
        for _ in range(4)
    ]
    attack = {k: (v * 1e6).astype(np.float32) for k, v in honest[0].items()}
    replies = [reply(m, arrays, 10) for m, arrays in zip(sent, [*honest, attack], strict=True)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    return numpy_of(arrays)


def test_robust_strategies_resist_one_scaled_update_while_fedavg_does_not() -> None:
    honest_mean = np.array([1.0, 2.0], dtype=np.float32)
    far = np.abs(_attacked_round("fedavg")[S1] - honest_mean).max()
    assert far > 1e4
    for name, options in (
        ("fedmedian", {}),
        ("fedtrimmedavg", {"beta": 0.2}),
        ("krum", {"num_malicious_nodes": 1}),
        ("multikrum", {"num_malicious_nodes": 1, "num_nodes_to_select": 3}),
    ):
        out = _attacked_round(name, **options)
        assert np.abs(out[S1] - honest_mean).max() < 0.05, name
        np.testing.assert_allclose(out[HEAD], head(0.5), err_msg=name)


def _partial_round(strategy: GuardedStrategy, base: ArrayRecord, round_: int, delta: float):  # type: ignore[no-untyped-def]
    a, b, c = instructions(strategy, 3, base, server_round=round_)
    g = numpy_of(base)
    replies = [
        reply(a, {S1: g[S1] + delta, HEAD: g[HEAD] + delta}, 100),
        reply(b, {S2: g[S2] - delta, HEAD: g[HEAD] + 2 * delta}, 300),
        reply(c, {S1: g[S1] + 3 * delta, S2: g[S2] + delta, HEAD: g[HEAD]}, 100),
    ]
    arrays, _ = strategy.aggregate_train(round_, replies)
    assert arrays is not None
    return arrays, replies


def test_fedadam_over_partial_replies_keeps_its_moments_per_key() -> None:
    """S1-only, S2-only and S1+S2 clients send different keys; FedAdam runs per key group and
    each group's result equals Flower's FedAdam on the replies that carry that group."""
    strategy = build_strategy("fedadam", min_train_nodes=3, eta=0.05)
    assert strategy.partial_replies
    reference = {key: FedAdam(eta=0.05) for key in (S1, S2, HEAD)}
    carriers = {S1: (0, 2), S2: (1, 2), HEAD: (0, 1, 2)}
    base = global_model()
    for round_ in (1, 2):
        merged, replies = _partial_round(strategy, base, round_, delta=0.1 * round_)
        for key, flower in reference.items():
            current = ArrayRecord({key: Array(base[key].numpy().astype(np.float64))})
            flower.configure_train(round_, current, ConfigRecord(), FakeGrid(range(1, 4)))
            picked = [
                Message(_only(replies[i], key), dst_node_id=i + 1, message_type="train")
                for i in carriers[key]
            ]
            expected, _ = flower.aggregate_train(round_, picked)
            assert expected is not None
            np.testing.assert_allclose(
                numpy_of(merged)[key], expected[key].numpy(), rtol=1e-6, err_msg=key
            )
        base = merged
    groups = {frozenset(keys) for keys in strategy._groups}
    assert groups == {frozenset({S1}), frozenset({S2}), frozenset({HEAD})}
    for keys, group in strategy._groups.items():
        assert set(group.m_t) == set(keys) and set(group.v_t) == set(keys)


@pytest.mark.parametrize("partial", [True, False])
def test_server_step_covers_only_the_server_keys(partial: bool) -> None:
    """FedAvgM with a server learning rate of 2 extrapolates the keys ``server_keys`` names;
    the others are the plain weighted average of the replies carrying them."""
    strategy = build_strategy(
        "fedavgm",
        min_train_nodes=3,
        partial_replies=partial,
        server_learning_rate=2.0,
        server_keys=["hash_head"],
    )
    base = global_model()
    g = numpy_of(base)
    a, b, c = instructions(strategy, 3, base, server_round=1)
    sent = [
        {S1: g[S1] + 0.1, S2: g[S2] + 0.3, HEAD: g[HEAD] + 0.1},
        {S1: g[S1] + 0.2, S2: g[S2] - 0.1, HEAD: g[HEAD] + 0.2},
        {S1: g[S1] + 0.3, S2: g[S2] + 0.2, HEAD: g[HEAD] + 0.6},
    ]
    if partial:  # an S1-only, an S2-only and a multi-modal client
        del sent[0][S2], sent[1][S1]
    weights = [100, 300, 100]
    replies = [reply(m, arrays, w) for m, arrays, w in zip((a, b, c), sent, weights, strict=True)]
    merged, _ = strategy.aggregate_train(1, replies)
    assert merged is not None
    out = numpy_of(merged)

    def mean(key: str) -> np.ndarray:
        pairs = [(arrays[key], w) for arrays, w in zip(sent, weights, strict=True) if key in arrays]
        total = sum(w for _, w in pairs)
        return sum(a.astype(np.float64) * w for a, w in pairs) / total

    np.testing.assert_allclose(out[S1], mean(S1), rtol=1e-6)
    np.testing.assert_allclose(out[S2], mean(S2), rtol=1e-6)
    np.testing.assert_allclose(out[HEAD], g[HEAD] + 2.0 * (mean(HEAD) - g[HEAD]), rtol=1e-6)
    with pytest.raises(InputError, match="server_keys"):
        build_strategy("fedavgm", server_keys=["(unclosed"])


def _only(msg: Message, key: str):  # type: ignore[no-untyped-def]
    from flwr.app import MetricRecord, RecordDict

    value = msg.content.array_records["arrays"][key].numpy().astype(np.float64)
    weight = msg.content.metric_records["metrics"]["num-examples"]
    return RecordDict(
        {
            "arrays": ArrayRecord({key: Array(value)}),
            "metrics": MetricRecord({"num-examples": float(weight)}),
        }
    )


def test_whole_model_strategies_refuse_partial_replies() -> None:
    strategy = build_strategy("krum", min_train_nodes=2)
    assert not strategy.partial_replies
    a, b = instructions(strategy, 2)
    sent = a.content.config_records["config"]
    assert sent["partial-replies"] is False
    replies = [reply(a, {S1: f32(1, 1), HEAD: head(1)}, 10), reply(b, {S2: f32(1, 1, 1)}, 10)]
    with pytest.raises(NoSuccessfulClientsError, match="misses"):
        strategy.aggregate_train(1, replies)


def test_strategies_command_lists_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["strategies", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["strategies"]
    assert sorted(listed) == CATALOGUE
    assert listed["fedadam"] == {
        "flower": "FedAdam",
        "replies": "partial",
        "options": ["eta", "eta_l", "beta_1", "beta_2", "tau"],
    }
    assert listed["fedavg"]["replies"] == "whole"
    assert cli(["strategies"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(CATALOGUE) + 1


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("name", CATALOGUE)
def test_each_strategy_completes_a_smoke_federation(
    name: str, tmp_path: Path, cache_env: Path
) -> None:
    """Modality split (an S1-only, an S2-only and an S1+S2 client), one joint round."""
    out = tmp_path / name
    args = ["simulate", "--config", str(SMOKE), "--out", str(out), "--rounds", "1"]
    args += ["--set", "federation.stage1_rounds=0"]  # codecs and hash head trained
    assert cli([*args, "--strategy", name]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clients_ok"] == 3 and summary["clients_failed"] == 0, summary
    assert 0.0 <= summary["map@20"] <= 1.0
    print(f"{name}: mAP@20 {summary['map@20']:.4f} (random {summary['map@20_random']:.4f})")


def test_dp_clipping_needs_whole_replies() -> None:
    dp = {"clipping": "fixed", "noise_multiplier": 0.0, "num_sampled_clients": 2}
    with pytest.raises(InputError, match=r"DP clipping \(fixed, server side\).*FedAdam"):
        build_strategy("fedadam", dp=dp)
    with pytest.raises(InputError, match="client-side DP clipping works on plain updates"):
        build_strategy("fedavg", dp=dp | {"side": "client"}, update_codec="entropy")


def test_server_side_fixed_clipping_bounds_each_update() -> None:
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

    dp = {"clipping": "fixed", "clipping_norm": 0.5, "noise_multiplier": 0.0}
    strategy = build_strategy("fedavg", min_train_nodes=2, dp=dp | {"num_sampled_clients": 2})
    assert isinstance(strategy.primary, DifferentialPrivacyServerSideFixedClipping)
    a, b = instructions(strategy, 2)
    big = {S1: f32(30, 40), S2: f32(0, 0, 0), HEAD: head(0)}  # update norm 50
    arrays, _ = strategy.aggregate_train(1, [reply(a, big, 10), reply(b, big, 10)])
    assert arrays is not None
    update = np.concatenate([numpy_of(arrays)[k].ravel() for k in (S1, S2, HEAD)])
    assert np.linalg.norm(update) == pytest.approx(0.5, rel=1e-5)  # clipped to the norm


def test_client_side_clipping_is_asked_in_the_config() -> None:
    dp = {"clipping": "adaptive", "side": "client", "num_sampled_clients": 2}
    strategy = build_strategy("fedavg", min_train_nodes=2, dp=dp)
    (message, _) = instructions(strategy, 2)
    config = message.content.config_records["config"]
    assert config["dp-client-clipping"] == "adaptive"
    assert config["clipping_norm"] == pytest.approx(1.0)  # the wrapper sends its (initial) norm


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("side", ["server", "client"])
def test_dp_clipping_completes_a_smoke_federation(
    side: str, tmp_path: Path, cache_env: Path
) -> None:
    out = tmp_path / side
    args = ["simulate", "--config", str(SMOKE), "--out", str(out), "--rounds", "1"]
    args += ["--strategy", "fedavg", "--set", 'federation.dp.clipping="fixed"']
    args += ["--set", 'federation.statistics="averaged"']
    args += [
        "--set",
        f'federation.dp.side="{side}"',
        "--set",
        "federation.dp.noise_multiplier=0.01",
    ]
    assert cli(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clients_ok"] == 3 and summary["clients_failed"] == 0, summary


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("fedadam", {"eta": 0.05}),
        ("fedavgm", {"server_momentum": 0.9, "partial_replies": False}),
        ("fedavgm", {"server_momentum": 0.9}),
    ],
)
def test_server_state_survives_a_resume(name: str, options: dict, tmp_path: Path) -> None:
    """Three rounds in one run equal two rounds, the state through a file, then one more."""

    def strategy():  # type: ignore[no-untyped-def]
        return build_strategy(name, min_train_nodes=3, **options)

    def step(s, base, round_, delta):  # type: ignore[no-untyped-def]
        if s.partial_replies:
            return _partial_round(s, base, round_, delta)[0]
        sent = instructions(s, 3, base, server_round=round_)
        g = numpy_of(base)
        replies = [
            reply(m, {k: v + delta * (i + 1) for k, v in g.items() if k in (S1, S2, HEAD)}, 10)
            for i, m in enumerate(sent)
        ]
        return s.aggregate_train(round_, replies)[0]

    whole, base = strategy(), global_model()
    models = []
    for round_ in (1, 2, 3):
        base = step(whole, base, round_, 0.1 * round_)
        models.append(base)

    first = strategy()
    base = global_model()
    for round_ in (1, 2):
        base = step(first, base, round_, 0.1 * round_)
    np.savez(tmp_path / "state.npz", **first.server_state())
    resumed = strategy()
    resumed.round_offset = 2
    with np.load(tmp_path / "state.npz", allow_pickle=False) as saved:
        resumed.load_server_state(dict(saved))
    out = step(resumed, base, 1, 0.3)
    for key in (S1, S2, HEAD):
        np.testing.assert_array_equal(numpy_of(out)[key], numpy_of(models[2])[key], err_msg=key)
    fresh = step(strategy(), base, 1, 0.3)  # without the state the third round differs
    assert any(not np.array_equal(numpy_of(fresh)[k], numpy_of(models[2])[k]) for k in (S1, HEAD))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_stateful_strategy_resumes_like_an_uninterrupted_run(
    tmp_path: Path, cache_env: Path
) -> None:
    """FedAvgM with momentum (server state per key group): 2 rounds == 1 round + resume."""
    import torch

    args = ["simulate", "--config", str(SMOKE), "--strategy", "fedavgm"]
    args += ["--set", "federation.strategy_options.server_momentum=0.9"]
    assert cli([*args, "--out", str(tmp_path / "whole"), "--rounds", "2"]) == 0
    assert cli([*args, "--out", str(tmp_path / "cut"), "--rounds", "1"]) == 0
    assert (tmp_path / "cut" / "checkpoints" / "round-0001.strategy.npz").is_file()
    assert cli([*args, "--out", str(tmp_path / "cut"), "--rounds", "2", "--resume"]) == 0
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_per_key_strategy_with_entropy_coded_updates(tmp_path: Path, cache_env: Path) -> None:
    out = tmp_path / "coded"
    args = ["simulate", "--config", str(SMOKE), "--out", str(out), "--strategy", "fedadam"]
    assert (
        cli([*args, "--update-codec", "entropy", "--set", "federation.strategy_options.eta=0.001"])
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clients_ok"] == 6 and summary["clients_failed"] == 0
    assert summary["update_codec"] == "entropy"


@pytest.mark.parametrize("name", ["modality-aware", "fedadam"])
def test_codec_keys_are_weighted_by_the_patches_of_their_modality(name: str) -> None:
    """A client holding both sensors but S1 for only 20 of its 100 patches weighs 20 in the
    S1 codec, 100 in the S2 codec and in the shared keys."""
    strategy = build_strategy(
        name, min_train_nodes=2, **({"eta": 1.0} if name != "modality-aware" else {})
    )
    a, c = instructions(strategy, 2)
    replies = [
        reply(a, {S1: f32(1, 1), HEAD: head(1)}, 100, **{"num-examples-s1": 100}),
        reply(
            c,
            {S1: f32(7, 7), S2: f32(2, 2, 2), HEAD: head(7)},
            100,
            **{"num-examples-s1": 20, "num-examples-s2": 100},
        ),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    out = numpy_of(arrays)
    if name == "modality-aware":
        np.testing.assert_allclose(out[S1], [2.0, 2.0], rtol=1e-6)  # (100*1 + 20*7) / 120
        np.testing.assert_allclose(out[HEAD], head(4.0), rtol=1e-6)  # (100*1 + 100*7) / 200
        np.testing.assert_allclose(out[S2], [2.0, 2.0, 2.0], rtol=1e-6)
    groups = {frozenset(k) for k in getattr(strategy, "_groups", {})}
    if name == "fedadam":
        assert groups == {frozenset({S1}), frozenset({S2}), frozenset({HEAD})}


def test_a_modality_count_above_the_weight_is_a_failed_reply() -> None:
    strategy = build_strategy("modality-aware", min_train_nodes=2)
    a, b = instructions(strategy, 2)
    replies = [
        reply(a, {S1: f32(1, 1), HEAD: head(1)}, 100, **{"num-examples-s1": 1e9}),
        reply(b, {S2: f32(2, 2, 2), HEAD: head(3)}, 100),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    stats = strategy.round_stats[1]
    assert (stats.clients_ok, stats.clients_failed) == (1, 1)
    assert "num-examples-s1" in stats.failures[0].reason
