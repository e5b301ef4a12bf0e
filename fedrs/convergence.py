"""How fast a federation converges, and how sure we are of a figure measured over seeds.

* :func:`mean_interval`: the mean of a figure over seeds with its Student-t confidence interval;
* :func:`bootstrap_interval`: a percentile bootstrap interval of a mean over items (e.g. the
  per-query APs of one evaluation: how much mAP would move with other queries);
* :func:`first_reaching`: the first round of a federation's history at which a figure reaches a
  target, with the rounds, passes over the data and bytes it took;
* :func:`targets`: those costs for the targets set by a centralized run: 95 % and 99 % of its
  mAP@20 (both conventions), and its PSNR within 0.5 dB per modality at no more bits;
* :func:`rate_jump`: the largest round-to-round change of a modality's bpp after a warm-up;
* :class:`Plateau`: whether a validation figure has stopped improving.

A federation's history is the ``history`` of its ``summary.json``: one dict a round with
``round``, the evaluation figures (``eval/map@20``, ``eval/map@20_min_k_r``, ``eval/bpp_s1``,
``eval/psnr_s1``, ...) and the bytes of that round (``comm/bytes_up``, ``comm/bytes_down``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedrs.errors import InputError

__all__ = [
    "MAP_FRACTIONS",
    "MAP_KEYS",
    "MODALITIES",
    "PSNR_MARGIN_DB",
    "Plateau",
    "bootstrap_interval",
    "federation_settings",
    "first_reaching",
    "mean_interval",
    "paired_differences",
    "plateau_round",
    "rate_jump",
    "t_quantile",
    "target_labels",
    "targets",
]

MAP_FRACTIONS = (0.95, 0.99)
"""Fractions of the centralized mAP@20 a federation is asked to reach."""

MAP_KEYS = ("map@20", "map@20_min_k_r")
"""Both mAP@20 conventions: AP over the relevant items retrieved, and AP / min(20, R)."""

MODALITIES = ("s1", "s2")

PSNR_MARGIN_DB = 0.5
"""How far below the centralized PSNR a federation may stay and still count as there."""


def _t_two_sided(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with ``df`` degrees of freedom (Abramowitz & Stegun 26.7.3
    and 26.7.4: a finite series in cos(theta), theta = atan(t / sqrt(df)), exact for whole
    ``df``)."""
    theta = math.atan(t / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2 == 1:
        series, term = 0.0, c
        for j in range(1, (df - 1) // 2 + 1):
            series += term
            term *= (2 * j) / (2 * j + 1) * c * c
        return 2 / math.pi * (theta + s * series)
    series, term = 0.0, 1.0
    for j in range(1, df // 2 + 1):
        series += term
        term *= (2 * j - 1) / (2 * j) * c * c
    return s * series


def t_quantile(confidence: float, df: int) -> float:
    """The ``t`` with P(|T| < t) = ``confidence`` for ``df`` degrees of freedom: the factor of
    a two-sided interval (``t_quantile(0.95, 2)`` = 4.3027, ``t_quantile(0.95, 30)`` = 2.0423).

    Raises:
        InputError: ``confidence`` outside (0, 1) or ``df`` below 1.
    """
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must be between 0 and 1, not {confidence}")
    if df < 1:
        raise InputError(f"degrees of freedom must be at least 1, not {df}")
    low, high = 0.0, 1.0
    while _t_two_sided(high, df) < confidence:
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2
        if _t_two_sided(middle, df) < confidence:
            low = middle
        else:
            high = middle
        if high - low <= 1e-12 * high:
            break
    return (low + high) / 2


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float | None]:
    """The mean of ``values`` (one a seed) and the half width of its Student-t interval.

    ``half_width = t(confidence, n - 1) * s / sqrt(n)``, ``s`` the sample standard deviation
    (``n - 1`` in its denominator). One value has no spread: its half width is None.

    Raises:
        InputError: no values, a value that is not finite, or ``confidence`` outside (0, 1).
    """
    xs = [float(v) for v in values]
    if not xs:
        raise InputError("an interval needs at least one value")
    if not all(math.isfinite(x) for x in xs):
        raise InputError(f"values must be finite: {xs}")
    n = len(xs)
    mean = math.fsum(xs) / n
    if n == 1:
        if not 0.0 < confidence < 1.0:
            raise InputError(f"confidence must be between 0 and 1, not {confidence}")
        return mean, None
    deviation = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    return mean, t_quantile(confidence, n - 1) * deviation / math.sqrt(n)


def paired_differences(
    first: Mapping[Any, Mapping[str, Any]],
    second: Mapping[Any, Mapping[str, Any]],
    keys: Sequence[str],
    confidence: float = 0.95,
) -> dict[str, Any]:
    """``first - second`` of each of ``keys``, seed by seed over the seeds both runs report it
    for (``first``, ``second``: seed -> key -> figure, a figure None where a run has none), with
    the mean and Student-t half width of the differences (:func:`mean_interval`; None with one
    seed, both None with none).  Runs of the same seed share the archive, partition and initial
    model, so the spread of the differences is not the spread of the runs: a difference can be
    clear of zero while the two runs' own intervals overlap.

    Returns:
        ``{"confidence", "seeds", "mean", "half_width", "n", "clear"}``: ``seeds`` the seeds
        both runs have; per key the mean, the half width, ``n`` the seeds it was taken over,
        and ``clear`` whether its interval excludes zero (never with one seed).
    """
    mean: dict[str, float | None] = {}
    half_width: dict[str, float | None] = {}
    count: dict[str, int] = {}
    clear: dict[str, bool] = {}
    shared = [seed for seed in first if seed in second]
    for key in keys:
        differences = [
            float(a) - float(b)
            for seed in shared
            if (a := first[seed].get(key)) is not None and (b := second[seed].get(key)) is not None
        ]
        count[key] = len(differences)
        if differences:
            mean[key], half_width[key] = mean_interval(differences, confidence)
        else:
            mean[key] = half_width[key] = None
        m, h = mean[key], half_width[key]
        clear[key] = m is not None and h is not None and abs(m) > h
    return {
        "confidence": confidence,
        "seeds": shared,
        "mean": mean,
        "half_width": half_width,
        "n": count,
        "clear": clear,
    }


_BOOTSTRAP_ELEMENTS = 1 << 22
"""Resampled values drawn at once by :func:`bootstrap_interval` (32 MB of float64)."""


def bootstrap_interval(
    values: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (e.g. per-query APs).

    Draws ``resamples`` samples of ``n = len(values)`` items with replacement from
    ``numpy.random.default_rng(seed)``, takes the mean of each, and returns the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of those means. Resamples
    are drawn a block at a time (about ``2**22`` values), so memory does not grow with
    ``resamples x n``; the result depends only on ``values``, ``confidence``, ``resamples``
    and ``seed``. Its width shrinks as ``1 / sqrt(n)``; one value gives a zero-width interval.

    Raises:
        InputError: no values, a value that is not finite, ``confidence`` outside (0, 1) or
            fewer than one resample.
    """
    xs = np.asarray(values, dtype=np.float64).reshape(-1)
    if xs.size == 0:
        raise InputError("an interval needs at least one value")
    if not np.isfinite(xs).all():
        raise InputError("values must be finite")
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must be between 0 and 1, not {confidence}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise InputError(f"resamples must be a positive integer, not {resamples!r}")
    n = xs.size
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    step = max(1, _BOOTSTRAP_ELEMENTS // n)
    for start in range(0, resamples, step):
        count = min(step, resamples - start)
        means[start : start + count] = xs[rng.integers(0, n, size=(count, n))].mean(axis=1)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def _round_number(entry: Mapping[str, Any], index: int) -> int:
    value = entry.get("round")
    return int(value) if value is not None else index + 1


def _first_where(
    history: Sequence[Mapping[str, Any]],
    reached: Callable[[Mapping[str, Any]], bool],
    local_epochs: int,
) -> tuple[dict[str, Any], Mapping[str, Any]] | None:
    """The costs up to the first entry of ``history`` that is ``reached``, and that entry."""
    up = down = 0.0
    for index, entry in enumerate(history):
        up += float(entry.get("comm/bytes_up", 0) or 0)
        down += float(entry.get("comm/bytes_down", 0) or 0)
        if reached(entry):
            rounds = _round_number(entry, index)
            costs = {
                "round": rounds,
                "passes": rounds * local_epochs,
                "bytes_up": int(up),
                "bytes_down": int(down),
                "bytes": int(up + down),
            }
            return costs, entry
    return None


def _figure(entry: Mapping[str, Any], key: str) -> float | None:
    value = entry.get(key)
    if value is None:
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def first_reaching(
    history: Sequence[Mapping[str, Any]],
    key: str,
    target: float,
    *,
    higher_is_better: bool = True,
    local_epochs: int = 1,
) -> dict[str, Any] | None:
    """The first round whose ``key`` reaches ``target`` (``>=``; ``<=`` when lower is better).

    Returns ``{"round", "passes", "bytes_up", "bytes_down", "bytes", "value"}``, or None when no
    round reaches it (a round without the figure, or with a non-finite one, does not):

    * ``round``: the round's number (its ``round`` entry; its position, from 1, where absent),
      that is the rounds it took;
    * ``passes``: passes over the training data up to it, ``round * local_epochs``: each
      client trains ``local_epochs`` epochs over its own shard a round, so a round in which
      every client trains is ``local_epochs`` passes over the union of the shards (with
      ``federation.fraction_train`` below 1 the data seen is that fraction of it);
    * ``bytes_up``, ``bytes_down``, ``bytes``: the training traffic up to and including that
      round (``comm/bytes_up`` and ``comm/bytes_down`` summed; evaluation broadcasts are not
      counted, as in the summary's ``bytes_down``), and its total;
    * ``value``: the figure at that round.
    """
    if local_epochs < 1:
        raise InputError(f"local_epochs must be at least 1, not {local_epochs}")

    def reached(entry: Mapping[str, Any]) -> bool:
        value = _figure(entry, key)
        if value is None:
            return False
        return value >= target if higher_is_better else value <= target

    found = _first_where(history, reached, local_epochs)
    if found is None:
        return None
    costs, entry = found
    return costs | {"value": _figure(entry, key)}


def _label(key: str, fraction: float) -> str:
    return f"{key} {round(fraction * 100)}%"


def target_labels() -> list[str]:
    """The keys of :func:`targets`, in order: ``map@20 95%``, ``map@20 99%``,
    ``map@20_min_k_r 95%``, ``map@20_min_k_r 99%``, ``psnr_s1 0.5 dB``, ``psnr_s2 0.5 dB``."""
    return [_label(k, f) for k in MAP_KEYS for f in MAP_FRACTIONS] + [
        f"psnr_{m} {PSNR_MARGIN_DB:g} dB" for m in MODALITIES
    ]


def _final(summary: Mapping[str, Any], key: str, modality: str | None = None) -> float | None:
    value = summary.get(key)
    if modality is not None:
        value = value.get(modality) if isinstance(value, Mapping) else None
    if value is None:
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def federation_settings(summary: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``federation`` settings a run's ``summary.json`` records in its ``config`` (empty
    for a centralized run or a summary without them)."""
    config = summary.get("config") or {}
    settings: Mapping[str, Any] = config.get("federation") or {}
    return settings


def targets(
    central_summary: Mapping[str, Any], federation_summary: Mapping[str, Any]
) -> dict[str, dict[str, Any] | None]:
    """What a federation took to reach the centralized run's final figures.

    Keys (:func:`target_labels`) and what reaching each means, round by round over the
    federation's ``history``:

    * ``map@20 95%``, ``map@20 99%``: ``eval/map@20 >= 0.95`` (``0.99``) ``* map@20`` of the
      centralized run; ``map@20_min_k_r 95%`` and ``99%`` the same in the min(k, R)
      convention;
    * ``psnr_s1 0.5 dB``, ``psnr_s2 0.5 dB``: within 0.5 dB of the centralized PSNR of that
      modality at a bpp no higher than the centralized one, both in the same round:
      ``eval/psnr_m >= psnr_m - 0.5`` and ``eval/bpp_m <= bpp_m``.

    Each value is :func:`first_reaching`'s dict (passes counted with the federation's
    ``federation.local_epochs`` from its ``config``, 1 where absent) with ``target`` (the
    figure to reach) added, and ``bpp_max`` for the PSNR targets; None where no round reaches
    it, or where the centralized run lacks the figure.
    """
    history: Sequence[Mapping[str, Any]] = federation_summary.get("history") or []
    local_epochs = int(federation_settings(federation_summary).get("local_epochs", 1) or 1)
    out: dict[str, dict[str, Any] | None] = {}
    for key in MAP_KEYS:
        central = _final(central_summary, key)
        for fraction in MAP_FRACTIONS:
            label = _label(key, fraction)
            if central is None:
                out[label] = None
                continue
            goal = fraction * central
            found = first_reaching(history, f"eval/{key}", goal, local_epochs=local_epochs)
            out[label] = None if found is None else found | {"target": goal}
    for modality in MODALITIES:
        label = f"psnr_{modality} {PSNR_MARGIN_DB:g} dB"
        psnr = _final(central_summary, "psnr", modality)
        bpp = _final(central_summary, "bpp", modality)
        if psnr is None or bpp is None:
            out[label] = None
            continue
        goal = psnr - PSNR_MARGIN_DB

        def within(
            entry: Mapping[str, Any], m: str = modality, low: float = goal, high: float = bpp
        ) -> bool:
            p, b = _figure(entry, f"eval/psnr_{m}"), _figure(entry, f"eval/bpp_{m}")
            return p is not None and b is not None and p >= low and b <= high

        met = _first_where(history, within, local_epochs)
        if met is None:
            out[label] = None
            continue
        costs, entry = met
        out[label] = costs | {
            "value": _figure(entry, f"eval/psnr_{modality}"),
            "bpp": _figure(entry, f"eval/bpp_{modality}"),
            "target": goal,
            "bpp_max": bpp,
        }
    return out


def rate_jump(
    history: Sequence[Mapping[str, Any]], modality: str, *, after_round: int = 0
) -> float | None:
    """The largest relative change of ``eval/bpp_<modality>`` between two consecutive rounds
    that both come after ``after_round`` (e.g. the stage-1 rounds: the loss changes there).

    ``|bpp[r + 1] / bpp[r] - 1|``, maximised over the pairs; None with fewer than two such
    rounds holding a finite, positive bpp (a round without it breaks the pair).

    >>> history = [{"eval/bpp_s2": 0.10}, {"eval/bpp_s2": 0.17}, {"eval/bpp_s2": 0.22}]
    >>> round(rate_jump(history, "s2"), 3), round(rate_jump(history, "s2", after_round=1), 3)
    (0.7, 0.294)
    """
    jumps: list[float] = []
    before: float | None = None
    for index, entry in enumerate(history):
        if _round_number(entry, index) <= after_round:
            continue
        bpp = _figure(entry, f"eval/bpp_{modality}")
        if bpp is not None and bpp <= 0:
            bpp = None
        if bpp is not None and before is not None:
            jumps.append(abs(bpp / before - 1.0))
        before = bpp
    return max(jumps) if jumps else None


@dataclass
class Plateau:
    """Whether a validation figure has stopped improving, fed one round at a time.

    A round *improves* when its value beats the best so far by more than ``tolerance``
    (``value > best + tolerance``; ``value < best - tolerance`` when lower is better), and only
    such a round becomes the best: gains smaller than the tolerance are measured from the last
    improvement, and count once together they exceed it.
    The plateau is reached at the round that ends ``patience`` rounds in a row without an
    improvement (the first finite value always improves; a non-finite one never does). ``update``
    says whether it has been reached, ``round`` at which round it was (from 1; later rounds do
    not change it) and ``best_round`` the round of the last improvement.

    >>> p = Plateau(patience=2, tolerance=0.01)
    >>> [p.update(v) for v in (0.50, 0.60, 0.605, 0.606)]
    [False, False, False, True]
    >>> p.round, p.best_round
    (4, 2)
    """

    patience: int
    tolerance: float = 0.0
    higher_is_better: bool = True
    best: float | None = field(default=None, init=False)
    best_round: int | None = field(default=None, init=False)
    round: int | None = field(default=None, init=False)
    seen: int = field(default=0, init=False)
    stale: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise InputError(f"patience must be at least 1 round, not {self.patience}")
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise InputError(f"tolerance must be finite and not negative, not {self.tolerance}")

    @property
    def reached(self) -> bool:
        return self.round is not None

    def update(self, value: float) -> bool:
        """Take the next round's value; True from the round the plateau is reached on."""
        self.seen += 1
        x = float(value)
        if math.isfinite(x) and (
            self.best is None
            or (
                x > self.best + self.tolerance
                if self.higher_is_better
                else x < self.best - self.tolerance
            )
        ):
            self.best, self.best_round, self.stale = x, self.seen, 0
        else:
            self.stale += 1
        if self.round is None and self.stale >= self.patience:
            self.round = self.seen
        return self.reached


def plateau_round(
    values: Sequence[float],
    patience: int,
    tolerance: float = 0.0,
    *,
    higher_is_better: bool = True,
) -> int | None:
    """The round (from 1) at which ``values`` reach a :class:`Plateau`, or None if they don't."""
    plateau = Plateau(patience, tolerance, higher_is_better)
    for value in values:
        if plateau.update(value):
            return plateau.round
    return None
