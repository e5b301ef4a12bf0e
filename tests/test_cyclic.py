"""Clients in turn (``cyclic_rounds``, cyclic weight transfer): each client of such a round
trains the model the previous one returned, and the round ends with the last usable one."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from _data import REPO, SMOKE
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from test_strategies import (
    HEAD,
    S1,
    S2,
    FakeGrid,
    error_reply,
    f32,
    global_model,
    head,
    numpy_of,
    reply,
)

from fedrs.cli._overrides import drop_replaced_options
from fedrs.config import load_config
from fedrs.errors import InputError
from fedrs.server_strategy import strategy_for
from fedrs.strategies import ModalityAwareFedAvg, build_strategy, trains_in_turn
from fedrs.strategies import base as base_module
from fedrs.strategies.accounting import messages_bytes

pytestmark = pytest.mark.usefixtures("task_identity")


class Clients:
    """Odd nodes hold S1, even nodes S2; a client returns 2 x what it received + its node id
    for its codec and the head, so the result depends on the order of the turns."""

    def __init__(
        self,
        failing: int | None = None,
        hostile: int | None = None,
        ids: dict[int, object] | None = None,
    ) -> None:
        self.received: list[tuple[int, dict[str, np.ndarray]]] = []
        self.failing = failing
        self.hostile = hostile
        self.ids = ids or {}  # what a node answers a query with (its client id)
        self.queried: list[int] = []

    def __call__(self, msg: Message) -> Message | None:
        node = msg.metadata.dst_node_id
        if msg.metadata.message_type == "query":
            self.queried.append(node)
            answer = self.ids.get(node)
            if answer == "error":
                return error_reply(msg)
            if answer == "silent":
                return None
            metrics = MetricRecord({"client-id": answer}) if answer is not None else None
            content = RecordDict({"metrics": metrics} if metrics is not None else {})
            return Message(content, reply_to=msg)
        got = numpy_of(msg.content.array_records["arrays"])
        self.received.append((node, got))
        if node == self.failing:
            return error_reply(msg)
        own = S1 if node % 2 else S2
        arrays = {own: 2 * got[own] + node, HEAD: 2 * got[HEAD] + node}
        if node == self.hostile:
            arrays[own] = arrays[own] * np.nan
        return reply(msg, arrays, 10.0)


def chained(order: list[int], skip: int | None = None) -> dict[str, np.ndarray]:
    """What a chain of the nodes in ``order`` makes of the global model (``skip`` fails)."""
    out = numpy_of(global_model())
    for node in order:
        if node == skip:
            continue
        own = S1 if node % 2 else S2
        out[own] = 2 * out[own] + node
        out[HEAD] = 2 * out[HEAD] + node
    return out


def test_clients_in_turn_each_train_the_previous_clients_model() -> None:
    strategy = ModalityAwareFedAvg(min_train_nodes=3, fraction_evaluate=0.0, cyclic_rounds=1)
    clients = Clients()
    grid = FakeGrid([1, 2, 3], clients)
    result = strategy.start(grid, global_model(), num_rounds=2, timeout=10)

    # round 1: one message at a time, each carrying what the previous reply left; then the
    # (empty) evaluation and round 2
    sends = [len(sent) for sent in grid.sent if sent]
    assert sends == [1, 1, 1, 3]
    order = [node for node, _ in clients.received[:3]]
    assert sorted(order) == [1, 2, 3]
    for turn in range(1, 3):
        expected = chained(order[:turn])
        received = clients.received[turn][1]
        for key in (S1, S2, HEAD):
            np.testing.assert_allclose(received[key], expected[key])
    after_round_1 = chained(order)
    # round 2 is averaged: every client gets the same model, in one send
    for _, received in clients.received[3:]:
        np.testing.assert_allclose(received[HEAD], after_round_1[HEAD])
    out = numpy_of(result.arrays)
    np.testing.assert_allclose(out[HEAD], 2 * after_round_1[HEAD] + 2, rtol=1e-6)  # (1+2+3)/3
    np.testing.assert_allclose(out[S1], 2 * after_round_1[S1] + 2, rtol=1e-6)  # nodes 1 and 3
    np.testing.assert_allclose(out[S2], 2 * after_round_1[S2] + 2, rtol=1e-6)
    stats = strategy.round_stats[1]
    assert (stats.sampled, stats.clients_ok, stats.clients_failed) == (3, 3, 0)
    assert stats.bytes_down > 0 and stats.bytes_up > 0


@pytest.mark.parametrize("bad", ["failing", "hostile"])
def test_a_failed_turn_is_skipped_and_the_next_client_gets_the_last_good_model(
    bad: str,
) -> None:
    strategy = ModalityAwareFedAvg(min_train_nodes=3, fraction_evaluate=0.0, cyclic_rounds=1)
    clients = Clients(**{bad: 2})
    grid = FakeGrid([1, 2, 3], clients)
    result = strategy.start(grid, global_model(), num_rounds=1, timeout=10)

    order = [node for node, _ in clients.received]
    expected = chained(order, skip=2)
    out = numpy_of(result.arrays)
    for key in (S1, S2, HEAD):
        np.testing.assert_allclose(out[key], expected[key], rtol=1e-6)
        assert np.isfinite(out[key]).all()
    turn = order.index(2)
    if turn + 1 < len(order):  # the client after the failed one got the model before it
        np.testing.assert_allclose(clients.received[turn + 1][1][HEAD], chained(order[:turn])[HEAD])
    stats = strategy.round_stats[1]
    assert (stats.clients_ok, stats.clients_failed) == (2, 1)


@pytest.mark.parametrize("bad", [None, "failing", "hostile"])
def test_each_reply_of_a_round_in_turn_is_checked_once(
    bad: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[int] = []
    read = base_module.read_reply

    def counting(msg: Message, *args: object, **kwargs: object) -> object:
        checked.append(msg.metadata.src_node_id)
        return read(msg, *args, **kwargs)

    monkeypatch.setattr(base_module, "read_reply", counting)
    strategy = ModalityAwareFedAvg(min_train_nodes=3, fraction_evaluate=0.0, cyclic_rounds=1)
    clients = Clients(**({bad: 2} if bad else {}))
    strategy.start(FakeGrid([1, 2, 3], clients), global_model(), num_rounds=2, timeout=10)
    # once in round 1 (in turn) and once in round 2 (averaged): never twice in a round
    assert Counter(checked) == {1: 2, 2: 2, 3: 2}
    failed = 1 if bad else 0
    assert (strategy.round_stats[1].clients_ok, strategy.round_stats[1].clients_failed) == (
        3 - failed,
        failed,
    )


def turn_order(node_ids: list[int], turn_seed: int, rounds: int = 2) -> list[list[int]]:
    """The client ids in the order they trained, round by round, in a federation whose node
    ``node_ids[i]`` holds client ``i`` and whose every round is in turn."""
    ids: dict[int, object] = {node: client for client, node in enumerate(node_ids)}
    clients = Clients(ids=ids)
    strategy = ModalityAwareFedAvg(
        min_train_nodes=len(node_ids),
        fraction_evaluate=0.0,
        cyclic_rounds=rounds,
        turn_seed=turn_seed,
    )
    strategy.start(FakeGrid(node_ids, clients), global_model(), num_rounds=rounds, timeout=10)
    # each node is asked its client id once, before its first turn
    assert sorted(clients.queried) == sorted(node_ids)
    trained = [ids[node] for node, _ in clients.received]
    n = len(node_ids)
    return [trained[r * n : (r + 1) * n] for r in range(rounds)]


def test_a_seeded_order_of_turns_follows_the_client_ids_not_the_node_ids() -> None:
    first = turn_order([11, 52, 33, 4, 75], turn_seed=7)
    # other node ids (as another run of the same federation gets), listed in another order
    again = turn_order([900, 17, 64, 3, 28], turn_seed=7)
    assert first == again
    for order in first:
        assert sorted(order) == [0, 1, 2, 3, 4]
    assert first[0] != first[1]  # a new permutation each round (these seeds: checked)
    others = {tuple(turn_order([11, 52, 33, 4, 75], turn_seed=s)[0]) for s in range(8)}
    assert len(others) > 1  # the seed chooses the order


def test_without_a_turn_seed_no_node_is_queried() -> None:
    clients = Clients(ids={1: 0, 2: 1})
    strategy = ModalityAwareFedAvg(min_train_nodes=2, fraction_evaluate=0.0, cyclic_rounds=1)
    strategy.start(FakeGrid([1, 2], clients), global_model(), num_rounds=1, timeout=10)
    assert clients.queried == [] and len(clients.received) == 2


def test_nodes_that_report_no_client_id_train_last_by_node_id() -> None:
    # node 5 reports id 0, node 9 id 1; the others: an error, no reply, no metrics, NaN
    ids: dict[int, object] = {5: 0, 9: 1, 2: "error", 8: "silent", 4: None, 6: float("nan")}
    clients = Clients(ids=ids)
    strategy = ModalityAwareFedAvg(
        min_train_nodes=6, fraction_evaluate=0.0, cyclic_rounds=1, turn_seed=0
    )
    grid = FakeGrid(list(ids), clients)
    result = strategy.start(grid, global_model(), num_rounds=1, timeout=10)

    order = [node for node, _ in clients.received]
    ranked = [5, 9, 2, 4, 6, 8]  # known ids first, then by node id
    permutation = np.random.default_rng([0, 1, 2]).permutation(6)
    assert order == [ranked[i] for i in permutation]
    out = numpy_of(result.arrays)
    np.testing.assert_allclose(out[HEAD], chained(order)[HEAD], rtol=1e-6)
    # the queries and their answers count in the round's bytes
    stats = strategy.round_stats[1]
    queries, *turns = [sent for sent in grid.sent if sent]
    assert [m.metadata.message_type for m in queries] == ["query"] * 6
    assert stats.bytes_down == messages_bytes(queries) + messages_bytes(
        [m for sent in turns for m in sent]
    )


def test_a_query_reply_that_cannot_be_read_is_no_client_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    measure = base_module.message_bytes

    def failing(msg: Message) -> int:
        if msg.metadata.message_type == "query" and msg.metadata.src_node_id == 3:
            raise RecursionError("a reply nested too deep")
        return measure(msg)

    monkeypatch.setattr(base_module, "message_bytes", failing)
    clients = Clients(ids={3: 0, 5: 1, 7: 2})
    strategy = ModalityAwareFedAvg(
        min_train_nodes=3, fraction_evaluate=0.0, cyclic_rounds=1, turn_seed=0
    )
    strategy.start(FakeGrid([3, 5, 7], clients), global_model(), num_rounds=1, timeout=10)
    order = [node for node, _ in clients.received]
    ranked = [5, 7, 3]  # node 3's answer is unreadable: it goes last
    assert order == [ranked[i] for i in np.random.default_rng([0, 1, 2]).permutation(3)]
    assert strategy.round_stats[1].clients_ok == 3


def test_a_resumed_run_counts_the_rounds_it_already_did() -> None:
    strategy = ModalityAwareFedAvg(min_train_nodes=2, fraction_evaluate=0.0, cyclic_rounds=1)
    strategy.round_offset = 1  # round 1 was done before: this run's round 1 is averaged
    grid = FakeGrid([1, 2], Clients())
    strategy.start(grid, global_model(), num_rounds=1, timeout=10)
    assert [len(sent) for sent in grid.sent if sent] == [2]


def test_an_in_turn_round_needs_start() -> None:
    strategy = ModalityAwareFedAvg(min_train_nodes=2, cyclic_rounds=1)
    messages = list(strategy.configure_train(1, global_model(), ConfigRecord(), FakeGrid([1, 2])))
    replies = [reply(m, {S1: f32(1, 1), HEAD: head(1)}, 1.0) for m in messages]
    with pytest.raises(RuntimeError, match="trained in turn"):
        strategy.aggregate_train(1, replies)


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("fedavgm", {}, "FedAvgM"),
        ("krum", {}, "Krum"),
        ("fedavg", {"update_codec": "entropy"}, "update_codec 'entropy'"),
        ("fedavg", {"dp": {"clipping": "fixed", "side": "server", "num_sampled_clients": 2}}, "dp"),
        ("modality-aware", {"cyclic_rounds": -1}, "cyclic_rounds"),
    ],
)
def test_clients_in_turn_are_refused_where_a_round_is_not_a_mean(
    name: str, options: dict[str, object], match: str
) -> None:
    with pytest.raises(InputError, match=match):
        build_strategy(name, **({"cyclic_rounds": 1} | options))


def test_the_experiment_option_reaches_the_strategy() -> None:
    config = load_config(SMOKE, ["federation.cyclic_rounds=1"])
    strategy = strategy_for(config, 3)
    assert strategy.cyclic_rounds == 1 and strategy.in_turn(1) and not strategy.in_turn(2)
    assert strategy.turn_seed == config.seed
    assert strategy_for(load_config(SMOKE), 3).cyclic_rounds == 0


def test_a_strategy_flag_that_averages_drops_the_files_clients_in_turn() -> None:
    default = REPO / "experiments" / "default.toml"
    drops, notes = drop_replaced_options(default, {"federation.strategy": "fedadam"}, {})
    assert drops["federation.cyclic_rounds"] == 0
    assert any("--strategy fedadam averages every round" in n for n in notes)
    drops, notes = drop_replaced_options(default, {"federation.update_codec": "entropy"}, {})
    assert drops["federation.cyclic_rounds"] == 0
    assert any("--update-codec entropy averages every round" in n for n in notes)
    for kept in ("fedprox", "fedavg", "modality-aware"):
        drops, _ = drop_replaced_options(default, {"federation.strategy": kept}, {})
        assert "federation.cyclic_rounds" not in drops
    # set on purpose: kept, and refused by the strategy with the fix named
    explicit = {"federation.cyclic_rounds": 1}
    drops, _ = drop_replaced_options(default, {"federation.strategy": "krum"}, explicit)
    assert "federation.cyclic_rounds" not in drops
    config = load_config(default, ["federation.strategy='krum'"])
    with pytest.raises(InputError, match=r"federation\.cyclic_rounds = 0"):
        strategy_for(config, 10)
    assert trains_in_turn("fedprox") and not trains_in_turn("fedyogi")
