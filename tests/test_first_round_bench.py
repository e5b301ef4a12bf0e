"""``bench/first_round.py``: the per-modality average it measures, and a run on the smoke
experiment with two settings side by side."""

from __future__ import annotations

import json
from types import ModuleType

import pytest
import torch
from _data import SMOKE, load_bench

from fedrs.config import load_config
from fedrs.pipeline import client_rows, load_run_data


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("first_round")


def test_average_states_weights_each_key_over_the_clients_that_train_it(
    bench: ModuleType,
) -> None:
    init = {
        "s1": torch.zeros(2),
        "s2": torch.zeros(2),
        "shared": torch.zeros(2),
        "count": torch.tensor([7]),
    }
    states = [
        {"s1": torch.ones(2), "s2": torch.full((2,), 5.0), "shared": torch.ones(2)},
        {"s1": torch.full((2,), 9.0), "s2": torch.full((2,), 3.0), "shared": torch.full((2,), 4.0)},
    ]
    trained = [{"s1", "shared"}, {"s2", "shared"}]
    out = bench.average_states(init, states, trained, [1.0, 3.0])
    assert torch.equal(out["s1"], torch.ones(2))  # client 1 does not train s1: not averaged in
    assert torch.equal(out["s2"], torch.full((2,), 3.0))
    assert torch.allclose(out["shared"], torch.full((2,), 0.25 * 1 + 0.75 * 4))
    assert torch.equal(out["count"], init["count"])  # not floating point: kept
    assert out["shared"].dtype == torch.float32


def test_server_step_moves_only_the_codec_convolutions(bench: ModuleType) -> None:
    start = {
        "codecs.s2.g_a.0.weight": torch.zeros(2),
        "codecs.s2.h_s.4.bias": torch.ones(2),
        "codecs.s2.g_a.1.beta": torch.zeros(2),  # GDN
        "codecs.s2.entropy_bottleneck.biases.0": torch.zeros(2),
        "hash_head.hash_mlp.0.weight": torch.zeros(2),
    }
    average = {k: v + 1.0 for k, v in start.items()}
    out = bench.server_step(start, average, 1.5)
    assert torch.equal(out["codecs.s2.g_a.0.weight"], torch.full((2,), 1.5))
    assert torch.equal(out["codecs.s2.h_s.4.bias"], torch.full((2,), 2.5))
    for key in list(start)[2:]:  # averaged plainly
        assert torch.equal(out[key], average[key]), key
    assert bench.server_step(start, average, 1.0) == average


def test_matching_epoch_is_the_first_centralized_epoch_at_or_above(bench: ModuleType) -> None:
    assert bench.matching_epoch(27.0, [26.0, 27.0, 26.5, 28.0]) == 2
    assert bench.matching_epoch(26.9, [26.0, 26.95]) == 2
    assert bench.matching_epoch(25.0, [26.0]) == 1
    assert bench.matching_epoch(29.0, [26.0, 27.0]) is None


@pytest.mark.usefixtures("cache_env")
def test_bench_runs_two_settings_side_by_side(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = ["model.codec_init=torch", "model.codec_init=unit"]
    argv = ["--config", str(SMOKE), "--queries", "8"]
    for setting in settings:
        argv += ["--set", setting]
    assert bench.main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(out["settings"]) == settings
    for result in out["settings"].values():
        assert len(result["clients"]) == 3
        assert len(result["centralized"]) == 1  # the smoke experiment's one local epoch
        for figures in (result["initial"], result["average"], *result["centralized"]):
            for bpp, psnr in figures.values():
                assert bpp > 0 and psnr > 0
    torch_run, unit_run = (out["settings"][s] for s in settings)
    assert torch_run["initial"] != unit_run["initial"]  # the init differs, so does the start


@pytest.mark.usefixtures("cache_env")
def test_bench_more_rounds_gives_the_centralized_run_the_same_passes(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--config", str(SMOKE), "--queries", "8", "--rounds", "2", "--server-lr", "1.5"]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    out = json.loads(printed.strip().splitlines()[-1])
    assert out["rounds"] == 2 and out["server_lr"] == 1.5
    result = out["settings"]["config"]
    assert len(result["rounds"]) == 2 and result["average"] == result["rounds"][0]
    assert len(result["clients"]) == 3  # measured in round 1 only
    assert len(result["centralized"]) == 2 and result["passes"] == 2
    for m, (_, psnr) in result["rounds"][-1].items():
        central = [f[m][1] for f in result["centralized"]]
        assert result["matches"][m] == bench.matching_epoch(psnr, central)
    assert "| average, round 2 |" in printed and "s2: the last average" in printed
    with pytest.raises(SystemExit):
        bench.main([*argv[:4], "--rounds", "0"])


@pytest.mark.usefixtures("cache_env")
def test_bench_in_turn_ends_each_round_with_the_last_clients_model(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--config", str(SMOKE), "--queries", "8", "--in-turn"]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads(printed.strip().splitlines()[-1])["settings"]["config"]
    assert result["in_turn"] is True
    # the clients are listed in their turns: the round's model is the last one's
    assert result["rounds"][0] == result["clients"][-1]["figures"]
    assert result["rounds"][0] != result["clients"][0]["figures"]
    assert sorted(c["client"] for c in result["clients"]) == [0, 1, 2]
    config = load_config(SMOKE)
    data = load_run_data(config.data)
    for entry in result["clients"]:  # each labelled with its own id, whatever its turn
        rows, modalities = client_rows(
            data, config.partition, config.partition.clients, entry["client"]
        )
        assert (entry["patches"], entry["modalities"]) == (len(rows), list(modalities))
    assert "| clients in turn, round 1 |" in printed
    with pytest.raises(SystemExit):
        bench.main([*argv, "--server-lr", "1.5"])
