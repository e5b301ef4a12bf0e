"""Intervals over seeds, rounds to a target, and plateaus, on hand-computed cases."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from fedrs.convergence import (
    Plateau,
    bootstrap_interval,
    first_reaching,
    mean_interval,
    paired_differences,
    plateau_round,
    rate_jump,
    t_quantile,
    target_labels,
    targets,
)
from fedrs.errors import InputError

MB = 1_000_000


def central_summary(**changes: Any) -> dict[str, Any]:
    """A centralized run's summary: final figures only matter to the targets."""
    return {
        "map@20": 0.80,
        "map@20_random": 0.50,
        "map@20_min_k_r": 0.60,
        "map@20_min_k_r_random": 0.30,
        "bpp": {"s1": 0.50, "s2": 0.40},
        "psnr": {"s1": 25.0, "s2": 24.0},
        "wall_s": 100.0,
        "epochs": 6,
        "train_patches": 100,
        "history": [{"step": float(e), "train/loss": 10.0 / e} for e in range(1, 7)],
    } | changes


def federation_summary(
    maps: tuple[float, float, float] = (0.70, 0.77, 0.79),
    bytes_up: int = 10 * MB,
    local_epochs: int = 2,
) -> dict[str, Any]:
    """Three rounds of a federation; each round sends ``bytes_up`` up and 20 MB down."""
    min_k_r = (0.50, 0.58, 0.595)
    psnr_s1, bpp_s1 = (23.0, 24.6, 24.8), (0.60, 0.48, 0.45)
    # S2 within 0.5 dB from round 2 on, but at more bits than centralized until round 3
    psnr_s2, bpp_s2 = (22.0, 23.6, 23.7), (0.30, 0.45, 0.38)
    history = [
        {
            "round": r + 1,
            "eval/map@20": maps[r],
            "eval/map@20_random": 0.50,
            "eval/map@20_min_k_r": min_k_r[r],
            "eval/map@20_min_k_r_random": 0.30,
            "eval/bpp_s1": bpp_s1[r],
            "eval/bpp_s2": bpp_s2[r],
            "eval/psnr_s1": psnr_s1[r],
            "eval/psnr_s2": psnr_s2[r],
            "comm/bytes_up": float(bytes_up),
            "comm/bytes_down": float(20 * MB),
            "comm/bytes_down_eval": float(5 * MB),
        }
        for r in range(3)
    ]
    last = history[-1]
    return {
        "map@20": last["eval/map@20"],
        "map@20_random": 0.50,
        "map@20_min_k_r": last["eval/map@20_min_k_r"],
        "map@20_min_k_r_random": 0.30,
        "bpp": {"s1": last["eval/bpp_s1"], "s2": last["eval/bpp_s2"]},
        "psnr": {"s1": last["eval/psnr_s1"], "s2": last["eval/psnr_s2"]},
        "wall_s": 50.0,
        "rounds": 3,
        "clients_ok": 9,
        "clients_failed": 0,
        "bytes_up": 3 * bytes_up,
        "bytes_down": 3 * 20 * MB,
        "history": history,
        "config": {"seed": 0, "federation": {"rounds": 3, "local_epochs": local_epochs}},
    }


# -- intervals ---------------------------------------------------------------------------------


def test_t_interval_of_one_two_three() -> None:
    mean, half = mean_interval([1, 2, 3])
    # t_{0.975, 2} = 4.3027, s = 1: 4.3027 / sqrt(3)
    assert mean == 2.0
    assert half == pytest.approx(2.4842, abs=1e-4)
    assert half == pytest.approx(t_quantile(0.95, 2) / math.sqrt(3), rel=1e-12)


@pytest.mark.parametrize(
    ("confidence", "df", "t"),
    [
        (0.95, 1, 12.7062),
        (0.95, 2, 4.3027),
        (0.95, 3, 3.1824),
        (0.95, 5, 2.5706),
        (0.95, 10, 2.2281),
        (0.95, 30, 2.0423),
        (0.95, 100, 1.9840),
        (0.99, 5, 4.0321),
        (0.90, 4, 2.1318),
    ],
)
def test_t_quantiles_match_the_printed_table(confidence: float, df: int, t: float) -> None:
    assert t_quantile(confidence, df) == pytest.approx(t, abs=1e-4)


