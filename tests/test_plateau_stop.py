"""Runs stop once their validation figure stops improving (``eval.patience``), both sides.

A tolerance no model can beat makes the plateau arrive after ``patience`` stage-2 epochs or
rounds past the first, so where each run stops is known in advance.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _data import SMOKE

from fedrs.centralized import run_centralized
from fedrs.cli import main as cli
from fedrs.config import load_config
from fedrs.train import plateau_for, plateau_value

pytestmark = pytest.mark.usefixtures("cache_env")

NEVER_BETTER = {"eval.patience": 1, "eval.tolerance": 1.0}
"""mAP cannot rise by more than 1.0: the second stage-2 figure ends the run."""


def test_centralized_stage2_stops_at_the_plateau(tmp_path: Path) -> None:
    overrides = NEVER_BETTER | {"train.stage1_epochs": 1, "train.stage2_epochs": 4}
    config = load_config(SMOKE, overrides)
    seen: list[tuple[int, int]] = []
    summary = run_centralized(config, tmp_path, on_epoch=lambda s, e, n, _m: seen.append((s, e)))
    assert seen == [(1, 1), (2, 1), (2, 2)]  # 2 of the 4 stage-2 epochs
    plateau = summary["plateau"]
    assert plateau["reached"] and plateau["stage2_epoch"] == 2 and plateau["best_stage2_epoch"] == 1
    assert plateau["metric"] == "val/map@20"
    stage2 = [h for h in summary["history"] if h["stage"] == 2.0]
    assert all(0 <= h["val/map@20"] <= 1 for h in stage2)
    assert stage2[-1]["val/plateau"] == 1.0
    assert json.loads((tmp_path / "summary.json").read_text())["plateau"] == plateau


def test_no_patience_means_no_rule_and_no_validation(tmp_path: Path) -> None:
    config = load_config(SMOKE)
    assert plateau_for(config) is None
    assert plateau_value({"psnr_all": 30.0}, "psnr") == 30.0
    summary = run_centralized(config, tmp_path)
    assert summary["plateau"] is None
    assert not any("val/map@20" in h for h in summary["history"])


@pytest.mark.slow
def test_federation_stops_at_the_plateau(tmp_path: Path) -> None:
    out = tmp_path / "run"
    sets = [f"{k}={v}" for k, v in NEVER_BETTER.items()]
    args = ["simulate", "--config", str(SMOKE), "--out", str(out), "--rounds", "5"]
    for item in sets:
        args += ["--set", item]
    assert cli(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    # round 1 is stage 1; stage-2 rounds 2 (the first figure) and 3 (no gain of 1.0): stop
    assert summary["rounds"] == 3
    assert [h["round"] for h in summary["history"]] == [1, 2, 3]
    plateau = summary["plateau"]
    assert plateau["reached"] and plateau["stage2_round"] == 2 and plateau["best_stage2_round"] == 1
    assert "val/map@20" not in summary["history"][0]  # stage 1 is not watched
    assert summary["history"][-1]["val/plateau"] == 1.0
