"""A synthetic BigEarthNet-MM-like archive: the default data when a user gives none.

Fact sheet of an archive written by :func:`write_synthetic_archive` (``fedrs synth``):

* Layout: BigEarthNet v2.0 (reBEN), read by :func:`fedrs.data.open_archive` like the real one:
  ``BigEarthNet-S2/<S2 product>/<patch_id>/<patch_id>_<band>.tif`` (12 single-band uint16
  GeoTIFFs in the order B01 ... B12 of ``S2_BANDS``: 10 m bands 120x120, 20 m bands 60x60, 60 m
  bands 20x20, surface reflectance x 10000, nodata 0), ``BigEarthNet-S1/<S1 product>/<s1_name>/
  <s1_name>_{VV,VH}.tif`` (float32 backscatter in dB, 120x120) and ``metadata.parquet`` with the
  official columns (patch_id, labels, split, country, s1_name, s2v1_name,
  contains_seasonal_snow, contains_cloud_or_shadow) plus ``has_s1`` and ``has_s2``.  Every file
  carries the UTM CRS (EPSG:326xx) and the geotransform of its 1200 m x 1200 m footprint in the
  real MGRS tile; names follow the real patterns, e.g.
  ``S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57`` and
  ``S1A_IW_GRDH_1SDV_20170613T165043_33UUP_26_57``.
* Rows: country, split, label set and Sentinel-1/-2 products (tile and date, June 2017 - May
  2018) are drawn from the frequencies of the real v2.0 metadata (``stats.json``), so
  country sizes, seasons and label co-occurrence are those of BigEarthNet.
* Pixels are conditioned on the labels: a patch is cut into spatially coherent regions, one per
  label, with areas drawn at random (at least 5 % each).  Each region carries its class's
  spectral signature (``LAND_COVER``: water dark in the near infrared, vegetation bright in NIR
  and red edge, built-up bright and flat, ...), seasonal senescence of vegetation, field-parcel
  and canopy texture, haze and sensor noise; a per-band power-law calibration brings the
  archive's per-band mean and standard deviation close to the BigEarthNet values of
  ``fedrs.data.facts`` (within a few per cent over a few thousand patches).  Sentinel-1
  backscatter follows the same regions (water low, forest medium, built-up high) with speckle,
  calibrated to the BigEarthNet mean and standard deviation in dB.
* Optional S1-only and S2-only patches (``s1_only_fraction``, ``s2_only_fraction``): an S1-only
  patch has no S2 folder and its ``patch_id`` is its ``s1_name``; an S2-only patch has no S1
  folder and ``s1_name`` None.
* Deterministic for a seed (same files byte for byte); a marker file ``.fedrs-synth.json``
  written last records the parameters, so :func:`ensure_synthetic_archive` reuses a complete
  archive and rebuilds an incomplete one.

The seasonal snow and cloud flags are always False: like the rows of the official
``metadata.parquet``, synthetic patches are free of snow and clouds.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fedrs.data.facts import (
    LABELS_19,
    PATCH_SIZE,
    S1_BANDS,
    S1_MEAN,
    S1_STD,
    S2_BANDS,
    S2_MEAN,
    S2_PIXELS_PER_SIDE,
    S2_RESOLUTION_M,
    S2_STD,
)
from fedrs.data.synth.stats import SPLITS, SynthStats, load_stats, mask_labels
from fedrs.errors import InputError

SYNTH_VERSION = 1
"""Version of the generator; an archive written by another version is rebuilt."""

MARKER = ".fedrs-synth.json"
"""Written last: the archive is complete and was made with the parameters it records."""

PARTIAL_MARKER = ".fedrs-synth.partial"
"""Written first: the folder holds a synthetic archive being written (or left incomplete)."""

S2_DIR = "BigEarthNet-S2"
S1_DIR = "BigEarthNet-S1"
METADATA_FILE = "metadata.parquet"

METADATA_COLUMNS: tuple[str, ...] = (
    "patch_id",
    "labels",
    "split",
    "country",
    "s1_name",
    "s2v1_name",
    "contains_seasonal_snow",
    "contains_cloud_or_shadow",
    "has_s1",
    "has_s2",
)

MIN_REGION_FRACTION = 0.05
"""Smallest share of a patch given to one of its labels."""

ProgressCallback = Callable[[int, int], None]
"""Progress callback: ``(patches_done, patches_total)``."""

_BATCH = 32  # patches rendered together; fixed so that the output does not depend on it
_GRID = 91  # patch columns/rows per MGRS tile (109.8 km / 1.2 km)
_PATCH_M = 1200.0
_SPECKLE_LOOKS = 4.4  # equivalent number of looks of Sentinel-1 IW GRDH
_STREAM_METADATA = 1
_STREAM_PIXELS = 2


@dataclass(frozen=True)
class LandCover:
    """Appearance of one of the 19 classes.

    Attributes:
        s2: summer surface reflectance x 10000 of the 12 bands (order of ``S2_BANDS``).
        s1: mean backscatter [VV, VH] in dB.
        vegetation: 0 (none) ... 1 (fully vegetated): seasonal senescence and texture direction.
        canopy: amplitude (log reflectance) of fine, pixel-scale texture.
        parcels: amplitude of field-parcel texture (piecewise constant polygons).
        roughness: amplitude (dB) of backscatter texture.
    """

    s2: tuple[float, ...]
    s1: tuple[float, float]
    vegetation: float
    canopy: float
    parcels: float
    roughness: float


# fmt: off
LAND_COVER: dict[str, LandCover] = {
    "Urban fabric": LandCover(
        (900, 1000, 1150, 1250, 1450, 1650, 1750, 1850, 1900, 1900, 2300, 2000),
        (-5.0, -12.0), 0.2, 0.35, 0.10, 3.0),
    "Industrial or commercial units": LandCover(
        (1200, 1350, 1500, 1600, 1750, 1900, 2000, 2100, 2150, 2100, 2500, 2200),
        (-3.5, -11.0), 0.05, 0.40, 0.15, 3.5),
    "Arable land": LandCover(
        (450, 600, 850, 900, 1350, 2200, 2600, 2800, 2900, 2850, 2300, 1500),
        (-11.0, -18.0), 1.0, 0.08, 0.40, 1.5),
    "Permanent crops": LandCover(
        (500, 650, 900, 1000, 1400, 2000, 2300, 2500, 2600, 2550, 2500, 1700),
        (-10.0, -17.0), 0.6, 0.15, 0.25, 1.2),
    "Pastures": LandCover(
        (300, 420, 720, 560, 1150, 2600, 3100, 3300, 3400, 3350, 2050, 1100),
        (-12.5, -19.5), 0.8, 0.06, 0.15, 1.0),
    "Complex cultivation patterns": LandCover(
        (400, 540, 800, 760, 1280, 2400, 2800, 3000, 3100, 3050, 2250, 1380),
        (-11.0, -18.0), 0.9, 0.10, 0.30, 1.3),
    "Land principally occupied by agriculture, with significant areas of natural vegetation":
        LandCover(
        (330, 450, 700, 620, 1080, 2250, 2650, 2850, 2950, 2900, 1950, 1150),
        (-10.0, -16.5), 0.8, 0.12, 0.20, 1.2),
    "Agro-forestry areas": LandCover(
        (480, 620, 880, 1050, 1400, 1850, 2050, 2250, 2350, 2300, 2750, 1950),
        (-9.5, -16.0), 0.5, 0.18, 0.05, 1.2),
    "Broad-leaved forest": LandCover(
        (220, 320, 560, 360, 880, 2550, 3150, 3350, 3450, 3400, 1700, 800),
        (-8.0, -14.0), 0.9, 0.10, 0.0, 1.0),
    "Coniferous forest": LandCover(
        (160, 220, 400, 240, 580, 1500, 1800, 1950, 2000, 1980, 1000, 480),
        (-7.5, -13.5), 0.25, 0.12, 0.0, 1.0),
    "Mixed forest": LandCover(
        (180, 260, 470, 290, 720, 2000, 2450, 2600, 2700, 2650, 1350, 640),
        (-7.8, -13.8), 0.6, 0.12, 0.0, 1.0),
    "Natural grassland and sparsely vegetated areas": LandCover(
        (480, 640, 880, 950, 1350, 2000, 2300, 2450, 2550, 2500, 2650, 1850),
        (-12.0, -20.0), 0.6, 0.15, 0.0, 1.0),
    "Moors, heathland and sclerophyllous vegetation": LandCover(
        (320, 420, 620, 630, 1020, 1700, 2000, 2150, 2250, 2200, 2000, 1300),
        (-11.0, -18.0), 0.4, 0.12, 0.0, 1.0),
    "Transitional woodland, shrub": LandCover(
        (260, 360, 610, 460, 920, 2100, 2500, 2700, 2800, 2750, 1800, 950),
        (-9.0, -15.5), 0.7, 0.15, 0.05, 1.2),
    "Beaches, dunes, sands": LandCover(
        (1150, 1450, 1850, 2150, 2350, 2500, 2600, 2700, 2800, 2750, 3300, 2900),
        (-17.0, -26.0), 0.0, 0.08, 0.0, 0.8),
    "Inland wetlands": LandCover(
        (230, 310, 520, 430, 820, 1500, 1750, 1850, 1950, 1900, 1300, 700),
        (-13.0, -21.0), 0.6, 0.10, 0.0, 1.0),
    "Coastal wetlands": LandCover(
        (360, 460, 660, 620, 870, 1200, 1350, 1450, 1500, 1450, 1200, 800),
        (-14.0, -22.0), 0.5, 0.12, 0.0, 1.0),
    "Inland waters": LandCover(
        (260, 310, 420, 260, 240, 200, 180, 150, 130, 120, 80, 60),
        (-21.0, -28.0), 0.0, 0.03, 0.0, 0.5),
    "Marine waters": LandCover(
        (240, 280, 340, 190, 150, 120, 110, 100, 90, 85, 60, 45),
        (-19.0, -27.0), 0.0, 0.03, 0.0, 0.7),
}
# Senescent / dormant vegetation relative to the summer signature (red up, NIR down, SWIR up).
_DORMANT = np.array([1.2, 1.2, 1.05, 1.5, 1.1, 0.7, 0.6, 0.58, 0.58, 0.6, 1.25, 1.45], np.float32)
# How texture moves a vegetated pixel's spectrum (denser canopy: darker red, brighter NIR).
_DENSITY = np.array([-0.5, -0.5, -0.2, -0.8, -0.3, 0.5, 0.8, 0.9, 0.9, 0.9, -0.1, -0.5], np.float32)
# Spectrum of residual haze / adjacency (strongest in the aerosol and blue bands).
_HAZE = np.array([1.0, 0.8, 0.6, 0.45, 0.4, 0.35, 0.32, 0.3, 0.29, 0.28, 0.12, 0.06], np.float32)
# fmt: on
_GREEN_PEAK_MONTH: dict[str, int] = {"Portugal": 4}  # Mediterranean spring; elsewhere July
_PATCH_BRIGHTNESS = 0.08  # log-normal sigma of brightness per patch, per region
_REGION_BRIGHTNESS = 0.08
_REGION_COLOUR = 0.05  # per region and band
_SENSOR_NOISE = 0.03  # per native pixel and band
_HAZE_LOG_MEDIAN = float(np.log(40.0))  # residual haze at B01 (log-normal, heavy tail)
_HAZE_LOG_SIGMA = 1.0
_DB = np.float32(10.0 / np.log(10.0))  # dB per natural-log unit (speckle of mean one)


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


# Fitted by ``python -m fedrs.data.synth.write calibrate 3072``.
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


def _table() -> dict[str, np.ndarray]:
    classes = [LAND_COVER[name] for name in LABELS_19]
    return {
        "s2": np.array([c.s2 for c in classes], dtype=np.float32),
        "s1": np.array([c.s1 for c in classes], dtype=np.float32),
        "vegetation": np.array([c.vegetation for c in classes], dtype=np.float32),
        "canopy": np.array([c.canopy for c in classes], dtype=np.float32),
        "parcels": np.array([c.parcels for c in classes], dtype=np.float32),
        "roughness": np.array([c.roughness for c in classes], dtype=np.float32),
    }


# ---------------------------------------------------------------------------------------------
# Rows: names, labels, split, country, modalities


@dataclass(frozen=True)
class _Plan:
    """Everything about the patches except their pixels."""

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


def _plan(stats: SynthStats, patches: int, seed: int, s1_only: float, s2_only: float) -> _Plan:
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
    return _Plan(metadata, masks, country_names, month, epsg, ulx, uly, s2_folder, s1_folder)


# ---------------------------------------------------------------------------------------------
# Pixels


def _smooth_fields(
    rng: np.random.Generator, shape: tuple[int, ...], sigma: np.ndarray
) -> np.ndarray:
    """Gaussian random fields of unit variance, (*shape, 120, 120), smoothed by ``sigma`` px.

    Drawn in the Fourier domain; only frequencies below 1/8 cycle per pixel are drawn (the
    Gaussian filter of sigma >= 5 px leaves nothing above them), so the cost is one inverse FFT.
    """
    n, cut = PATCH_SIZE, 16
    fy = np.fft.fftfreq(n)[np.r_[0:cut, n - cut + 1 : n]]
    fx = np.fft.rfftfreq(n)[:cut]
    f2 = fy[:, None] ** 2 + fx[None, :] ** 2
    sig = sigma.reshape(sigma.shape + (1,) * (len(shape) - sigma.ndim) + (1, 1))
    gain = np.exp(-2.0 * np.pi**2 * sig**2 * f2).astype(np.float32)
    low = rng.standard_normal((*shape, 2 * cut - 1, cut, 2), dtype=np.float32)
    spectrum = np.zeros((*shape, n, n // 2 + 1), dtype=np.complex64)
    coeffs = (low[..., 0] + 1j * low[..., 1]) * gain
    spectrum[..., :cut, :cut] = coeffs[..., :cut, :]
    spectrum[..., n - cut + 1 :, :cut] = coeffs[..., cut:, :]
    field = np.fft.irfft2(spectrum, s=(n, n)).astype(np.float32)
    field -= field.mean(axis=(-2, -1), keepdims=True)
    field /= field.std(axis=(-2, -1), keepdims=True) + 1e-12
    return field


def _parcels(rng: np.random.Generator, batch: int, seeds: int = 24) -> np.ndarray:
    """Field-parcel texture: Voronoi cells of random points, one N(0, 1) value per cell."""
    half = PATCH_SIZE // 2
    points = rng.uniform(0, half, size=(batch, seeds, 2)).astype(np.float32)
    grid = np.arange(half, dtype=np.float32) + 0.5
    dy = grid[None, None, :, None] - points[:, :, 0, None, None]
    dx = grid[None, None, None, :] - points[:, :, 1, None, None]
    cell = np.argmin(dy * dy + dx * dx, axis=1)  # (B, 60, 60)
    values = rng.standard_normal((batch, seeds), dtype=np.float32)
    low = np.take_along_axis(values, cell.reshape(batch, -1), axis=1).reshape(batch, half, half)
    return low.repeat(2, axis=1).repeat(2, axis=2)


def _regions(rng: np.random.Generator, classes: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Region index map (B, 120 * 120): one coherent region per present label.

    ``classes`` (B, K) holds the class of each region slot (padded), ``count`` (B,) the number
    of used slots.  Region areas follow a Dirichlet draw (floored at MIN_REGION_FRACTION),
    reached by a few rounds of bias adjustment on smooth random fields (on a 60x60 subgrid).
    """
    batch, slots = classes.shape
    used = np.arange(slots)[None, :] < count[:, None]
    sigma = rng.uniform(6.0, 14.0, size=(batch, 1)).astype(np.float32)
    fields = _smooth_fields(rng, (batch, slots), sigma)
    coarse = np.ascontiguousarray(fields[..., ::2, ::2]).reshape(batch, slots, -1)
    share = rng.gamma(1.5, size=(batch, slots)) * used
    share = share / share.sum(axis=1, keepdims=True)
    share = MIN_REGION_FRACTION + (1 - MIN_REGION_FRACTION * count[:, None]) * share
    share = np.where(used, share, 1.0)
    bias = np.log(share)
    offsets = (np.arange(batch) * slots)[:, None]
    for _ in range(6):
        masked = np.where(used, bias, -np.inf).astype(np.float32)
        region = np.argmax(coarse + masked[:, :, None], axis=1)
        hits = np.bincount((region + offsets).ravel(), minlength=batch * slots)
        area = hits.reshape(batch, slots) / coarse.shape[-1]
        bias = bias + 0.6 * np.log(share / np.maximum(area, 2e-4))
    masked = np.where(used, bias, -np.inf).astype(np.float32)
    return np.argmax(fields.reshape(batch, slots, -1) + masked[:, :, None], axis=1)