def test_t_quantiles_tend_to_the_normal() -> None:
    assert t_quantile(0.95, 5000) == pytest.approx(1.95996, abs=1e-3)


def test_one_value_has_no_interval_and_bad_input_is_refused() -> None:
    assert mean_interval([0.8]) == (0.8, None)
    assert mean_interval([0.5, 0.5, 0.5]) == (0.5, 0.0)
    with pytest.raises(InputError):
        mean_interval([])
    with pytest.raises(InputError):
        mean_interval([1.0, float("nan")])
    with pytest.raises(InputError):
        mean_interval([1.0, 2.0], confidence=1.5)
    with pytest.raises(InputError):
        t_quantile(0.95, 0)


# -- first round reaching a target ----------------------------------------------------------------


def per_query_aps(n: int, seed: int = 0) -> np.ndarray:
    """``n`` per-query APs shaped like an evaluation's: many near 1, some 0, the rest spread."""
    rng = np.random.default_rng(seed)
    aps = rng.beta(2.0, 1.0, size=n)
    aps[rng.random(n) < 0.1] = 0.0  # queries with no relevant item retrieved
    return aps


def test_bootstrap_interval_holds_the_mean_and_matches_the_normal_width() -> None:
    aps = per_query_aps(800)
    low, high = bootstrap_interval(aps, resamples=1000, seed=3)
    assert low < aps.mean() < high
    # about mean +- 1.96 s / sqrt(n) for a mean of many values
    expected = 2 * 1.96 * aps.std(ddof=1) / math.sqrt(len(aps))
    assert high - low == pytest.approx(expected, rel=0.15)
    # a wider confidence gives a wider interval around the same resamples
    wide = bootstrap_interval(aps, 0.99, resamples=1000, seed=3)
    assert wide[0] < low and high < wide[1]


def test_bootstrap_interval_shrinks_as_one_over_root_n() -> None:
    widths = {}
    for n in (250, 1000, 4000):
        low, high = bootstrap_interval(per_query_aps(n, seed=n), resamples=1000, seed=0)
        widths[n] = high - low
    # 4 x the queries, half the width (within the resampling and sampling noise)
    assert widths[1000] / widths[250] == pytest.approx(0.5, abs=0.1)
    assert widths[4000] / widths[1000] == pytest.approx(0.5, abs=0.1)


def test_bootstrap_interval_is_deterministic_for_a_seed() -> None:
    aps = per_query_aps(300)
    first = bootstrap_interval(aps, resamples=500, seed=7)
    assert bootstrap_interval(list(aps), resamples=500, seed=7) == first
    assert bootstrap_interval(aps, resamples=500, seed=8) != first
    # resamples drawn a block at a time: many queries, several blocks, still one answer
    many = per_query_aps(20_000)
    assert bootstrap_interval(many, resamples=600, seed=1) == bootstrap_interval(
        many, resamples=600, seed=1
    )


def test_bootstrap_interval_of_one_query_or_equal_values_has_zero_width() -> None:
    assert bootstrap_interval([0.7]) == (0.7, 0.7)
    assert bootstrap_interval(np.full(50, 0.25), resamples=200) == (0.25, 0.25)
    low, high = bootstrap_interval([0.0, 1.0], resamples=2000, seed=0)
    assert (low, high) == (0.0, 1.0)  # both all-0 and all-1 resamples occur


