"""Bjøntegaard deltas on curves whose answer is known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedrs.bjontegaard import FITS, bd_psnr, bd_rate, pchip_integral, pchip_slopes
from fedrs.errors import InputError

RATE = [0.1, 0.2, 0.4, 0.8]
PSNR = [28.0, 31.0, 33.5, 35.0]


@pytest.mark.parametrize("fit", FITS)
def test_the_same_quality_at_fewer_bits_is_that_many_percent(fit: str) -> None:
    """Every point at 80 % of the bits: BD-rate -20 %, and BD-PSNR the PSNR gained there."""
    fewer, more = [0.8 * r for r in RATE], [1.5 * r for r in RATE]
    assert bd_rate(RATE, PSNR, fewer, PSNR, fit=fit) == pytest.approx(-20.0, abs=1e-9)
    assert bd_rate(RATE, PSNR, more, PSNR, fit=fit) == pytest.approx(50.0, abs=1e-9)
    assert bd_psnr(RATE, PSNR, RATE, PSNR, fit=fit) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("fit", FITS)
def test_a_constant_quality_gain_is_that_many_db(fit: str) -> None:
    up, down = [p + 0.5 for p in PSNR], [p - 2.0 for p in PSNR]
    assert bd_psnr(RATE, PSNR, RATE, up, fit=fit) == pytest.approx(0.5, abs=1e-9)
    assert bd_psnr(RATE, PSNR, RATE, down, fit=fit) == pytest.approx(-2.0, abs=1e-9)


@pytest.mark.parametrize("fit", FITS)
def test_straight_lines_in_log_rate(fit: str) -> None:
    """PSNR = a + b ln(rate): scaling the rates by s moves PSNR by -b ln(s) everywhere."""
    b, s = 4.0, 0.7
    rates = np.array([0.05, 0.1, 0.2, 0.4, 0.8])
    psnr = 20.0 + b * np.log(rates)
    faster = rates * s
    assert bd_psnr(rates, psnr, faster, psnr, fit=fit) == pytest.approx(-b * math.log(s), abs=1e-9)
    assert bd_rate(rates, psnr, faster, psnr, fit=fit) == pytest.approx(100 * (s - 1), abs=1e-9)


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
    with pytest.raises(InputError, match="unknown Bjøntegaard fit 'spline'"):
        bd_psnr(RATE, PSNR, RATE, PSNR, fit="spline")


def test_pchip_is_scipys_interpolant_integrated() -> None:
    """Slopes and integrals against ``scipy.interpolate.PchipInterpolator`` (scipy comes with
    mlflow) on random curves of 2 to 7 points, over random sub-ranges."""
    interpolate = pytest.importorskip("scipy.interpolate")
    rng = np.random.default_rng(0)
    for n in (2, 3, 4, 5, 7):
        for _ in range(20):
            x = np.sort(rng.uniform(-3.0, 0.0, n))
            y = rng.normal(28.0, 1.0, n)
            reference = interpolate.PchipInterpolator(x, y)
            np.testing.assert_allclose(pchip_slopes(x, y), reference.derivative()(x), atol=1e-9)
            low, high = np.sort(rng.uniform(x[0], x[-1], 2))
            area = pchip_integral(x, y, float(low), float(high))
            assert area == pytest.approx(float(reference.integrate(low, high)), abs=1e-9)


def test_pchip_keeps_a_flat_noisy_curve_flat_across_a_gap() -> None:
    """The shape of short trainings: PSNR flat within 0.1 dB while λ moves the rate, with a
    gap between the lowest point and the rest; the test codec 1 dB lower in the gap.  The
    interpolant never leaves the range of its neighbours, so BD-PSNR stays within the point
    gaps (-0.9 to -1.1 dB); the least-squares cubic through the five scattered points swings
    in the gap."""
    ref_r, ref_p = [0.20, 0.32, 0.335, 0.35, 0.36], [28.18, 28.27, 28.11, 28.22, 28.25]
    test_r, test_p = [0.24, 0.27, 0.29], [27.11, 27.40, 27.38]
    pchip = bd_psnr(ref_r, ref_p, test_r, test_p, fit="pchip")
    assert -1.2 < pchip < -0.7
    assert bd_psnr(ref_r, ref_p, test_r, test_p) < pchip - 0.3  # the cubic, for contrast
