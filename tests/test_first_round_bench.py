"""``bench/first_round.py``: the per-modality average it measures, and a run on the smoke
experiment with two settings side by side."""

from __future__ import annotations

import json
from types import ModuleType

import pytest
import torch
from _data import SMOKE, load_bench


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
