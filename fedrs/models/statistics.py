"""Feature-whitening statistics that federate exactly: moments measured, pooled, applied.

Whitening (:class:`~fedrs.models.hash_head.FeatureWhitening`) evaluates with a mean and a
whitening matrix of the features it sees.  Averaging those across clients is wrong (the average
of whitening matrices of different distributions whitens nothing), so a client instead sends the
*sufficient statistics* of its features, per whitened branch: the count ``n``, the sum
``sum_i x_i`` and, per whitening group, the sum of outer products ``sum_i x_i x_i^T``.  Sums
add: the server adds the clients' statistics, which gives the mean and covariance of the union
of their features, and recomputes the whitening from that pooled covariance with the same
Newton iterations training uses on a batch (:meth:`FeatureWhitening.whitening_from_covariance`).
A centralized run measures the same statistics on all its data, so both evaluate alike.

On the wire (an ArrayRecord of float64 arrays) a branch ``hash_head.whiten`` is three arrays:
``hash_head.whiten/count`` (shape ``()``), ``hash_head.whiten/sum`` (``(F,)``) and
``hash_head.whiten/outer`` (``(G, g, g)``).  :meth:`WhiteningPool.read` checks them as hostile
input.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from fedrs.models.errors import StatisticsError
from fedrs.models.hash_head import FeatureWhitening

__all__ = [
    "Moments",
    "StatisticsError",
    "WhiteningPool",
    "apply_moments",
    "moments_from_features",
    "pool_moments",
    "whitening_modules",
]

DERIVED = ("running_mean", "running_whitening")
"""Buffers of a whitened branch that are computed from its moments."""


@dataclass(frozen=True)
class Moments:
    """Sufficient statistics of a whitened branch's features (float64).

    Attributes:
        count: Number of feature vectors.
        total: (F,) their sum.
        outer: (G, g, g) per whitening group, the sum of their outer products.
    """

    count: float
    total: np.ndarray
    outer: np.ndarray

    def __add__(self, other: Moments) -> Moments:
        return Moments(self.count + other.count, self.total + other.total, self.outer + other.outer)

    @property
    def mean(self) -> np.ndarray:
        """(F,) mean of the features."""
        return self.total / self.count

    def covariance(self) -> np.ndarray:
        """(G, g, g) per-group covariance (divided by the count, as training's batch one)."""
        groups, group = self.outer.shape[0], self.outer.shape[1]
        mean = self.mean.reshape(groups, group)
        return self.outer / self.count - mean[:, :, None] * mean[:, None, :]

    def arrays(self, name: str) -> dict[str, np.ndarray]:
        """The wire form (see the module docstring)."""
        return {
            f"{name}/count": np.asarray(self.count, dtype=np.float64),
            f"{name}/sum": np.asarray(self.total, dtype=np.float64),
            f"{name}/outer": np.asarray(self.outer, dtype=np.float64),
        }


def moments_from_features(features: Tensor, group: int) -> Moments:
    """The moments of features (N, F) whitened in groups of ``group``."""
    x = features.detach().to(torch.float64).cpu()
    count, dims = x.shape
    grouped = x.reshape(count, dims // group, group)
    outer = torch.einsum("ngi,ngj->gij", grouped, grouped)
    return Moments(float(count), x.sum(0).numpy(), outer.numpy())


def pool_moments(parts: Iterable[Mapping[str, Moments]]) -> dict[str, Moments]:
    """Branch-wise sums of several clients' moments (branches some clients lack are summed
    over those that have them)."""
    pooled: dict[str, Moments] = {}
    for part in parts:
        for name, moments in part.items():
            pooled[name] = pooled[name] + moments if name in pooled else moments
    return pooled


def whitening_modules(model: nn.Module) -> dict[str, FeatureWhitening]:
    """The whitened branches of ``model`` by module name (e.g. ``hash_head.whiten``)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, FeatureWhitening)}


def running_statistics(module: FeatureWhitening, moments: Moments) -> tuple[Tensor, Tensor]:
    """The ``running_mean`` and ``running_whitening`` of ``module`` from ``moments``: the
    pooled mean, and the whitening of the pooled covariance (computed in float64)."""
    if moments.count <= 0:
        raise StatisticsError("moments of no feature cannot set whitening statistics")
    covariance = torch.from_numpy(moments.covariance())
    whitening = module.whitening_from_covariance(covariance)
    dtype = module.running_mean.dtype
    return torch.from_numpy(moments.mean).to(dtype), whitening.to(dtype)


@torch.no_grad()
def apply_moments(model: nn.Module, moments: Mapping[str, Moments]) -> None:
    """Set the whitening statistics of ``model``'s branches named in ``moments``."""
    modules = whitening_modules(model)
    for name, value in moments.items():
        if name not in modules:
            raise StatisticsError(f"model has no whitened branch {name!r}")
        mean, whitening = running_statistics(modules[name], value)
        modules[name].running_mean.copy_(mean)
        modules[name].running_whitening.copy_(whitening)


class WhiteningPool:
    """What the server needs to pool whitening statistics for ``model``'s architecture.

    Args:
        model: A model of the federation's architecture (its weights are not used).
    """

    def __init__(self, model: nn.Module) -> None:
        self._modules = {
            name: (module.features, module.groups, module.group, module)
            for name, module in whitening_modules(model).items()
        }

    def derived_keys(self) -> list[str]:
        """State-dict keys computed from pooled moments (never averaged)."""
        return [f"{name}.{buffer}" for name in self._modules for buffer in DERIVED]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The wire arrays a reply may carry, with their shapes (all float64)."""
        out: dict[str, tuple[int, ...]] = {}
        for name, (features, groups, group, _) in self._modules.items():
            out |= {
                f"{name}/count": (),
                f"{name}/sum": (features,),
                f"{name}/outer": (groups, group, group),
            }
        return out

    def pool(self, parts: list[dict[str, Moments]]) -> dict[str, Moments]:
        """:func:`pool_moments`."""
        return pool_moments(parts)

    def read(
        self, arrays: Mapping[str, np.ndarray], max_count: float | None = None
    ) -> dict[str, Moments]:
        """A reply's moments, checked.

        Args:
            arrays: The reply's statistics arrays (see the module docstring).
            max_count: The most feature vectors a branch may claim (e.g. ``max_weight``).

        Raises:
            StatisticsError: An unknown key, a missing one, a wrong dtype or shape, a value
                that is not finite, a count that is not positive or above ``max_count``, or
                moments no set of real vectors has (a negative variance).
        """
        shapes = self.shapes()
        unknown = sorted(set(arrays) - set(shapes))
        if unknown:
            raise StatisticsError(f"unknown statistics key {unknown[0][:80]!r}")
        out: dict[str, Moments] = {}
        for name in self._modules:
            parts = {p: arrays.get(f"{name}/{p}") for p in ("count", "sum", "outer")}
            if all(v is None for v in parts.values()):
                continue
            for part, value in parts.items():
                key = f"{name}/{part}"
                if value is None:
                    raise StatisticsError(f"statistics of {name!r} miss {key!r}")
                if not isinstance(value, np.ndarray) or value.dtype != np.float64:
                    raise StatisticsError(f"{key!r} must be a float64 array")
                if value.shape != shapes[key]:
                    raise StatisticsError(
                        f"{key!r} has shape {value.shape}, expected {shapes[key]}"
                    )
                if not np.isfinite(value).all():
                    raise StatisticsError(f"{key!r} holds NaN or inf")
            count = float(parts["count"])  # type: ignore[arg-type]
            if count < 1 or (max_count is not None and count > max_count):
                bound = "" if max_count is None else f" (at most {max_count:g})"
                raise StatisticsError(f"{name}/count is {count:g}; it must be at least 1{bound}")
            moments = Moments(count, parts["sum"], parts["outer"])  # type: ignore[arg-type]
            variance = np.diagonal(moments.covariance(), axis1=1, axis2=2)
            scale = np.diagonal(moments.outer, axis1=1, axis2=2) / count
            if (variance < -1e-9 * np.maximum(scale, 1.0)).any():
                raise StatisticsError(f"{name}: moments with a negative variance")
            out[name] = moments
        return out

    def running_arrays(self, moments: Mapping[str, Moments]) -> dict[str, np.ndarray]:
        """The derived keys' values (float64) from pooled ``moments``."""
        out: dict[str, np.ndarray] = {}
        for name, value in moments.items():
            module = self._modules[name][3]
            mean, whitening = running_statistics(module, value)
            out[f"{name}.running_mean"] = mean.double().numpy()
            out[f"{name}.running_whitening"] = whitening.double().numpy()
        return out
