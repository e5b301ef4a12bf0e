"""Bjøntegaard deltas: the average gap between two rate–distortion curves.

Two codecs measured at a few operating points (bits per pixel, PSNR) are compared by fitting
each curve with a polynomial and integrating the difference over the range both cover
(G. Bjøntegaard, "Calculation of average PSNR differences between RD-curves", VCEG-M33, 2001):

* **BD-rate**: log-rate as a polynomial of PSNR, integrated over the common PSNR range; the
  mean log-rate difference ``d`` is reported as ``100 * (exp(d) - 1)`` percent: the extra bits
  the test codec spends for the same quality (negative: it saves bits);
* **BD-PSNR**: PSNR as a polynomial of log-rate, integrated over the common log-rate range:
  the quality the test codec gains at the same rate, in dB.

Two fits (``fit``):

* ``"cubic"`` (the default), as in VCEG-M33: a least-squares cubic where a curve has four
  points or more, of degree ``points - 1`` otherwise (three points: the parabola through them);
* ``"pchip"``: the piecewise cubic Hermite interpolant through the points (Fritsch and
  Carlson's monotone slopes, as in the piecewise-cubic Bjøntegaard of later common test
  conditions), integrated exactly.  It passes through every point and never leaves the range
  of two neighbouring ones, so a flat, noisy curve with a gap between its points stays flat
  there, where a cubic fitted to five scattered points can swing by a dB.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedrs.errors import InputError

__all__ = ["FITS", "bd_psnr", "bd_rate", "pchip_integral", "pchip_slopes"]


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


FITS = ("cubic", "pchip")


def pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fritsch–Carlson slopes at the points (``x`` increasing): zero at a local extremum, the
    weighted harmonic mean of the neighbouring secants elsewhere; the three-point end rule,
    kept to the sign of the end secant and to three times it."""
    h = np.diff(x)
    secant = np.diff(y) / h
    if len(x) == 2:
        return np.full(2, secant[0])
    d = np.zeros_like(y)
    w1, w2 = 2 * h[1:] + h[:-1], h[1:] + 2 * h[:-1]
    same = secant[:-1] * secant[1:] > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        harmonic = (w1 + w2) / (w1 / secant[:-1] + w2 / secant[1:])
    d[1:-1] = np.where(same, harmonic, 0.0)
    for end, (h0, h1, s0, s1) in (
        (0, (h[0], h[1], secant[0], secant[1])),
        (-1, (h[-1], h[-2], secant[-1], secant[-2])),
    ):
        slope = ((2 * h0 + h1) * s0 - h0 * s1) / (h0 + h1)
        if np.sign(slope) != np.sign(s0):
            slope = 0.0
        elif np.sign(s0) != np.sign(s1) and abs(slope) > abs(3 * s0):
            slope = 3 * s0
        d[end] = slope
    return d


def pchip_integral(x: np.ndarray, y: np.ndarray, low: float, high: float) -> float:
    """Exact integral over ``[low, high]`` (inside ``[x[0], x[-1]]``) of the PCHIP through
    ``(x, y)``."""
    d = pchip_slopes(x, y)
    h = np.diff(x)

    def upto(value: float) -> float:
        k = int(np.clip(np.searchsorted(x, value, side="right") - 1, 0, len(h) - 1))
        t = (value - x[k]) / h[k]
        # antiderivatives in t of the four cubic Hermite basis functions
        h00 = t - t**3 + t**4 / 2
        h10 = t**2 / 2 - 2 * t**3 / 3 + t**4 / 4
        h01 = t**3 - t**4 / 2
        h11 = -(t**3) / 3 + t**4 / 4
        whole = h[:k] * ((y[:k] + y[1 : k + 1]) / 2 + h[:k] * (d[:k] - d[1 : k + 1]) / 12)
        part = h[k] * (y[k] * h00 + h[k] * d[k] * h10 + y[k + 1] * h01 + h[k] * d[k + 1] * h11)
        return float(whole.sum() + part)

    return upto(high) - upto(low)


def _mean_gap(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray, fit: str) -> float:
    """Mean of ``y2(x) - y1(x)`` over the common ``x`` range, each ``y`` fitted by ``fit``."""
    if fit not in FITS:
        raise InputError(f"unknown Bjøntegaard fit {fit!r}; expected one of {', '.join(FITS)}")
    low, high = max(x1.min(), x2.min()), min(x1.max(), x2.max())
    if not high > low:
        raise InputError("the two curves do not overlap; no Bjøntegaard delta is defined")
    areas: list[float] = []
    for x, y in ((x1, y1), (x2, y2)):
        if fit == "pchip":
            order = np.argsort(x)
            areas.append(pchip_integral(x[order], y[order], low, high))
            continue
        degree = min(3, len(x) - 1)
        integral = np.polyint(np.polyfit(x, y, degree))
        areas.append(float(np.polyval(integral, high) - np.polyval(integral, low)))
    return float((areas[1] - areas[0]) / (high - low))


def bd_rate(
    rate_ref: Sequence[float],
    psnr_ref: Sequence[float],
    rate_test: Sequence[float],
    psnr_test: Sequence[float],
    *,
    fit: str = "cubic",
) -> float:
    """BD-rate of the test curve against the reference, in percent (negative: fewer bits).

    Raises:
        InputError: A curve with fewer than 2 points, non-positive rates, repeated values,
            curves whose PSNR ranges do not overlap, or an unknown ``fit``.
    """
    log_ref, p_ref = _curve(rate_ref, psnr_ref, "reference")
    log_test, p_test = _curve(rate_test, psnr_test, "test")
    gap = _mean_gap(p_ref, log_ref, p_test, log_test, fit)
    return 100.0 * (float(np.exp(gap)) - 1.0)


def bd_psnr(
    rate_ref: Sequence[float],
    psnr_ref: Sequence[float],
    rate_test: Sequence[float],
    psnr_test: Sequence[float],
    *,
    fit: str = "cubic",
) -> float:
    """BD-PSNR of the test curve against the reference, in dB (positive: better quality).

    Raises:
        InputError: As :func:`bd_rate`, for log-rate ranges that do not overlap.
    """
    log_ref, p_ref = _curve(rate_ref, psnr_ref, "reference")
    log_test, p_test = _curve(rate_test, psnr_test, "test")
    return _mean_gap(log_ref, p_ref, log_test, p_test, fit)
