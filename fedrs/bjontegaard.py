"""Bjøntegaard deltas: the average gap between two rate–distortion curves.

Two codecs measured at a few operating points (bits per pixel, PSNR) are compared by fitting
each curve with a polynomial and integrating the difference over the range both cover
(G. Bjøntegaard, "Calculation of average PSNR differences between RD-curves", VCEG-M33, 2001):

* **BD-rate**: log-rate as a polynomial of PSNR, integrated over the common PSNR range; the
  mean log-rate difference ``d`` is reported as ``100 * (exp(d) - 1)`` percent: the extra bits
  the test codec spends for the same quality (negative: it saves bits);
* **BD-PSNR**: PSNR as a polynomial of log-rate, integrated over the common log-rate range:
  the quality the test codec gains at the same rate, in dB.

The fit is cubic, as in VCEG-M33, where a curve has four points or more, and of degree
``points - 1`` otherwise (three points: the parabola through them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedrs.errors import InputError

__all__ = ["bd_psnr", "bd_rate"]


def _curve(rate: Sequence[float], psnr: Sequence[float], name: str) -> tuple[np.ndarray, ...]:
    r = np.asarray(rate, dtype=np.float64)
    p = np.asarray(psnr, dtype=np.float64)
    if r.ndim != 1 or r.shape != p.shape:
        raise InputError(f"{name}: rates and PSNRs must be two 1-D sequences of one length")
    if len(r) < 2:
        raise InputError(f"{name}: a curve needs at least 2 points, got {len(r)}")
    if not (np.isfinite(r).all() and np.isfinite(p).all()) or (r <= 0).any():
        raise InputError(f"{name}: rates must be positive and PSNRs finite")
    if len(np.unique(r)) != len(r) or len(np.unique(p)) != len(p):
        raise InputError(f"{name}: repeated rates or PSNRs cannot be fitted")
    order = np.argsort(r)
    return np.log(r[order]), p[order]


def _mean_gap(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray) -> float:
    """Mean of ``y2(x) - y1(x)`` over the common ``x`` range, each ``y`` a polynomial fit."""
    low, high = max(x1.min(), x2.min()), min(x1.max(), x2.max())
    if not high > low:
        raise InputError("the two curves do not overlap; no Bjøntegaard delta is defined")
    areas = []
    for x, y in ((x1, y1), (x2, y2)):
        degree = min(3, len(x) - 1)
        integral = np.polyint(np.polyfit(x, y, degree))
        areas.append(np.polyval(integral, high) - np.polyval(integral, low))
    return float((areas[1] - areas[0]) / (high - low))


def bd_rate(
    rate_ref: Sequence[float],
    psnr_ref: Sequence[float],
    rate_test: Sequence[float],
    psnr_test: Sequence[float],
) -> float:
    """BD-rate of the test curve against the reference, in percent (negative: fewer bits).

    Raises:
        InputError: A curve with fewer than 2 points, non-positive rates, repeated values, or
            curves whose PSNR ranges do not overlap.
    """
    log_ref, p_ref = _curve(rate_ref, psnr_ref, "reference")
    log_test, p_test = _curve(rate_test, psnr_test, "test")
    gap = _mean_gap(p_ref, log_ref, p_test, log_test)
    return 100.0 * (float(np.exp(gap)) - 1.0)


def bd_psnr(
    rate_ref: Sequence[float],
    psnr_ref: Sequence[float],
    rate_test: Sequence[float],
    psnr_test: Sequence[float],
) -> float:
    """BD-PSNR of the test curve against the reference, in dB (positive: better quality).

    Raises:
        InputError: As :func:`bd_rate`, for log-rate ranges that do not overlap.
    """
    log_ref, p_ref = _curve(rate_ref, psnr_ref, "reference")
    log_test, p_test = _curve(rate_test, psnr_test, "test")
    return _mean_gap(log_ref, p_ref, log_test, p_test)