@pytest.mark.parametrize(
    ("values", "options", "message"),
    [
        ([], {}, "at least one"),
        ([0.5, math.nan], {}, "finite"),
        ([0.5], {"confidence": 1.0}, "confidence"),
        ([0.5], {"resamples": 0}, "resamples"),
    ],
)
def test_bootstrap_interval_refuses_bad_input(
    values: list[float], options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        bootstrap_interval(values, **options)


def test_first_reaching_counts_rounds_passes_and_bytes() -> None:
    history = federation_summary()["history"]
    found = first_reaching(history, "eval/map@20", 0.76, local_epochs=2)
    assert found == {
        "round": 2,
        "passes": 4,
        "bytes_up": 20 * MB,
        "bytes_down": 40 * MB,  # the evaluation broadcasts are not counted
        "bytes": 60 * MB,
        "value": 0.77,
    }
    assert first_reaching(history, "eval/map@20", 0.70)["round"] == 1  # type: ignore[index]
    assert first_reaching(history, "eval/map@20", 0.80) is None
    assert first_reaching(history, "eval/not-logged", 0.0) is None
    # lower is better: the first round at 0.45 bpp or less
    found = first_reaching(history, "eval/bpp_s1", 0.45, higher_is_better=False)
    assert found is not None and (found["round"], found["passes"]) == (3, 3)


def test_first_reaching_skips_rounds_without_the_figure() -> None:
    history = [
        {"comm/bytes_up": 1.0, "comm/bytes_down": 2.0},  # no evaluation this round
        {"eval/map@20": float("nan"), "comm/bytes_up": 1.0, "comm/bytes_down": 2.0},
        {"eval/map@20": 0.9, "comm/bytes_up": 1.0, "comm/bytes_down": 2.0},
    ]
    # no "round" entries: the position, from 1
    assert first_reaching(history, "eval/map@20", 0.5) == {
        "round": 3,
        "passes": 3,
        "bytes_up": 3,
        "bytes_down": 6,
        "bytes": 9,
        "value": 0.9,
    }
    with pytest.raises(InputError):
        first_reaching(history, "eval/map@20", 0.5, local_epochs=0)


def test_rate_jump_after_the_warm_up() -> None:
    """The largest |bpp[r+1] / bpp[r] - 1| over consecutive rounds past ``after_round``."""
    history = [
        {"round": 1, "eval/bpp_s2": 0.50},  # stage 1: another loss, left out below
        {"round": 2, "eval/bpp_s2": 0.10},
        {"round": 3, "eval/bpp_s2": 0.12},
        {"round": 4, "eval/bpp_s2": 0.09},
    ]
    assert rate_jump(history, "s2") == pytest.approx(0.8)  # 0.50 -> 0.10
    assert rate_jump(history, "s2", after_round=1) == pytest.approx(0.25)  # 0.12 -> 0.09
    assert rate_jump(history, "s2", after_round=3) is None  # one round left: no pair
    assert rate_jump(history, "s1") is None


def test_rate_jump_pairs_only_consecutive_rounds_with_a_rate() -> None:
    history = [
        {"eval/bpp_s1": 0.2},
        {"eval/bpp_s1": float("nan")},  # breaks the pair: 0.2 -> 0.4 is not a jump
        {"eval/bpp_s1": 0.4},
        {"eval/bpp_s1": 0.42},
        {"eval/bpp_s1": 0.0},  # no rate: not a jump to or from it
        {"eval/bpp_s1": 0.84},
    ]
    assert rate_jump(history, "s1") == pytest.approx(0.05)


def test_targets_of_a_federation_against_the_centralized_run() -> None:
    found = targets(central_summary(), federation_summary())
    assert list(found) == target_labels()
    rounds = {label: None if t is None else t["round"] for label, t in found.items()}
    assert rounds == {
        "map@20 95%": 2,  # 0.77 >= 0.76
        "map@20 99%": None,  # 0.79 < 0.792
        "map@20_min_k_r 95%": 2,  # 0.58 >= 0.57
        "map@20_min_k_r 99%": 3,  # 0.595 >= 0.594
        "psnr_s1 0.5 dB": 2,  # 24.6 >= 24.5 at 0.48 <= 0.50 bpp
        "psnr_s2 0.5 dB": 3,  # round 2 within 0.5 dB but at 0.45 > 0.40 bpp
    }
    assert found["map@20 95%"] == {
        "round": 2,
        "passes": 4,  # 2 rounds x 2 local epochs
        "bytes_up": 20 * MB,
        "bytes_down": 40 * MB,
        "bytes": 60 * MB,
        "value": 0.77,
        "target": pytest.approx(0.76),
    }
    s2 = found["psnr_s2 0.5 dB"]
    assert s2 is not None
    assert (s2["value"], s2["bpp"], s2["target"], s2["bpp_max"]) == (23.7, 0.38, 23.5, 0.40)
    assert (s2["passes"], s2["bytes"]) == (6, 90 * MB)


def test_targets_without_the_figures_are_none() -> None:
    # an older centralized run without the min(k, R) convention, a federation without history
    old = {k: v for k, v in central_summary().items() if "min_k_r" not in k}
    found = targets(old, federation_summary())
    assert found["map@20_min_k_r 95%"] is None and found["map@20 95%"] is not None
    assert all(t is None for t in targets(central_summary(), {"map@20": 0.9}).values())
    # passes with one local epoch where the config does not say
    summary = federation_summary()
    del summary["config"]
    assert targets(central_summary(), summary)["map@20 95%"]["passes"] == 2  # type: ignore[index]


# -- plateau ------------------------------------------------------------------------------------


def test_plateau_after_patience_rounds_without_improvement() -> None:
    assert plateau_round([0.50, 0.60, 0.605, 0.606], patience=2, tolerance=0.01) == 4
    assert plateau_round([0.50, 0.60, 0.605, 0.606], patience=3, tolerance=0.01) is None
    # without tolerance any gain is an improvement
    assert plateau_round([0.50, 0.60, 0.605, 0.606], patience=2) is None
    assert plateau_round([0.5, 0.5, 0.5], patience=2) == 3
    assert plateau_round([], patience=1) is None


def test_plateau_measures_small_gains_from_the_last_improvement() -> None:
    # each step is below the tolerance, but 0.512 is 0.012 above the best (0.50)
    values = [0.50, 0.504, 0.508, 0.512, 0.516]
    assert plateau_round(values, patience=2, tolerance=0.01) == 3
    assert plateau_round(values, patience=3, tolerance=0.01) is None
    plateau = Plateau(patience=3, tolerance=0.01)
    assert [plateau.update(v) for v in values] == [False] * 5
    assert (plateau.best, plateau.best_round, plateau.stale) == (0.512, 4, 1)


def test_plateau_of_a_loss_and_of_missing_values() -> None:
    losses = [1.0, 0.8, 0.79, 0.85, 0.7]
    assert plateau_round(losses, patience=2, tolerance=0.05, higher_is_better=False) == 4
    assert plateau_round(losses, patience=2, tolerance=0.05) == 3  # read as a score
    nan = float("nan")
    assert plateau_round([nan, nan], patience=2) == 2
    assert plateau_round([0.5, nan, 0.7, nan], patience=2) is None


def test_plateau_keeps_the_round_it_was_reached() -> None:
    plateau = Plateau(patience=1, tolerance=0.0)
    assert [plateau.update(v) for v in (0.5, 0.4, 0.9)] == [False, True, True]
    assert (plateau.round, plateau.best_round, plateau.best) == (2, 3, 0.9)
    with pytest.raises(InputError):
        Plateau(patience=0)
    with pytest.raises(InputError):
        Plateau(patience=2, tolerance=-0.1)


def test_paired_differences_seed_by_seed() -> None:
    """first - second over the seeds both report, with the t interval of the differences."""
    keys = ("mAP@20", "PSNR S1", "bpp S2")
    first = {0: {"mAP@20": 3.0, "PSNR S1": 1.0}, 1: {"mAP@20": 4.0}, 2: {"mAP@20": 5.0}, 3: {}}
    second = {0: {"mAP@20": 2.0, "PSNR S1": 0.5}, 1: {"mAP@20": 2.0}, 2: {"mAP@20": 2.0}}
    found = paired_differences(first, second, keys)
    assert found["seeds"] == [0, 1, 2]  # seed 3 only in the first run
    # differences 1, 2, 3: mean 2, s = 1, t(0.975, 2) = 4.3027, / sqrt(3)
    assert found["mean"]["mAP@20"] == 2.0
    assert found["half_width"]["mAP@20"] == pytest.approx(2.4842, abs=1e-4)
    assert found["clear"]["mAP@20"] is False  # 2 - 2.48 < 0
    # one seed has both: a difference without an interval, never called clear
    assert found["mean"]["PSNR S1"] == 0.5 and found["half_width"]["PSNR S1"] is None
    assert found["clear"]["PSNR S1"] is False
    # a figure neither run reports
    assert found["mean"]["bpp S2"] is None and found["half_width"]["bpp S2"] is None
    assert found["n"] == {"mAP@20": 3, "PSNR S1": 1, "bpp S2": 0}
    # differences 0.01, 0.011, 0.009: clear of zero although the runs' own spreads overlap
    tight = paired_differences(
        {0: {"mAP@20": 0.8}, 1: {"mAP@20": 0.9}, 2: {"mAP@20": 0.7}},
        {0: {"mAP@20": 0.79}, 1: {"mAP@20": 0.889}, 2: {"mAP@20": 0.691}},
        keys,
    )
    assert tight["mean"]["mAP@20"] == pytest.approx(0.01)
    assert tight["clear"]["mAP@20"] is True
