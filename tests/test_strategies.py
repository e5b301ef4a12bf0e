"""Tests of fedrs.strategies: registry, modality-aware aggregation, local-only keys, accounting.

Replies are built the way Flower delivers them: ``configure_train`` makes the instruction
messages, and each reply is ``Message(RecordDict(...), reply_to=instruction)`` or
``Message(Error(...), reply_to=instruction)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError
from flwr.serverapp.strategy import FedAvg, FedProx
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fedrs.errors import FedrsError, InputError
from fedrs.strategies import (
    LOCAL_KEYS_CONFIG_KEY,
    STRATEGIES,
    AccountedFedAvg,
    FedAvgStrategy,
    FedProxStrategy,
    ModalityAwareFedAvg,
    NoSuccessfulClientsError,
    RoundFailedError,
    array_bytes,
    build_strategy,
    message_bytes,
    messages_bytes,
    register_strategy,
    strategy_names,
)

S1 = "codecs.s1.w"
S2 = "codecs.s2.w"
HEAD = "hash_head.w"
BN_MEAN = "hash_head.bn.running_mean"
BN_COUNT = "hash_head.bn.num_batches_tracked"
WHITEN = "hash_head.whiten.mean"
LOCAL = (BN_MEAN, BN_COUNT, WHITEN)

Handler = Callable[[Message], Message | None]


pytestmark = pytest.mark.usefixtures("task_identity")


class FakeGrid(Grid):
    """A Grid with fixed node ids; ``send_and_receive`` answers through ``handler``."""

    def __init__(self, node_ids: Iterable[int], handler: Handler | None = None) -> None:
        self.node_ids = list(node_ids)
        self.handler = handler
        self.sent: list[list[Message]] = []

    def set_run(self, run_id: int) -> None:  # type: ignore[override]
        raise NotImplementedError

    @property
    def run(self) -> object:  # type: ignore[override]
        raise NotImplementedError

    def create_message(self, *args: object, **kwargs: object) -> Message:  # type: ignore[override]
        raise NotImplementedError

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        assert self.handler is not None
        messages = list(messages)
        self.sent.append(messages)
        replies = [self.handler(m) for m in messages]
        return [r for r in replies if r is not None]


def global_model() -> ArrayRecord:
    return ArrayRecord(
        {
            S1: Array(np.array([0.0, 0.0], dtype=np.float32)),
            S2: Array(np.array([0.0, 0.0, 0.0], dtype=np.float32)),
            HEAD: Array(np.zeros((2, 2), dtype=np.float32)),
            BN_MEAN: Array(np.array([7.0, 7.0], dtype=np.float32)),
            BN_COUNT: Array(np.array(5, dtype=np.int64)),
            WHITEN: Array(np.array([9.0, 9.0], dtype=np.float32)),
        }
    )


def instructions(
    strategy: AccountedFedAvg, n: int, arrays: ArrayRecord | None = None, server_round: int = 1
) -> list[Message]:
    grid = FakeGrid(range(1, n + 1))
    messages = strategy.configure_train(
        server_round, arrays or global_model(), ConfigRecord(), grid
    )
    return sorted(messages, key=lambda m: m.metadata.dst_node_id)


def reply(
    instruction: Message,
    arrays: dict[str, np.ndarray],
    num_examples: float,
    **metrics: float,
) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": num_examples, **metrics}),
        }
    )
    return Message(content, reply_to=instruction)


def error_reply(instruction: Message, reason: str = "boom") -> Message:
    return Message(
        Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=instruction
    )


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def head(value: float) -> np.ndarray:
    return np.full((2, 2), value, dtype=np.float32)


def numpy_of(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


# ---------------------------------------------------------------------------- modality-aware


def test_modality_aware_averages_each_key_over_the_clients_that_sent_it() -> None:
    strategy = ModalityAwareFedAvg(min_train_nodes=3)
    a, b, c = instructions(strategy, 3)
    replies = [
        reply(a, {S1: f32(1, 2), HEAD: head(1)}, 100, loss=1.0, bpp_s1=0.5),
        reply(b, {S2: f32(3, 3, 3), HEAD: head(2)}, 300, loss=2.0, bpp_s2=0.2),
        reply(c, {S1: f32(5, 6), S2: f32(7, 7, 7), HEAD: head(6)}, 100, loss=3.0, bpp_s1=1.5),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)

    assert arrays is not None and metrics is not None
    out = numpy_of(arrays)
    # (100*[1,2] + 100*[5,6]) / 200, (300*3 + 100*7) / 400, (100*1 + 300*2 + 100*6) / 500
    np.testing.assert_allclose(out[S1], [3.0, 4.0], rtol=1e-6)
    np.testing.assert_allclose(out[S2], [4.0, 4.0, 4.0], rtol=1e-6)
    np.testing.assert_allclose(out[HEAD], np.full((2, 2), 2.6), rtol=1e-6)
    assert list(arrays.keys()) == list(global_model().keys())
    for key, ref in global_model().items():
        assert arrays[key].dtype == ref.dtype and tuple(arrays[key].shape) == tuple(ref.shape)
    # Local keys keep the global model's values.
    np.testing.assert_array_equal(out[BN_MEAN], [7.0, 7.0])
    assert out[BN_COUNT] == 5 and out[BN_COUNT].dtype == np.int64
    np.testing.assert_array_equal(out[WHITEN], [9.0, 9.0])
    # Metrics per key over the replies that report them; the weight is not a metric.
    assert metrics["loss"] == pytest.approx((100 * 1.0 + 300 * 2.0 + 100 * 3.0) / 500)
    assert metrics["bpp_s1"] == pytest.approx((100 * 0.5 + 100 * 1.5) / 200)
    assert metrics["bpp_s2"] == pytest.approx(0.2)
    assert "num-examples" not in metrics

    stats = strategy.round_stats[1]
    assert (stats.sampled, stats.clients_ok, stats.clients_failed) == (3, 3, 0)


def test_keys_nobody_returned_are_kept_from_the_global_model() -> None:
    base = global_model()
    base[S2] = Array(f32(0.25, -1.5, 8.0))
    strategy = ModalityAwareFedAvg()
    a, b = instructions(strategy, 2, base)
    arrays, _ = strategy.aggregate_train(
        1,
        [
            reply(a, {S1: f32(1, 1), HEAD: head(1)}, 10),
            reply(b, {S1: f32(3, 3), HEAD: head(3)}, 30),
        ],
    )
    assert arrays is not None
    assert arrays[S2].data == base[S2].data
    np.testing.assert_allclose(arrays[S1].numpy(), [2.5, 2.5])
    np.testing.assert_allclose(arrays[HEAD].numpy(), head(2.5))


def test_error_replies_are_dropped_and_counted() -> None:
    strategy = ModalityAwareFedAvg(min_train_nodes=3)
    a, b, c = instructions(strategy, 3)
    arrays, _ = strategy.aggregate_train(
        1,
        [
            reply(a, {S1: f32(1, 1), HEAD: head(1)}, 1),
            error_reply(
                b, "Traceback (most recent call last):\n  File 'x'\nMemoryError: out of memory"
            ),
            reply(c, {S1: f32(4, 4), HEAD: head(4)}, 2),
        ],
    )
    assert arrays is not None
    np.testing.assert_allclose(arrays[S1].numpy(), [3.0, 3.0])  # (1*1 + 2*4) / 3
    stats = strategy.round_stats[1]
    assert (stats.clients_ok, stats.clients_failed, stats.clients_missing) == (2, 1, 0)
    assert stats.failures[0].node_id == b.metadata.dst_node_id
    failure = stats.failures[0]
    assert failure.reason == (
        "error reply (code 2, client app raised exception): MemoryError: out of memory"
    )
    assert failure.detail.startswith("Traceback") and "\n" not in str(failure)
    assert stats.as_metrics()["clients/failed"] == 1


BAD_REPLIES: dict[str, tuple[dict[str, np.ndarray], float, str]] = {
    "shape": ({S1: f32(1, 2, 3), HEAD: head(1)}, 10, "shape mismatch"),
    "dtype": ({S1: np.array([1.0, 2.0]), HEAD: head(1)}, 10, "dtype mismatch"),
    "unknown key": ({"codecs.s3.w": f32(1), HEAD: head(1)}, 10, "not in the global model"),
    "nan": ({S1: f32(np.nan, 1), HEAD: head(1)}, 10, "NaN"),
    "zero weight": ({S1: f32(1, 1), HEAD: head(1)}, 0, "positive finite"),
    "only local keys": ({BN_MEAN: f32(1, 1)}, 10, "no shared arrays"),
}


@pytest.mark.parametrize("kind", sorted(BAD_REPLIES))
def test_invalid_reply_is_a_failed_reply_not_a_crash(kind: str) -> None:
    bad_arrays, weight, reason = BAD_REPLIES[kind]
    strategy = ModalityAwareFedAvg()
    good, bad = instructions(strategy, 2)
    arrays, _ = strategy.aggregate_train(
        1, [reply(good, {S1: f32(2, 2), HEAD: head(2)}, 5), reply(bad, bad_arrays, weight)]
    )
    assert arrays is not None
    np.testing.assert_allclose(arrays[S1].numpy(), [2.0, 2.0])
    np.testing.assert_allclose(arrays[HEAD].numpy(), head(2))
    stats = strategy.round_stats[1]
    assert (stats.clients_ok, stats.clients_failed) == (1, 1)
    assert reason in stats.failures[0].reason


def test_reply_without_weight_is_failed() -> None:
    strategy = ModalityAwareFedAvg()
    good, bad = instructions(strategy, 2)
    no_weight = Message(
        RecordDict(
            {
                "arrays": ArrayRecord({S1: Array(f32(9, 9))}),
                "metrics": MetricRecord({"loss": 1.0}),
            }
        ),
        reply_to=bad,
    )
    arrays, _ = strategy.aggregate_train(1, [reply(good, {S1: f32(1, 1)}, 3), no_weight])
    assert arrays is not None
    np.testing.assert_allclose(arrays[S1].numpy(), [1.0, 1.0])
    assert "num-examples" in strategy.round_stats[1].failures[0].reason


def test_bytes_up_and_down_are_measured_on_the_messages() -> None:
    strategy = ModalityAwareFedAvg()
    messages = instructions(strategy, 2)
    shared = ArrayRecord({k: v for k, v in global_model().items() if k not in LOCAL})
    down = strategy.round_stats[1].bytes_down
    assert down == sum(message_bytes(m) for m in messages) == messages_bytes(messages)
    # every message carries the arrays' data, plus a bounded overhead (keys, dtypes, ids)
    assert 2 * array_bytes(shared) < down < 2 * (array_bytes(shared) + 4096)
    replies = [
        reply(messages[0], {S1: f32(1, 1), HEAD: head(1)}, 1),
        reply(messages[1], {S2: f32(1, 1, 1)}, 1),
    ]
    strategy.aggregate_train(1, replies)
    expected_up = message_bytes(replies[0]) + message_bytes(replies[1])
    assert strategy.round_stats[1].bytes_up == expected_up > 0
    assert strategy.round_stats[1].as_metrics()["comm/bytes_up"] == expected_up
    # a bigger array costs its data more
    bigger = reply(messages[0], {S1: f32(1, 1), HEAD: np.zeros((40, 40), np.float32)}, 1)
    assert message_bytes(bigger) - message_bytes(replies[0]) >= (1600 - 4) * 4


def test_per_client_metrics_of_the_usable_replies() -> None:
    strategy = ModalityAwareFedAvg(min_train_nodes=5)
    a, b, c, d, e = instructions(strategy, 5)
    s1_only = {"client-id": 7, "train_s": 12.5, "has-s1": 1, "has-s2": 0, "batches": 3.0}
    both = {"client-id": 2, "train_s": 3.0, "has-s1": 1, "has-s2": 1}
    replies = [
        reply(a, {S1: f32(1, 1), HEAD: head(1)}, 100, loss=0.5, **s1_only),
        reply(b, {S1: f32(1, 1), S2: f32(1, 1, 1), HEAD: head(1)}, 40, loss=9.0, **both),
        reply(c, {S1: f32(1, 1)}, 10, loss=1.0),  # no client-id: not tracked, still aggregated
        reply(d, {S1: f32(1, 1)}, 20, **{"client-id": 4}),  # only the id and the weight
        error_reply(e),
    ]
    strategy.aggregate_train(1, replies)

    stats = strategy.round_stats[1]
    assert (stats.clients_ok, stats.clients_failed) == (4, 1)
    assert stats.per_client == {
        7: {"loss": 0.5, "examples": 100.0, "train_s": 12.5, "has_s1": 1.0, "has_s2": 0.0},
        2: {"loss": 9.0, "examples": 40.0, "train_s": 3.0, "has_s1": 1.0, "has_s2": 1.0},
        4: {"examples": 20.0},
    }
    logged = stats.client_metrics()
    assert logged["client/7/train_s"] == 12.5 and logged["client/2/loss"] == 9.0
    assert logged["client/2/has_s2"] == 1.0 and logged["client/7/has_s2"] == 0.0
    assert set(logged) == {f"client/{i}/{k}" for i, ks in stats.per_client.items() for k in ks}
    assert next(iter(logged)).startswith("client/2/")  # by client id
    # the counts of as_metrics() are unchanged
    assert set(stats.as_metrics()) == {
        "clients/ok",
        "clients/failed",
        "comm/bytes_up",
        "comm/bytes_down",
        "comm/bytes_down_eval",
    }
    # two nodes claiming one client id (a deployment without partition ids): the first counts
    strategy = ModalityAwareFedAvg()
    f, g = instructions(strategy, 2)
    strategy.aggregate_train(
        1,
        [
            reply(g, {S1: f32(1, 1)}, 5, loss=2.0, **{"client-id": 0}),
            reply(f, {S1: f32(1, 1)}, 5, loss=1.0, **{"client-id": 0}),
        ],
    )
    assert strategy.round_stats[1].per_client == {0: {"loss": 1.0, "examples": 5.0}}


# ---------------------------------------------------------------------------- local-only keys


def test_local_keys_are_never_broadcast() -> None:
    strategy = ModalityAwareFedAvg(fraction_evaluate=1.0)
    grid = FakeGrid([1, 2])
    for messages in (
        strategy.configure_train(1, global_model(), ConfigRecord(), grid),
        strategy.configure_evaluate(1, global_model(), ConfigRecord(), grid),
    ):
        messages = list(messages)
        assert len(messages) == 2
        for msg in messages:
            sent = msg.content["arrays"]
            assert set(sent.keys()) == {S1, S2, HEAD}
            assert list(msg.content["config"][LOCAL_KEYS_CONFIG_KEY]) == list(
                strategy.local_keys.patterns
            )


def test_local_keys_sent_back_are_never_aggregated() -> None:
    strategy = ModalityAwareFedAvg()
    a, b = instructions(strategy, 2)
    arrays, _ = strategy.aggregate_train(
        1,
        [
            reply(a, {S1: f32(1, 1), BN_MEAN: f32(100, 100), BN_COUNT: np.array(40)}, 1),
            reply(b, {S1: f32(1, 1), WHITEN: f32(-3, -3)}, 1),
        ],
    )
    assert arrays is not None
    out = numpy_of(arrays)
    np.testing.assert_array_equal(out[BN_MEAN], [7.0, 7.0])
    assert out[BN_COUNT] == 5
    np.testing.assert_array_equal(out[WHITEN], [9.0, 9.0])
    assert strategy.round_stats[1].clients_failed == 0


def test_local_keys_option_patterns() -> None:
    everything_shared = ModalityAwareFedAvg(local_keys=[])
    sent = instructions(everything_shared, 2)[0].content["arrays"]
    assert set(sent.keys()) == set(global_model().keys())

    custom = build_strategy("fedavg", local_keys=[r"^codecs\.s2\."])
    sent = instructions(custom, 2)[0].content["arrays"]  # type: ignore[arg-type]
    assert set(sent.keys()) == {S1, HEAD, *LOCAL}

    with pytest.raises(InputError, match="regular expression"):
        ModalityAwareFedAvg(local_keys=["("])


# ---------------------------------------------------------------------------- fedavg / fedprox


def test_fedavg_by_name_matches_flower_and_rejects_partial_replies() -> None:
    strategy = build_strategy("fedavg", min_train_nodes=3, fraction_evaluate=0.5)
    assert isinstance(strategy, FedAvg) and isinstance(strategy, FedAvgStrategy)
    assert strategy.weighted_by_key == "num-examples"
    assert strategy.fraction_evaluate == 0.5
    a, b, c = instructions(strategy, 3)  # type: ignore[arg-type]
    full_a = {S1: f32(1, 2), S2: f32(1, 1, 1), HEAD: head(1)}
    full_b = {S1: f32(3, 5), S2: f32(2, 4, 8), HEAD: head(4)}
    replies = [reply(a, full_a, 30), reply(b, full_b, 10), reply(c, {S1: f32(9, 9)}, 50)]
    arrays, _ = strategy.aggregate_train(1, replies)

    assert arrays is not None
    flower = aggregate_arrayrecords([replies[0].content, replies[1].content], "num-examples")
    for key in (S1, S2, HEAD):
        np.testing.assert_allclose(arrays[key].numpy(), flower[key].numpy(), rtol=1e-6)
    np.testing.assert_allclose(arrays[S1].numpy(), [1.5, 2.75])  # (30*[1,2] + 10*[3,5]) / 40
    stats = strategy.round_stats[1]  # type: ignore[attr-defined]
    assert (stats.clients_ok, stats.clients_failed) == (2, 1)
    assert "modality-aware" in stats.failures[0].reason


def test_fedprox_by_name_sends_proximal_mu() -> None:
    strategy = build_strategy("fedprox", **{"proximal-mu": 0.1, "min-train-nodes": 2})
    assert isinstance(strategy, FedProxStrategy)
    assert isinstance(strategy.primary, FedProx)  # Flower's FedProx, wrapped
    assert strategy.primary.proximal_mu == pytest.approx(0.1)
    messages = instructions(strategy, 2)  # type: ignore[arg-type]
    assert messages[0].content["config"]["proximal-mu"] == pytest.approx(0.1)
    assert BN_MEAN not in messages[0].content["arrays"]


# ---------------------------------------------------------------------------- registry


def test_registry_names_and_validation() -> None:
    assert {"fedavg", "fedprox", "modality-aware"} <= set(strategy_names())
    assert isinstance(build_strategy("modality-aware"), ModalityAwareFedAvg)
    with pytest.raises(InputError, match=r"unknown strategy 'fedsgd'.*fedavg.*modality-aware"):
        build_strategy("fedsgd")
    with pytest.raises(InputError, match=r"no option 'mu'.*proximal_mu"):
        build_strategy("fedprox", mu=0.1)
    with pytest.raises(InputError, match="no option 'proximal_mu'"):
        build_strategy("fedavg", proximal_mu=0.1)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("fedavg", {"fraction_train": 1.5}, "fraction_train"),
        ("fedavg", {"min_train_nodes": -1}, "min_train_nodes"),
        ("modality-aware", {"min_successful": 0}, "min_successful"),
        ("modality-aware", {"accept_failures": "no"}, "accept_failures"),
        ("modality-aware", {"weighted_by_key": ""}, "weighted_by_key"),
        ("fedprox", {"proximal_mu": -0.5}, "proximal_mu"),
        ("fedprox", {"proximal_mu": float("nan")}, "proximal_mu"),
    ],
)
def test_bad_option_values_raise_input_error(
    name: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        build_strategy(name, **options)


def test_register_strategy_decorator() -> None:
    @register_strategy("test-only-avg")
    class TestOnlyAvg(ModalityAwareFedAvg):
        pass

    try:
        assert STRATEGIES["test-only-avg"] is TestOnlyAvg
        assert isinstance(build_strategy("test-only-avg"), TestOnlyAvg)
        with pytest.raises(ValueError, match="already registered"):
            register_strategy("test-only-avg")(FedAvgStrategy)
    finally:
        del STRATEGIES["test-only-avg"]


# ---------------------------------------------------------------------------- failing rounds


def test_zero_successful_replies_raise_a_clear_error() -> None:
    strategy = ModalityAwareFedAvg(min_train_nodes=2)
    a, b = instructions(strategy, 2, server_round=4)
    with pytest.raises(NoSuccessfulClientsError, match=r"round 4: 0 successful.*2 failed") as info:
        strategy.aggregate_train(4, [error_reply(a, "disk full"), reply(b, {S1: f32(1, 2, 3)}, 1)])
    err: RoundFailedError = info.value
    assert issubclass(NoSuccessfulClientsError, RoundFailedError)
    assert issubclass(NoSuccessfulClientsError, FedrsError)
    # Flower's aggregation-error exit code when the ServerApp runs under a SuperLink.
    assert issubclass(NoSuccessfulClientsError, AggregationError)
    assert err.server_round == 4 and err.clients_ok == 0 and err.clients_failed == 2
    assert "disk full" in str(err) and "shape mismatch" in str(err)
    assert strategy.round_stats[4].clients_failed == 2


def test_missing_replies_count_as_failed_and_no_reply_at_all_raises() -> None:
    strategy = ModalityAwareFedAvg(min_train_nodes=3)
    a, _, _ = instructions(strategy, 3)
    strategy.aggregate_train(1, [reply(a, {S1: f32(1, 1)}, 1)])
    stats = strategy.round_stats[1]
    assert (stats.clients_ok, stats.clients_failed, stats.clients_missing) == (1, 2, 2)

    instructions(strategy, 3, server_round=2)
    with pytest.raises(NoSuccessfulClientsError, match="no reply before the timeout"):
        strategy.aggregate_train(2, [])


def test_min_successful_and_accept_failures() -> None:
    strategy = ModalityAwareFedAvg(min_successful=2)
    a, b = instructions(strategy, 2)
    with pytest.raises(RoundFailedError, match="at least 2 required") as info:
        strategy.aggregate_train(1, [reply(a, {S1: f32(1, 1)}, 1), error_reply(b)])
    assert not isinstance(info.value, NoSuccessfulClientsError)

    strict = ModalityAwareFedAvg(accept_failures=False)
    a, b, c = instructions(strict, 3)
    with pytest.raises(RoundFailedError, match="failures are not accepted"):
        strict.aggregate_train(
            1, [reply(a, {S1: f32(1, 1)}, 1), reply(b, {S1: f32(1, 1)}, 1), error_reply(c)]
        )


def test_round_without_sampled_clients_is_skipped() -> None:
    strategy = ModalityAwareFedAvg(fraction_train=0.0)
    assert instructions(strategy, 2) == []
    assert strategy.aggregate_train(1, []) == (None, None)


# ---------------------------------------------------------------------------- Strategy.start


def modality_client(msg: Message) -> Message:
    """Client: odd nodes hold S1 only, even nodes S2 only; reply = received + node id."""
    node = msg.metadata.dst_node_id
    received = numpy_of(msg.content.array_records["arrays"])
    assert not set(received) & set(LOCAL)
    if msg.metadata.message_type == "evaluate":
        return Message(
            RecordDict({"metrics": MetricRecord({"num-examples": node, "score": float(node)})}),
            reply_to=msg,
        )
    own = S1 if node % 2 else S2
    arrays = {own: received[own] + node, HEAD: received[HEAD] + node, BN_MEAN: f32(0, 0)}
    return reply(msg, arrays, node, loss=float(node))


def test_start_runs_rounds_with_partial_clients_and_records_stats() -> None:
    strategy = ModalityAwareFedAvg(min_train_nodes=3, min_evaluate_nodes=3)
    grid = FakeGrid([1, 2, 3], modality_client)
    result = strategy.start(grid, global_model(), num_rounds=2, timeout=10)

    out = numpy_of(result.arrays)
    # Per round: S1 from nodes 1 and 3 (+ (1*1 + 3*3)/4 = 2.5), S2 from node 2 (+2),
    # head from all (+ (1 + 4 + 9)/6 = 7/3).
    np.testing.assert_allclose(out[S1], [5.0, 5.0], rtol=1e-6)
    np.testing.assert_allclose(out[S2], [4.0, 4.0, 4.0], rtol=1e-6)
    np.testing.assert_allclose(out[HEAD], head(14 / 3), rtol=1e-6)
    np.testing.assert_array_equal(out[BN_MEAN], [7.0, 7.0])
    assert sorted(strategy.round_stats) == [1, 2]
    for stats in strategy.round_stats.values():
        assert (stats.clients_ok, stats.clients_failed, stats.eval_ok) == (3, 0, 3)
        assert stats.bytes_down > 0 and stats.bytes_up > 0 and stats.bytes_down_eval > 0
    assert result.evaluate_metrics_clientapp[2]["score"] == pytest.approx(14 / 6)
    assert result.train_metrics_clientapp[1]["loss"] == pytest.approx(14 / 6)


def test_start_stops_when_every_client_fails() -> None:
    strategy = ModalityAwareFedAvg(min_train_nodes=2, fraction_evaluate=0.0)
    grid = FakeGrid([1, 2], lambda msg: error_reply(msg, "ClientApp raised"))
    with pytest.raises(NoSuccessfulClientsError, match="round 1"):
        strategy.start(grid, global_model(), num_rounds=3, timeout=10)
