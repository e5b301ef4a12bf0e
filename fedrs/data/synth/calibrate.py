"""Calibration of rendered pixels to the per-band statistics of BigEarthNet.

A per-band power law for Sentinel-2 and an affine map in dB for Sentinel-1 bring the
archive's per-band mean and standard deviation close to those of ``fedrs.data.facts``.
:data:`CALIBRATION` is the packaged fit; ``python -m fedrs.data.synth calibrate [PATCHES]``
fits and prints a new one (:func:`fit_calibration`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedrs.data.facts import PATCH_SIZE, S1_BANDS, S1_MEAN, S1_STD, S2_BANDS, S2_MEAN, S2_STD
from fedrs.data.synth.plan import make_plan
from fedrs.data.synth.render import BATCH, batch_rng, render_raw
from fedrs.data.synth.stats import load_stats


@dataclass(frozen=True)
class Calibration:
    """Per-band maps from generated to calibrated values.

    S2: ``value = exp(s2_log_offset + s2_power * log(raw))`` (then rounded to uint16);
    S1: ``dB = s1_scale * raw_dB + s1_offset``.
    """

    s2_log_offset: tuple[float, ...]
    s2_power: tuple[float, ...]
    s1_scale: tuple[float, ...]
    s1_offset: tuple[float, ...]


# Fitted by ``python -m fedrs.data.synth calibrate 3072``.
CALIBRATION = Calibration(
    s2_log_offset=(
        -8.121782,
        -5.808142,
        -5.660367,
        -4.084016,
        -5.285621,
        -4.676724,
        -2.78804,
        -1.911771,
        -1.775571,
        -2.035616,
        -4.311502,
        -2.412994,
    ),
    s2_power=(
        2.264255,
        1.878849,
        1.832532,
        1.585363,
        1.745651,
        1.621754,
        1.367162,
        1.252069,
        1.232749,
        1.26647,
        1.552134,
        1.322615,
    ),
    s1_scale=(1.044556, 1.023622),
    s1_offset=(-0.432996, -0.428366),
)


def calibrate_s2(bands: list[np.ndarray], cal: Calibration) -> list[np.ndarray]:
    """Calibrated S2 bands: uint16, rounded and clipped to 1 .. 65535."""
    out = []
    for i, band in enumerate(bands):
        value = np.exp(cal.s2_log_offset[i] + cal.s2_power[i] * np.log(np.maximum(band, 1e-3)))
        out.append(np.clip(np.rint(value), 1, 65535).astype(np.uint16))
    return out


def calibrate_s1(s1: np.ndarray, cal: Calibration) -> np.ndarray:
    """Calibrated S1 backscatter (B, 2, H, W) in dB, float32."""
    scale = np.asarray(cal.s1_scale, dtype=np.float32)[None, :, None, None]
    offset = np.asarray(cal.s1_offset, dtype=np.float32)[None, :, None, None]
    return (s1 * scale + offset).astype(np.float32)


def fit_calibration(patches: int = 4096, seed: int = 0) -> Calibration:
    """Fit the per-band calibration on a pilot archive of ``patches`` patches.

    S2: for each band, the power ``p`` makes the coefficient of variation of ``raw ** p`` equal
    that of BigEarthNet (bisection), and the offset then matches the mean.  S1: an affine map
    in dB matches mean and standard deviation.
    """
    stats = load_stats()
    plan = make_plan(stats, patches, seed, 0.0, 0.0)
    logs: list[list[np.ndarray]] = [[] for _ in S2_BANDS]
    pick = np.random.default_rng(seed)
    sample = 4096  # pixels per band and batch
    s1_sum = np.zeros(len(S1_BANDS))
    s1_sq = np.zeros(len(S1_BANDS))
    for start in range(0, patches, BATCH):
        stop = start + BATCH
        raw, s1 = render_raw(
            batch_rng(seed, start),
            plan.masks[start:stop],
            plan.month[start:stop],
            plan.country[start:stop],
        )
        for i, band in enumerate(raw):
            values = band.ravel()
            keep = pick.choice(len(values), size=min(len(values), sample), replace=False)
            logs[i].append(np.log(np.maximum(values[keep], 1e-3)))
        s1_sum += s1.sum(axis=(0, 2, 3), dtype=np.float64)
        s1_sq += np.square(s1, dtype=np.float64).sum(axis=(0, 2, 3))
    offsets, powers = [], []
    for i, _band in enumerate(S2_BANDS):
        log_raw = np.concatenate(logs[i]).astype(np.float64)
        centred = log_raw - log_raw.mean()
        target_cv = S2_STD[i] / S2_MEAN[i]

        def cv(power: float, centred: np.ndarray = centred) -> float:
            value = np.exp(power * centred)
            return float(value.std() / value.mean())

        lo, hi = 0.05, 6.0
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if cv(mid) < target_cv else (lo, mid)
        power = 0.5 * (lo + hi)
        mean = float(np.exp(power * log_raw).mean())
        powers.append(round(power, 6))
        offsets.append(round(float(np.log(S2_MEAN[i] / mean)), 6))
    s1_mean = s1_sum / (patches * PATCH_SIZE * PATCH_SIZE)
    s1_std = np.sqrt(s1_sq / (patches * PATCH_SIZE * PATCH_SIZE) - s1_mean**2)
    scale = np.asarray(S1_STD) / s1_std
    offset = np.asarray(S1_MEAN) - scale * s1_mean
    return Calibration(
        s2_log_offset=tuple(offsets),
        s2_power=tuple(powers),
        s1_scale=tuple(round(float(v), 6) for v in scale),
        s1_offset=tuple(round(float(v), 6) for v in offset),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fedrs.data.synth calibrate [PATCHES]``: print a fitted ``CALIBRATION``."""
    parser = argparse.ArgumentParser(
        prog="python -m fedrs.data.synth calibrate",
        description="Fit the calibration of the synthetic archive on a pilot archive; print it.",
    )
    parser.add_argument("patches", type=int, nargs="?", default=4096, help="pilot patches")
    args = parser.parse_args(argv)
    print(f"CALIBRATION = {fit_calibration(args.patches)!r}")
    return 0
