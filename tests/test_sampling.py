"""Seeded sampling (``sample_seed``): with ``fraction_train`` below 1 a round samples the same
clients at the same seed, whatever node ids the federation assigned."""

from __future__ import annotations

import random

import pytest
from _data import SMOKE
from test_cyclic import Clients
from test_strategies import FakeGrid, global_model

from fedrs.config import load_config
from fedrs.errors import InputError
from fedrs.server_strategy import strategy_for
from fedrs.strategies import ModalityAwareFedAvg, build_strategy
from fedrs.strategies.accounting import messages_bytes

pytestmark = pytest.mark.usefixtures("task_identity")


def sampled(
    node_ids: list[int], sample_seed: int | None, rounds: int = 3, name: str | None = None
) -> list[list[int]]:
    """The client ids each round trained, in a federation of ``len(node_ids)`` nodes (node
    ``node_ids[i]`` holds client ``i``) that samples half of them a round."""
    ids: dict[int, object] = {node: client for client, node in enumerate(node_ids)}
    clients = Clients(ids=ids)
    options = {"fraction_train": 0.5, "min_train_nodes": 1, "fraction_evaluate": 0.0}
    if name is None:
        strategy = ModalityAwareFedAvg(**options, sample_seed=sample_seed)
    else:
        strategy = build_strategy(name, **options, sample_seed=sample_seed, partial_replies=True)
    strategy.start(FakeGrid(node_ids, clients), global_model(), num_rounds=rounds, timeout=10)
    if sample_seed is not None:  # each node is asked its client id once
        assert sorted(clients.queried) == sorted(node_ids)
    trained = [ids[node] for node, _ in clients.received]
    size = len(node_ids) // 2
    return [sorted(trained[r * size : (r + 1) * size]) for r in range(rounds)]


@pytest.mark.parametrize("name", [None, "fedavg", "fedadam"])
def test_a_seeded_sample_follows_the_client_ids_not_the_node_ids(name: str | None) -> None:
    first = sampled([11, 52, 33, 4, 75, 60], sample_seed=3, name=name)
    # other node ids (as another run of the same federation gets), listed in another order
    again = sampled([900, 17, 64, 3, 28, 5], sample_seed=3, name=name)
    assert first == again
    assert all(len(set(clients)) == 3 for clients in first)
    assert len({tuple(clients) for clients in first}) > 1  # a new draw each round (checked)
    others = {tuple(sampled([11, 52, 33, 4, 75, 60], sample_seed=s)[0]) for s in range(8)}
    assert len(others) > 1  # the seed chooses the clients


def test_seeded_sampling_leaves_pythons_random_as_it_was() -> None:
    random.seed(1234)
    expected = [random.random() for _ in range(3)]
    random.seed(1234)
    sampled([1, 2, 3, 4], sample_seed=0)
    assert [random.random() for _ in range(3)] == expected


def test_without_a_sample_seed_no_node_is_queried() -> None:
    clients = Clients(ids={1: 0, 2: 1, 3: 2, 4: 3})
    strategy = ModalityAwareFedAvg(fraction_train=0.5, min_train_nodes=1, fraction_evaluate=0.0)
    strategy.start(FakeGrid([1, 2, 3, 4], clients), global_model(), num_rounds=2, timeout=10)
    assert clients.queried == [] and len(clients.received) == 4


def test_the_queries_count_in_the_first_rounds_bytes() -> None:
    clients = Clients(ids={1: 0, 2: 1, 3: 2, 4: 3})
    strategy = ModalityAwareFedAvg(
        fraction_train=0.5, min_train_nodes=1, fraction_evaluate=0.0, sample_seed=0
    )
    grid = FakeGrid([1, 2, 3, 4], clients)
    strategy.start(grid, global_model(), num_rounds=2, timeout=10)
    queries, first, second = [sent for sent in grid.sent if sent]
    assert [m.metadata.message_type for m in queries] == ["query"] * 4
    assert strategy.round_stats[1].bytes_down == messages_bytes(queries) + messages_bytes(first)
    assert strategy.round_stats[2].bytes_down == messages_bytes(second)


def test_strategy_for_seeds_the_sample_below_a_fraction_of_one() -> None:
    config = load_config(SMOKE, ["federation.fraction_train=0.5", "seed=5"])
    assert strategy_for(config, 4).sample_seed == 5
    assert strategy_for(load_config(SMOKE), 4).sample_seed is None


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True])
def test_a_bad_sample_seed_is_refused(bad: object) -> None:
    with pytest.raises(InputError, match="sample_seed"):
        ModalityAwareFedAvg(sample_seed=bad)  # type: ignore[arg-type]
