"""The pixels of synthetic patches, before calibration.

A patch is cut into spatially coherent regions, one per label.  Each region carries its
class's appearance (:data:`LAND_COVER`): a Sentinel-2 spectral signature with seasonal
senescence, field-parcel and canopy texture, residual haze and sensor noise; a Sentinel-1
backscatter level with texture and speckle.  Patches are rendered in batches of
:data:`BATCH`, each batch from its own random stream (:func:`batch_rng`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrs.data.facts import (
    LABELS_19,
    PATCH_SIZE,
    S1_BANDS,
    S2_BANDS,
    S2_PIXELS_PER_SIDE,
    S2_RESOLUTION_M,
)
from fedrs.data.geotiff import block_mean

MIN_REGION_FRACTION = 0.05
"""Smallest share of a patch given to one of its labels."""

BATCH = 32
"""Patches rendered together; fixed so that the output does not depend on it."""

_SPECKLE_LOOKS = 4.4  # equivalent number of looks of Sentinel-1 IW GRDH
_STREAM_PIXELS = 2  # seed stream of the pixels (the rows draw from another)


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


def render_raw(
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
            value = block_mean(value, factor)
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


def batch_rng(seed: int, start: int) -> np.random.Generator:
    """The random stream of the batch of patches that starts at row ``start``."""
    return np.random.default_rng(np.random.SeedSequence([seed, _STREAM_PIXELS, start // BATCH]))