def _block_mean(band: np.ndarray, factor: int) -> np.ndarray:
    b, h, w = band.shape
    return band.reshape(b, h // factor, factor, w // factor, factor).mean(axis=(2, 4))


def _render_raw(
    rng: np.random.Generator,
    masks: np.ndarray,
    month: np.ndarray,
    country: np.ndarray,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Uncalibrated pixels of a batch: 12 S2 bands at native size (B, h, w), S1 (B, 2, 120, 120).

    S2 values are positive reflectance-like numbers; S1 values are in dB.
    """
    table = _table()
    batch = len(masks)
    pixels = PATCH_SIZE * PATCH_SIZE
    present = ((masks[:, None] >> np.arange(len(LABELS_19))) & 1).astype(bool)
    count = present.sum(axis=1)
    slots = int(count.max())
    order = np.argsort(~present, axis=1, kind="stable")[:, :slots]
    classes = np.where(np.arange(slots)[None, :] < count[:, None], order, 0)
    region = _regions(rng, classes, count)  # (B, HW) slot of each pixel
    flat = region + (np.arange(batch) * slots)[:, None]  # index into (B * K) tables
    pixel_class = classes.ravel()[flat]

    # Season: greenness 1 at the peak month, 0 six months later.
    peak = np.array([_GREEN_PEAK_MONTH.get(str(c), 7) for c in country])
    green = 0.5 + 0.5 * np.cos(2 * np.pi * (month - peak) / 12.0)
    veg = table["vegetation"][classes]  # (B, K)
    dormancy = (veg * (1.0 - green[:, None])).astype(np.float32)
    log_signature = np.log(table["s2"][classes] * (1.0 + dormancy[..., None] * (_DORMANT - 1.0)))
    log_signature += (
        _PATCH_BRIGHTNESS * rng.standard_normal((batch, 1, 1), dtype=np.float32)
        + _REGION_BRIGHTNESS * rng.standard_normal((batch, slots, 1), dtype=np.float32)
        + _REGION_COLOUR * rng.standard_normal((batch, slots, 12), dtype=np.float32)
    )
    direction = veg[..., None] * _DENSITY + (1.0 - veg[..., None])  # (B, K, 12)
    fine = rng.standard_normal((batch, PATCH_SIZE, PATCH_SIZE), dtype=np.float32)
    fine = 0.5 * (
        fine + np.roll(fine, 1, axis=1) + np.roll(fine, 1, axis=2) + np.roll(fine, 1, (1, 2))
    )
    fine = fine.reshape(batch, pixels)
    parcels = _parcels(rng, batch).reshape(batch, pixels)
    texture = table["canopy"][pixel_class] * fine + table["parcels"][pixel_class] * parcels
    haze = np.exp(_HAZE_LOG_MEDIAN + _HAZE_LOG_SIGMA * rng.standard_normal(batch)).astype(
        np.float32
    )
    bands = []
    for i, band in enumerate(S2_BANDS):
        log_sig = log_signature[..., i].ravel()[flat]
        value = np.exp(log_sig + texture * direction[..., i].ravel()[flat])
        value = value.reshape(batch, PATCH_SIZE, PATCH_SIZE)
        factor = PATCH_SIZE // S2_PIXELS_PER_SIDE[S2_RESOLUTION_M[band]]
        if factor > 1:
            value = _block_mean(value, factor)
        noise = rng.standard_normal(value.shape, dtype=np.float32)
        bands.append(value * np.exp(_SENSOR_NOISE * noise) + haze[:, None, None] * _HAZE[i])

    s1_signature = table["s1"][classes] + (
        1.0 * rng.standard_normal((batch, slots, 1), dtype=np.float32)
        + 0.5 * rng.standard_normal((batch, slots, 2), dtype=np.float32)
        - 1.0 * dormancy[..., None]
    )
    roughness = table["roughness"][pixel_class] * (0.7 * fine + 0.5 * parcels)
    s1 = np.empty((batch, len(S1_BANDS), pixels), dtype=np.float32)
    for i in range(len(S1_BANDS)):
        speckle = rng.standard_gamma(_SPECKLE_LOOKS, size=(batch, pixels), dtype=np.float32)
        speckle /= _SPECKLE_LOOKS
        s1[:, i] = s1_signature[..., i].ravel()[flat] + roughness + _DB * np.log(speckle)
    return bands, s1.reshape(batch, len(S1_BANDS), PATCH_SIZE, PATCH_SIZE)


def _calibrate_s2(bands: list[np.ndarray], cal: Calibration) -> list[np.ndarray]:
    out = []
    for i, band in enumerate(bands):
        value = np.exp(cal.s2_log_offset[i] + cal.s2_power[i] * np.log(np.maximum(band, 1e-3)))
        out.append(np.clip(np.rint(value), 1, 65535).astype(np.uint16))
    return out


def _calibrate_s1(s1: np.ndarray, cal: Calibration) -> np.ndarray:
    scale = np.asarray(cal.s1_scale, dtype=np.float32)[None, :, None, None]
    offset = np.asarray(cal.s1_offset, dtype=np.float32)[None, :, None, None]
    return (s1 * scale + offset).astype(np.float32)


def _batch_rng(seed: int, start: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _STREAM_PIXELS, start // _BATCH]))


def fit_calibration(patches: int = 4096, seed: int = 0) -> Calibration:
    """Fit the per-band calibration on a pilot archive of ``patches`` patches.

    S2: for each band, the power ``p`` makes the coefficient of variation of ``raw ** p`` equal
    that of BigEarthNet (bisection), and the offset then matches the mean.  S1: an affine map
    in dB matches mean and standard deviation.
    """
    stats = load_stats()
    plan = _plan(stats, patches, seed, 0.0, 0.0)
    logs: list[list[np.ndarray]] = [[] for _ in S2_BANDS]
    pick = np.random.default_rng(seed)
    sample = 4096  # pixels per band and batch
    s1_sum = np.zeros(len(S1_BANDS))
    s1_sq = np.zeros(len(S1_BANDS))
    for start in range(0, patches, _BATCH):
        stop = start + _BATCH
        raw, s1 = _render_raw(
            _batch_rng(seed, start),
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


# ---------------------------------------------------------------------------------------------
# GeoTIFF


def geotiff_bytes(
    array: np.ndarray, *, epsg: int, ulx: float, uly: float, pixel_m: float, nodata: float | None
) -> bytes:
    """A single-band, uncompressed, north-up GeoTIFF of a 2-D uint16 or float32 array.

    Baseline TIFF (one strip) with the GeoTIFF tags ModelPixelScale, ModelTiepoint (upper-left
    corner, PixelIsArea) and a GeoKey directory naming the projected CRS by EPSG code; GDAL's
    nodata tag when ``nodata`` is given.
    """
    data = np.ascontiguousarray(array)
    if data.ndim != 2 or data.dtype not in (np.dtype("uint16"), np.dtype("float32")):
        raise InputError(f"expected a 2-D uint16 or float32 array, got {data.dtype} {data.shape}")
    if not 1024 <= epsg <= 32767:
        raise InputError(f"EPSG code of a projected CRS expected, not {epsg}")
    data = data.astype(data.dtype.newbyteorder("<"), copy=False)
    height, width = data.shape
    bits, sample_format = (16, 1) if data.dtype.kind == "u" else (32, 3)
    scale = struct.pack("<3d", pixel_m, pixel_m, 0.0)
    tiepoint = struct.pack("<6d", 0.0, 0.0, 0.0, ulx, uly, 0.0)
    geokeys = struct.pack("<16H", 1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, epsg)
    nodata_text = b"" if nodata is None else f"{nodata:g}".encode("ascii") + b"\0"
    entries: list[tuple[int, int, int, bytes]] = [  # tag, type, count, value bytes
        (256, 4, 1, struct.pack("<I", width)),
        (257, 4, 1, struct.pack("<I", height)),
        (258, 3, 1, struct.pack("<H", bits)),
        (259, 3, 1, struct.pack("<H", 1)),
        (262, 3, 1, struct.pack("<H", 1)),
        (273, 4, 1, b""),  # strip offset, filled below
        (277, 3, 1, struct.pack("<H", 1)),
        (278, 4, 1, struct.pack("<I", height)),
        (279, 4, 1, struct.pack("<I", data.nbytes)),
        (284, 3, 1, struct.pack("<H", 1)),
        (339, 3, 1, struct.pack("<H", sample_format)),
        (33550, 12, 3, scale),
        (33922, 12, 6, tiepoint),
        (34735, 3, 16, geokeys),
    ]
    if nodata_text:
        entries.append((42113, 2, len(nodata_text), nodata_text))
    ifd_size = 2 + 12 * len(entries) + 4
    extra_at = 8 + ifd_size
    extra = bytearray()
    fields = []
    for tag, kind, count, value in entries:
        if len(value) > 4:
            fields.append((tag, kind, count, struct.pack("<I", extra_at + len(extra))))
            extra += value
            extra += b"\0" * (len(extra) % 2)
        else:
            fields.append((tag, kind, count, value))
    data_at = extra_at + len(extra)
    data_at += -data_at % 8
    ifd = bytearray(struct.pack("<H", len(entries)))
    for tag, kind, count, value in fields:
        if tag == 273:
            value = struct.pack("<I", data_at)
        ifd += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\0")
    ifd += struct.pack("<I", 0)
    head = b"II" + struct.pack("<HI", 42, 8) + bytes(ifd) + bytes(extra)
    return head.ljust(data_at, b"\0") + data.tobytes()


# ---------------------------------------------------------------------------------------------
# Archive


def default_synthetic_root(patches: int, seed: int) -> Path:
    """Cache folder of the default synthetic archive.

    ``$FEDRS_CACHE_DIR/synthetic-<patches>-<seed>`` when the variable is set, else
    ``~/.cache/fedrs/synthetic-<patches>-<seed>``.
    """
    base = os.environ.get("FEDRS_CACHE_DIR")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "fedrs"
    return root / f"synthetic-{patches}-{seed}"


def _parameters(patches: int, seed: int, s1_only: float, s2_only: float) -> dict[str, Any]:
    return {
        "format": "fedrs-synthetic-bigearthnet",
        "version": SYNTH_VERSION,
        "patches": int(patches),
        "seed": int(seed),
        "s1_only_fraction": float(s1_only),
        "s2_only_fraction": float(s2_only),
    }


def read_marker(root: str | Path) -> dict[str, Any] | None:
    """The parameters recorded in a complete synthetic archive, or None."""
    path = Path(root) / MARKER
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_synthetic_archive(
    root: str | Path,
    *,
    patches: int,
    seed: int,
    s1_only_fraction: float = 0.0,
    s2_only_fraction: float = 0.0,
) -> bool:
    """Whether ``root`` holds a complete synthetic archive made with these parameters."""
    root = Path(root)
    marker = read_marker(root)
    if marker is None or (root / PARTIAL_MARKER).exists() or not (root / METADATA_FILE).is_file():
        return False
    wanted = _parameters(patches, seed, s1_only_fraction, s2_only_fraction)
    return all(marker.get(key) == value for key, value in wanted.items())


def check_output(root: str | Path) -> Path:
    """Check that a synthetic archive may be written to ``root``.

    ``root`` may be missing, an empty folder, or a folder holding a synthetic archive (complete
    or not), which writing replaces.

    Raises:
        InputError: ``root`` is a file, or a non-empty folder without a synthetic archive.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise InputError(f"{root}: exists and is not a folder")
    if root.is_dir() and any(root.iterdir()):
        if not ((root / MARKER).exists() or (root / PARTIAL_MARKER).exists()):
            raise InputError(
                f"{root}: folder is not empty and holds no synthetic archive; "
                "give a new or empty folder"
            )
    return root


def _prepare_output(root: Path) -> None:
    """Make ``root`` an empty place for an archive; clear a previous synthetic archive."""
    check_output(root)
    if root.is_dir():
        (root / MARKER).unlink(missing_ok=True)
        for name in (S2_DIR, S1_DIR):
            if (root / name).is_dir():
                shutil.rmtree(root / name)
        (root / METADATA_FILE).unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)


def _write_metadata(metadata: pd.DataFrame, path: Path) -> None:
    schema = pa.schema(
        [
            ("patch_id", pa.string()),
            ("labels", pa.list_(pa.string())),
            ("split", pa.string()),
            ("country", pa.string()),
            ("s1_name", pa.string()),
            ("s2v1_name", pa.string()),
            ("contains_seasonal_snow", pa.bool_()),
            ("contains_cloud_or_shadow", pa.bool_()),
            ("has_s1", pa.bool_()),
            ("has_s2", pa.bool_()),
        ]
    )
    table = pa.Table.from_pandas(
        metadata[list(METADATA_COLUMNS)], schema=schema, preserve_index=False
    )
    pq.write_table(table.replace_schema_metadata(None), path)


def _write_patch_files(
    root: Path, plan: _Plan, start: int, s2: Sequence[np.ndarray], s1: np.ndarray
) -> None:
    for j in range(s1.shape[0]):
        i = start + j
        epsg, ulx, uly = int(plan.epsg[i]), float(plan.ulx[i]), float(plan.uly[i])
        s2_folder = plan.s2_folder[i]
        if s2_folder is not None:
            folder = root / s2_folder
            folder.mkdir(parents=True, exist_ok=True)
            for b, band in enumerate(S2_BANDS):
                data = geotiff_bytes(
                    s2[b][j],
                    epsg=epsg,
                    ulx=ulx,
                    uly=uly,
                    pixel_m=float(S2_RESOLUTION_M[band]),
                    nodata=0,
                )
                (folder / f"{folder.name}_{band}.tif").write_bytes(data)
        s1_folder = plan.s1_folder[i]
        if s1_folder is not None:
            folder = root / s1_folder
            folder.mkdir(parents=True, exist_ok=True)
            for b, band in enumerate(S1_BANDS):
                data = geotiff_bytes(
                    s1[j, b], epsg=epsg, ulx=ulx, uly=uly, pixel_m=10.0, nodata=None
                )
                (folder / f"{folder.name}_{band}.tif").write_bytes(data)


def write_synthetic_archive(
    out: str | Path,
    *,
    patches: int,
    seed: int,
    s1_only_fraction: float = 0.0,
    s2_only_fraction: float = 0.0,
    progress: ProgressCallback | None = None,
) -> pd.DataFrame:
    """Write a synthetic BigEarthNet-like archive (v2.0 layout) into ``out``.

    Args:
        out: a new or empty folder, or one holding a synthetic archive (which is replaced).
        patches: number of patches (rows of ``metadata.parquet``).
        seed: random seed; the same seed gives the same files byte for byte.
        s1_only_fraction: share of patches with Sentinel-1 only.
        s2_only_fraction: share of patches with Sentinel-2 only.
        progress: called as ``progress(done, total)`` after each batch of patches.

    Returns:
        The metadata table written to ``out/metadata.parquet``.

    Raises:
        InputError: a bad parameter, or ``out`` is a file or a non-empty folder that holds no
            synthetic archive.
    """
    check_parameters(patches, seed, s1_only_fraction, s2_only_fraction)
    root = Path(out)
    plan = _plan(
        load_stats(), int(patches), int(seed), float(s1_only_fraction), float(s2_only_fraction)
    )
    _prepare_output(root)
    (root / PARTIAL_MARKER).write_text("writing\n", encoding="utf-8")
    for start in range(0, patches, _BATCH):
        stop = min(start + _BATCH, patches)
        raw, s1_raw = _render_raw(
            _batch_rng(seed, start),
            plan.masks[start:stop],
            plan.month[start:stop],
            plan.country[start:stop],
        )
        _write_patch_files(
            root, plan, start, _calibrate_s2(raw, CALIBRATION), _calibrate_s1(s1_raw, CALIBRATION)
        )
        if progress is not None:
            progress(stop, patches)
    _write_metadata(plan.metadata, root / METADATA_FILE)
    marker = _parameters(patches, seed, s1_only_fraction, s2_only_fraction)
    (root / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    (root / PARTIAL_MARKER).unlink()
    return plan.metadata


def ensure_synthetic_archive(
    root: str | Path | None = None,
    *,
    patches: int,
    seed: int,
    s1_only_fraction: float = 0.0,
    s2_only_fraction: float = 0.0,
    progress: ProgressCallback | None = None,
) -> Path:
    """Return a complete synthetic archive at ``root``, writing it only when needed.

    An archive already complete with the same parameters is returned as is (the cached default
    data); an incomplete one, or one made with other parameters, is rebuilt.

    Args:
        root: the archive folder; default :func:`default_synthetic_root` ``(patches, seed)``.
        patches, seed, s1_only_fraction, s2_only_fraction, progress: as for
            :func:`write_synthetic_archive`.

    Returns:
        The archive folder.
    """
    check_parameters(patches, seed, s1_only_fraction, s2_only_fraction)
    path = Path(root) if root is not None else default_synthetic_root(patches, seed)
    if not is_synthetic_archive(
        path,
        patches=patches,
        seed=seed,
        s1_only_fraction=s1_only_fraction,
        s2_only_fraction=s2_only_fraction,
    ):
        write_synthetic_archive(
            path,
            patches=patches,
            seed=seed,
            s1_only_fraction=s1_only_fraction,
            s2_only_fraction=s2_only_fraction,
            progress=progress,
        )
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fedrs.data.synth.write calibrate [PATCHES]``: print a fitted ``CALIBRATION``."""
    args = list(argv) if argv is not None else []
    if not args or args[0] != "calibrate":
        print("usage: python -m fedrs.data.synth.write calibrate [PATCHES]")
        return 2
    patches = int(args[1]) if len(args) > 1 else 4096
    cal = fit_calibration(patches)
    print(f"CALIBRATION = {cal!r}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
