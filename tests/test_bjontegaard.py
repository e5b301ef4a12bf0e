"""Bjøntegaard deltas on curves whose answer is known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedrs.bjontegaard import bd_psnr, bd_rate
from fedrs.errors import InputError

RATE = [0.1, 0.2, 0.4, 0.8]
PSNR = [28.0, 31.0, 33.5, 35.0]


def test_the_same_quality_at_fewer_bits_is_that_many_percent() -> None:
    """Every point at 80 % of the bits: BD-rate -20 %, and BD-PSNR the PSNR gained there."""
    assert bd_rate(RATE, PSNR, [0.8 * r for r in RATE], PSNR) == pytest.approx(-20.0, abs=1e-9)
    assert bd_rate(RATE, PSNR, [1.5 * r for r in RATE], PSNR) == pytest.approx(50.0, abs=1e-9)
    assert bd_psnr(RATE, PSNR, RATE, PSNR) == pytest.approx(0.0, abs=1e-12)


def test_a_constant_quality_gain_is_that_many_db() -> None:
    assert bd_psnr(RATE, PSNR, RATE, [p + 0.5 for p in PSNR]) == pytest.approx(0.5, abs=1e-9)
    assert bd_psnr(RATE, PSNR, RATE, [p - 2.0 for p in PSNR]) == pytest.approx(-2.0, abs=1e-9)


def test_straight_lines_in_log_rate() -> None:
    """PSNR = a + b ln(rate): scaling the rates by s moves PSNR by -b ln(s) everywhere."""
    b, s = 4.0, 0.7
    rates = np.array([0.05, 0.1, 0.2, 0.4, 0.8])
    psnr = 20.0 + b * np.log(rates)
    faster = rates * s
    assert bd_psnr(rates, psnr, faster, psnr) == pytest.approx(-b * math.log(s), abs=1e-9)
    assert bd_rate(rates, psnr, faster, psnr) == pytest.approx(100 * (s - 1), abs=1e-9)


def test_matches_numerical_integration_of_the_fitted_curves() -> None:
    """Three points (a parabola each) against a dense trapezoid over the common range."""
    ref_r, ref_p = [0.1, 0.3, 0.9], [26.0, 30.0, 33.0]
    test_r, test_p = [0.12, 0.25, 0.7], [26.5, 29.8, 32.9]
    x = np.log(ref_r), np.log(test_r)
    low, high = max(x[0][0], x[1][0]), min(x[0][-1], x[1][-1])
    grid = np.linspace(low, high, 200_001)
    fits = [np.polyfit(xs, ps, 2) for xs, ps in zip(x, (ref_p, test_p), strict=True)]
    gap = np.polyval(fits[1], grid) - np.polyval(fits[0], grid)
    expected = float(np.sum((gap[1:] + gap[:-1]) / 2 * np.diff(grid)) / (high - low))
    assert bd_psnr(ref_r, ref_p, test_r, test_p) == pytest.approx(expected, abs=1e-8)


def test_curves_that_cannot_be_compared_are_refused() -> None:
    with pytest.raises(InputError, match="do not overlap"):
        bd_psnr([0.1, 0.2], [30.0, 31.0], [0.5, 0.6], [30.0, 31.0])
    with pytest.raises(InputError, match="at least 2 points"):
        bd_rate([0.1], [30.0], RATE, PSNR)
    with pytest.raises(InputError, match="positive"):
        bd_rate([0.0, 0.1], [30.0, 31.0], RATE, PSNR)
    with pytest.raises(InputError, match="repeated"):
        bd_rate([0.1, 0.1], [30.0, 31.0], RATE, PSNR)
