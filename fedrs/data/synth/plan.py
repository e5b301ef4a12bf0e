"""What a synthetic archive holds before any pixel: a row a patch, and where its files go.

The rows of ``metadata.parquet`` (patch and S1 names, labels, split, country, modalities) are
drawn from the statistics of the real v2.0 metadata (:mod:`fedrs.data.synth.stats`); with each
row come what rendering and writing need: the label mask, the month of the Sentinel-2
acquisition, the georeference (EPSG code and upper-left corner in the MGRS tile) and the
patch folders.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedrs.data.synth.stats import SPLITS, SynthStats, mask_labels
from fedrs.errors import InputError

S2_DIR = "BigEarthNet-S2"
S1_DIR = "BigEarthNet-S1"

_GRID = 91  # patch columns/rows per MGRS tile (109.8 km / 1.2 km)
_PATCH_M = 1200.0
_STREAM_METADATA = 1  # seed stream of the rows (the pixels draw from another)


@dataclass(frozen=True)
class Plan:
    """Everything about the patches except their pixels (:func:`make_plan`)."""

    metadata: pd.DataFrame
    masks: np.ndarray  # (N,) int64 19-bit label masks
    country: np.ndarray  # (N,) names
    month: np.ndarray  # (N,) 1..12 month of the S2 acquisition
    epsg: np.ndarray  # (N,) int
    ulx: np.ndarray  # (N,) float64 upper-left corner of the patch
    uly: np.ndarray
    s2_folder: list[str | None]  # relative folders, None when the modality is absent
    s1_folder: list[str | None]


def check_parameters(patches: int, seed: int, s1_only: float, s2_only: float) -> None:
    """Validate the parameters of a synthetic archive.

    Raises:
        InputError: ``patches`` is not a positive integer, ``seed`` not a non-negative one, a
            fraction lies outside [0, 1] or the two fractions sum to more than 1.
    """
    if isinstance(patches, bool) or not isinstance(patches, int | np.integer) or patches < 1:
        raise InputError(f"patches must be a positive integer, not {patches!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, not {seed!r}")
    for name, value in (("s1_only_fraction", s1_only), ("s2_only_fraction", s2_only)):
        if not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
            raise InputError(f"{name} must be in [0, 1], not {value!r}")
    if float(s1_only) + float(s2_only) > 1.0 + 1e-12:
        raise InputError(
            f"s1_only_fraction + s2_only_fraction must be at most 1, not {s1_only} + {s2_only}"
        )


def make_plan(stats: SynthStats, patches: int, seed: int, s1_only: float, s2_only: float) -> Plan:
    """The rows of ``patches`` patches drawn from ``stats`` (deterministic for ``seed``).

    ``s1_only`` and ``s2_only`` are the shares of patches with one modality only; the
    parameters are those checked by :func:`check_parameters`.

    Raises:
        InputError: more patches fall on one MGRS tile than it holds.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, _STREAM_METADATA]))
    sizes = stats.country_patches.astype(np.float64)
    country_index = rng.choice(len(stats.countries), size=patches, p=sizes / sizes.sum())
    masks = np.zeros(patches, dtype=np.int64)
    split = np.empty(patches, dtype=object)
    product_index = np.zeros(patches, dtype=np.int64)
    products = [p for c in stats.countries for p in c.products]
    first_product = np.cumsum([0] + [len(c.products) for c in stats.countries])
    for k, country in enumerate(stats.countries):
        rows = np.flatnonzero(country_index == k)
        if len(rows) == 0:
            continue
        weights = country.label_set_patches / country.label_set_patches.sum()
        masks[rows] = country.label_sets[rng.choice(len(weights), size=len(rows), p=weights)]
        split_p = np.array([country.split[s] for s in SPLITS])
        split[rows] = np.array(SPLITS, dtype=object)[
            rng.choice(len(SPLITS), size=len(rows), p=split_p / split_p.sum())
        ]
        counts = np.array([p.patches for p in country.products], dtype=np.float64)
        product_index[rows] = first_product[k] + rng.choice(
            len(counts), size=len(rows), p=counts / counts.sum()
        )
    cell = np.zeros(patches, dtype=np.int64)
    s1_product = np.empty(patches, dtype=object)
    for j in np.unique(product_index):
        product = products[j]
        rows = np.flatnonzero(product_index == j)
        if len(rows) > _GRID * _GRID:
            raise InputError(
                f"{patches} patches is too many for the tiles of the synthetic archive "
                f"({len(rows)} fall on tile {product.tile}, which holds {_GRID * _GRID})"
            )
        cell[rows] = rng.choice(_GRID * _GRID, size=len(rows), replace=False)
        s1_counts = np.array(product.s1_patches, dtype=np.float64)
        s1_product[rows] = np.array(product.s1, dtype=object)[
            rng.choice(len(s1_counts), size=len(rows), p=s1_counts / s1_counts.sum())
        ]
    n_s1_only = round(s1_only * patches)
    n_s2_only = min(round(s2_only * patches), patches - n_s1_only)
    order = rng.permutation(patches)
    has_s1 = np.ones(patches, dtype=bool)
    has_s2 = np.ones(patches, dtype=bool)
    has_s2[order[:n_s1_only]] = False
    has_s1[order[n_s1_only : n_s1_only + n_s2_only]] = False

    col, row = np.divmod(cell, _GRID)
    s2_product = np.array([p.s2 for p in products], dtype=object)[product_index]
    tiles = np.array([p.tile for p in products], dtype=object)[product_index]
    suffix = pd.Series(col.astype(str)) + "_" + pd.Series(row.astype(str))
    s2_names = pd.Series(s2_product, dtype=str) + "_" + suffix
    s1_names = pd.Series(s1_product, dtype=str) + "_" + pd.Series(tiles, dtype=str) + "_" + suffix
    v1_names = pd.Series(s2_product, dtype=str).str.slice(0, 26) + "_" + suffix
    patch_id = s2_names.where(has_s2, s1_names)
    country_names = np.array([c.name for c in stats.countries], dtype=object)[country_index]
    metadata = pd.DataFrame(
        {
            "patch_id": patch_id.to_numpy(dtype=object),
            "labels": [mask_labels(int(m)) for m in masks],
            "split": split,
            "country": country_names,
            "s1_name": s1_names.where(has_s1, None).to_numpy(dtype=object),
            "s2v1_name": v1_names.to_numpy(dtype=object),
            "contains_seasonal_snow": np.zeros(patches, dtype=bool),
            "contains_cloud_or_shadow": np.zeros(patches, dtype=bool),
            "has_s1": has_s1,
            "has_s2": has_s2,
        }
    )
    month = pd.Series(s2_product).str.slice(15, 17).astype(int).to_numpy()
    epsg = np.array([p.epsg for p in products], dtype=np.int64)[product_index]
    ulx = np.array([p.ulx for p in products])[product_index] + col * _PATCH_M
    uly = np.array([p.uly for p in products])[product_index] - row * _PATCH_M
    s2_folder = [
        f"{S2_DIR}/{p}/{n}" if ok else None
        for p, n, ok in zip(s2_product, s2_names, has_s2, strict=True)
    ]
    s1_folder = [
        f"{S1_DIR}/{p}/{n}" if ok else None
        for p, n, ok in zip(s1_product, s1_names, has_s1, strict=True)
    ]
    return Plan(metadata, masks, country_names, month, epsg, ulx, uly, s2_folder, s1_folder)
