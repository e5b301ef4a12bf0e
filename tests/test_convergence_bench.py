"""The pure helpers of ``bench/convergence.py``: passes, rate jumps, target verdicts and the
paired modality-aware - FedAvg difference, on hand-made summaries; and its main, on run folders
already there, with centralized-only λ points (``--central-lambdas``)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from _data import load_bench

from fedrs.bjontegaard import bd_psnr


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


def write_summary(folder: Path, summary: dict[str, Any]) -> None:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")


def run_summary(bpp: float, psnr: float, map20: float, **extra: Any) -> dict[str, Any]:
    return {
        "bpp": {"s1": bpp, "s2": bpp},
        "psnr": {"s1": psnr, "s2": psnr},
        "map@20": map20,
        "map@20_min_k_r": map20 - 0.1,
        "map@20_random": 0.5,
        "map@20_min_k_r_random": 0.3,
        **extra,
    }


def test_central_lambdas_extend_only_the_centralized_curve(
    bench: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The federation sits at lower rates than the centralized runs at its own λ values: no
    overlap, no delta; a centralized point at a further λ reaching down to those rates defines
    one (over the overlap only), and that point is run without the federations (``fedrs compare
    --strategies ""``) and kept out of the centralized run's mAP."""
    fed = {"rounds": 3, "bytes_up": 1e6, "bytes_down": 1e6, "history": []}
    points = {  # λ: (centralized bpp, PSNR, mAP), (federated bpp, PSNR)
        25.0: ((0.30, 28.0, 0.90), (0.20, 27.0)),
        100.0: ((0.32, 28.2, 0.90), (0.22, 27.2)),
        400.0: ((0.34, 28.4, 0.90), (0.24, 27.4)),
    }
    for lmbda, ((c_bpp, c_psnr, c_map), (f_bpp, f_psnr)) in points.items():
        base = tmp_path / f"lambda-{lmbda:g}"
        write_summary(base / "centralized", run_summary(c_bpp, c_psnr, c_map, epochs=3))
        write_summary(base / "fedavg", run_summary(f_bpp, f_psnr, 0.85, **fed))
    # down at the federation's lowest rate, above it there; its mAP far off (not averaged in)
    write_summary(tmp_path / "lambda-6" / "centralized", run_summary(0.20, 27.8, 0.10, epochs=3))
    calls: list[list[str]] = []

    def fake_cli(argv: list[str]) -> int:
        calls.append(argv)
        return 0

    monkeypatch.setattr(bench, "cli", fake_cli)

    def result(*more: str) -> dict[str, Any]:
        argv = ["convergence.py", "--lambdas", "25,100,400", "--strategies", "fedavg"]
        monkeypatch.setattr("sys.argv", [*argv, "--out", str(tmp_path), *more])
        bench.main()
        line: dict[str, Any] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        return line

    federated = ([0.20, 0.22, 0.24], [27.0, 27.2, 27.4])
    without = result()
    row = without["runs"]["fedavg"]["per_seed"][0]
    assert row["bd_psnr_s2"] is None and "do not overlap" in row["bd_psnr_s2_why"]
    assert all("--strategies" in a and a[a.index("--strategies") + 1] == "fedavg" for a in calls)

    calls.clear()
    found = result("--central-lambdas", "6,100")  # 100 is run by both sides already
    row = found["runs"]["fedavg"]["per_seed"][0]
    assert found["central_lambdas"] == [6.0]
    # the centralized curve through all four points, the federation's through its three
    expected = bd_psnr([0.20, 0.30, 0.32, 0.34], [27.8, 28.0, 28.2, 28.4], *federated, fit="pchip")
    assert row["bd_psnr_s2"] == pytest.approx(expected) and expected < 0
    assert found["fit"] == "pchip"  # the default
    assert found["runs"]["centralized"]["map@20"]["mean"] == pytest.approx(0.90)
    only = [a for a in calls if a[a.index("--strategies") + 1] == ""]
    assert len(only) == 1 and "loss.lmbda=6.0" in only[0]
    cubic = result("--central-lambdas", "6", "--fit", "cubic")["runs"]["fedavg"]["per_seed"][0]
    expected = bd_psnr([0.20, 0.30, 0.32, 0.34], [27.8, 28.0, 28.2, 28.4], *federated)
    assert cubic["bd_psnr_s2"] == pytest.approx(expected)
