"""The pure helpers of ``bench/convergence.py``: passes, rate jumps, target verdicts and the
paired modality-aware - FedAvg difference, on hand-made summaries."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from _data import load_bench


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("convergence")


def federation(rounds: int, local_epochs: int, stage1: int, s2: list[float]) -> dict[str, Any]:
    return {
        "rounds": rounds,
        "bytes_up": 2e6,
        "bytes_down": 3e6,
        "config": {"federation": {"local_epochs": local_epochs, "stage1_rounds": stage1}},
        "history": [
            {"round": r + 1, "eval/bpp_s1": 0.3, "eval/bpp_s2": bpp} for r, bpp in enumerate(s2)
        ],
    }


def test_passes_and_jumps(bench: ModuleType) -> None:
    central = {"epochs": 4, "history": []}
    fed = federation(3, 2, 1, [0.9, 0.20, 0.25])
    assert bench.passes(central) == 4.0
    assert bench.passes(fed) == 6.0  # 3 rounds of 2 local epochs
    assert bench.traffic([fed, federation(5, 2, 1, [0.2] * 5)]) == {
        "rounds": 4.0,
        "passes": 8.0,
        "mb": 5.0,
    }
    # after the stage-1 round only: 0.20 -> 0.25, not 0.9 -> 0.20; the worst over the λ values
    jumps = bench.jumps([fed, federation(3, 1, 1, [0.2, 0.2, 0.21])])
    assert jumps["rate_jump_s2"] == pytest.approx(0.25)
    assert jumps["rate_jump_s1"] == pytest.approx(0.0)


def figure(mean: float) -> dict[str, Any]:
    return {"mean": mean, "half_width": None, "n": 1}


def test_verdicts_name_each_target_met_or_not(bench: ModuleType) -> None:
    result = {
        "centralized": {
            "map@20": figure(0.90),
            "map@20_min_k_r": figure(0.80),
            "passes": figure(3),
        },
        "fedavg": {
            "map@20": figure(0.895),  # 99.4 %: met
            "map@20_min_k_r": figure(0.70),  # 87.5 %: not met
            "bd_psnr_s1": figure(-0.4),
            "bd_psnr_s2": None,
            "passes": figure(10),  # 3.33x: not met
            "rate_jump_s1": figure(0.15),  # at the ceiling: met
            "rate_jump_s2": figure(0.40),
            "per_seed": [{"bd_psnr_s2_why": "the two curves do not overlap"}],
        },
    }
    found = {what: (shown, met) for what, shown, met in bench.verdicts(result, "fedavg")}
    assert found == {
        "mAP@20 >= 99% of centralized": ("99.4%", True),
        "mAP@20 min(k,R) >= 99% of centralized": ("87.5%", False),
        "BD-PSNR S1 >= -0.5 dB": ("-0.40 dB", True),
        "BD-PSNR S2 >= -0.5 dB": ("curves apart", None),
        "passes <= 3x centralized": ("10 vs 3 (3.33x)", False),
        "round-to-round S1 rate jump <= 15%": ("15.0%", True),
        "round-to-round S2 rate jump <= 15%": ("40.0%", False),
    }


def test_paired_difference_over_seeds(bench: ModuleType) -> None:
    per_seed = {
        "modality-aware": [{"map@20": 0.86}, {"map@20": 0.88}, {"map@20": 0.87}],
        "fedavg": [{"map@20": 0.85}, {"map@20": 0.86}, {"map@20": 0.86}],
    }
    diff = bench.paired_difference(per_seed, "modality-aware", "fedavg", "map@20")
    assert diff["n"] == 3
    assert diff["mean"] == pytest.approx(0.04 / 3)
    # differences 0.01, 0.02, 0.01: s = 0.00577, t(0.975, 2) = 4.303
    assert diff["half_width"] == pytest.approx(4.303 * 0.0057735 / 3**0.5, rel=1e-3)
    assert bench.paired_difference(per_seed, "modality-aware", "fedavg", "bd_rate_s1") is None
