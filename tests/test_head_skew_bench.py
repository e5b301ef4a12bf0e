"""``bench/head_skew.py``: the label-skew figure, the head average and a run on the smoke
experiment, centralized and federated side by side."""

from __future__ import annotations

import json
from types import ModuleType

import numpy as np
import pytest
import torch
from _data import SMOKE, load_bench

from fedrs.config import load_config


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("head_skew")


def test_label_skew_is_zero_for_like_clients_and_a_half_for_disjoint_ones(
    bench: ModuleType,
) -> None:
    like = np.array([[1, 0, 1], [0, 1, 0]])
    assert bench.label_skew([like, np.concatenate([like, like])]) == pytest.approx(0.0)
    only_first = np.array([[1, 0]] * 3)
    only_second = np.array([[0, 1]] * 3)
    # the whole set holds both classes half and half: each client is 0.5 away from it
    assert bench.label_skew([only_first, only_second]) == pytest.approx(0.5)
    # weighted by rows: the large client like the whole, the small one not
    big = np.array([[1, 0]] * 8 + [[0, 1]] * 2)
    small = np.array([[0, 1]] * 10)
    whole = np.array([8, 12]) / 20
    expected = (
        0.5 * 0.5 * np.abs([0.8 - whole[0], 0.2 - whole[1]]).sum()
        + 0.5 * 0.5 * np.abs([0.0 - whole[0], 1.0 - whole[1]]).sum()
    )
    assert bench.label_skew([big, small]) == pytest.approx(expected)
    with pytest.raises(ValueError, match="no rows"):
        bench.label_skew([np.zeros((0, 2))])


def test_average_heads_averages_an_encoder_over_the_clients_holding_its_modality(
    bench: ModuleType,
) -> None:
    states = [
        {
            "encoders.s1.0.weight": torch.ones(2),
            "encoders.s2.0.weight": torch.full((2,), 5.0),
            "hash_mlp.0.weight": torch.ones(2),
            "count": torch.tensor([3]),
        },
        {
            "encoders.s1.0.weight": torch.full((2,), 9.0),
            "encoders.s2.0.weight": torch.full((2,), 3.0),
            "hash_mlp.0.weight": torch.full((2,), 4.0),
            "count": torch.tensor([8]),
        },
    ]
    out = bench.average_heads(states, [("s1",), ("s1", "s2")], [1.0, 3.0])
    assert torch.allclose(out["encoders.s1.0.weight"], torch.full((2,), 0.25 + 0.75 * 9))
    assert torch.equal(out["encoders.s2.0.weight"], torch.full((2,), 3.0))  # client 0: no S2
    assert torch.allclose(out["hash_mlp.0.weight"], torch.full((2,), 0.25 + 0.75 * 4))
    assert torch.equal(out["count"], torch.tensor([3]))  # not floating point: the first state's
    assert out["hash_mlp.0.weight"].dtype == torch.float32


@pytest.mark.usefixtures("cache_env")
def test_bench_trains_both_sides_and_reads_them_at_their_best_validation_step(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--config", str(SMOKE), "--partitions", "iid,country", "--rounds", "2"]
    argv += ["--epochs", "2", "--head-epochs", "2"]
    assert bench.main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    found = out["seeds"]["0"]
    assert set(found) == {"centralized", "iid, 2 head epochs", "country, 2 head epochs"}
    for run in found.values():
        assert len(run["curve"]) == 2
        best = run["curve"][run["best_step"] - 1]
        assert run["best"] == best["test"]
        assert best["val"][0] == max(step["val"][0] for step in run["curve"])
        assert run["last"] == run["curve"][-1]["test"]
        for top, min_k_r in (run["best"], run["last"]):
            assert 0.0 < top <= 1.0 and 0.0 < min_k_r <= 1.0
    iid, country = found["iid, 2 head epochs"], found["country, 2 head epochs"]
    assert sum(iid["clients"]) == sum(country["clients"])  # the same rows, split otherwise
    assert country["label_skew"] > iid["label_skew"]  # countries differ in land cover


def test_in_turn_round_trains_one_head_through_every_client_in_a_seeded_order(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []

    def fit(head: torch.nn.Module, data: float, config: object, **kwargs: object) -> None:
        seen.append(int(data))
        with torch.no_grad():  # order-dependent: the chain's result tells the order apart
            head.weight.mul_(2).add_(data)

    monkeypatch.setattr(bench, "fit_hash_head", fit)
    config = load_config(SMOKE)
    clients = [(float(i), ("s1",)) for i in range(5)]
    head = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(head.weight)
    order = bench.in_turn_round(head, clients, config, 1, 3)
    assert sorted(order) == list(range(5)) and seen == order
    expected = 0.0
    for client in order:
        expected = 2 * expected + client  # each client from the head the previous one left
    assert head.weight.item() == expected
    again = torch.nn.Linear(1, 1, bias=False)
    assert bench.in_turn_round(again, clients, config, 1, 3) == order  # seeded by (seed, round)
    others = {tuple(bench.in_turn_round(again, clients, config, r, 3)) for r in range(2, 6)}
    assert others - {tuple(order)}  # a new order in later rounds


@pytest.mark.usefixtures("cache_env")
def test_bench_in_turn_reports_its_mode_and_a_curve_a_round(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--config", str(SMOKE), "--partitions", "country", "--rounds", "2", "--in-turn"]
    argv += ["--epochs", "1", "--head-epochs", "1"]
    assert bench.main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["in_turn"] is True
    run = out["seeds"]["0"]["country, 1 head epochs"]
    assert len(run["curve"]) == 2
    for top, min_k_r in (run["best"], run["last"]):
        assert 0.0 < top <= 1.0 and 0.0 < min_k_r <= 1.0
