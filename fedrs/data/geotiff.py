"""Reading BigEarthNet patch files with rasterio, checked and upsampled to 120x120.

Between the 120x120 grid and the native grids of the 20 m and 60 m bands: :func:`upsample_s2`
(up) and :func:`block_mean` (down).

Every failure (missing file, truncated or corrupt GeoTIFF, wrong shape, band count or dtype)
raises :class:`~fedrs.data.errors.CorruptPatchError` naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.errors import RasterioError

from fedrs.data.errors import CorruptPatchError
from fedrs.data.facts import PATCH_SIZE, S1_BANDS, S2_BANDS, S2_PIXELS_PER_SIDE, S2_RESOLUTION_M
from fedrs.errors import InputError

RESAMPLING = ("bilinear", "nearest")

# S2 bands grouped by resolution, in the order of S2_BANDS within each group.
S2_GROUPS: dict[int, tuple[str, ...]] = {
    res: tuple(b for b in S2_BANDS if S2_RESOLUTION_M[b] == res) for res in (10, 20, 60)
}
# Position of every band of each group in the 12-band output.
S2_GROUP_INDEX: dict[int, tuple[int, ...]] = {
    res: tuple(S2_BANDS.index(b) for b in bands) for res, bands in S2_GROUPS.items()
}


def check_resample(resample: str) -> str:
    """Return ``resample`` if it is a known upsampling mode, else raise InputError."""
    if resample not in RESAMPLING:
        raise InputError(f"resample must be one of {RESAMPLING}, not {resample!r}")
    return resample


def read_band(path: Path, *, size: int, dtype: str) -> np.ndarray:
    """Read a single-band GeoTIFF of ``size`` x ``size`` pixels and the given dtype.

    Floating-point bands must hold finite values: a NaN or an infinity in S1 backscatter is
    damage (one such pixel turns every loss of a training batch into NaN).
    """
    try:
        with rasterio.open(path) as src:
            if src.count != 1:
                raise CorruptPatchError(path, f"expected 1 band, found {src.count}")
            if (src.height, src.width) != (size, size):
                raise CorruptPatchError(
                    path, f"expected {size}x{size} pixels, found {src.height}x{src.width}"
                )
            if src.dtypes[0] != dtype:
                raise CorruptPatchError(path, f"expected dtype {dtype}, found {src.dtypes[0]}")
            band = src.read(1)
    except CorruptPatchError:
        raise
    except (RasterioError, OSError) as exc:
        reason = "file not found" if not path.exists() else f"unreadable GeoTIFF ({exc})"
        raise CorruptPatchError(path, reason) from None
    if band.dtype.kind == "f" and not np.isfinite(band).all():
        bad = int(np.count_nonzero(~np.isfinite(band)))
        raise CorruptPatchError(path, f"{bad} non-finite pixel value(s) (NaN or infinity)")
    return band


def read_s2_native(folder: Path, name: str) -> dict[int, np.ndarray]:
    """The 12 S2 bands of patch ``name`` at native resolution, grouped: {10: (4,120,120), ...}."""
    out = {}
    for res, bands in S2_GROUPS.items():
        size = S2_PIXELS_PER_SIDE[res]
        out[res] = np.stack(
            [read_band(folder / f"{name}_{band}.tif", size=size, dtype="uint16") for band in bands]
        )
    return out


def read_s1(folder: Path, name: str) -> np.ndarray:
    """The S1 [VV, VH] backscatter of patch ``name`` in dB, float32 (2, 120, 120)."""
    return np.stack(
        [
            read_band(folder / f"{name}_{band}.tif", size=PATCH_SIZE, dtype="float32")
            for band in S1_BANDS
        ]
    )


def _upsample_axis(x: np.ndarray, factor: int, axis: int) -> np.ndarray:
    """Half-pixel-centred bilinear upsampling of one axis by an integer factor.

    Output pixel ``o`` samples source coordinate ``(o + 0.5) / factor - 0.5``, clamped to the
    edges: the arithmetic of ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)``.  Each output phase ``o % factor`` is a fixed blend of two shifted
    copies of the edge-padded input, so the work is a few strided array operations.
    """
    x = np.moveaxis(x, axis, -1)
    n = x.shape[-1]
    padded = np.concatenate([x[..., :1], x, x[..., -1:]], axis=-1)
    left, centre, right = padded[..., :-2], padded[..., 1:-1], padded[..., 2:]
    out = np.empty((*x.shape[:-1], n * factor), dtype=np.float32)
    for phase in range(factor):
        d = (phase + 0.5) / factor - 0.5
        if d >= 0:
            out[..., phase::factor] = (1.0 - d) * centre + d * right
        else:
            out[..., phase::factor] = -d * left + (1.0 + d) * centre
    return np.moveaxis(out, -1, axis)


def block_mean(bands: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor`` x ``factor`` blocks of (..., H, W): a 120 x 120 grid to a coarser one.

    The dtype is kept (float32 stays float32).
    """
    *lead, height, width = bands.shape
    blocks = bands.reshape(*lead, height // factor, factor, width // factor, factor)
    return np.asarray(blocks.mean(axis=(-3, -1)))


def _upsample(band: np.ndarray, resample: str) -> np.ndarray:
    """Upsample (..., n, n) float32 to (..., 120, 120) by an integer factor."""
    factor = PATCH_SIZE // band.shape[-1]
    if resample == "nearest":
        return band.repeat(factor, axis=-2).repeat(factor, axis=-1)
    return _upsample_axis(_upsample_axis(band, factor, -1), factor, -2)


def upsample_s2(groups: dict[int, np.ndarray], resample: str) -> torch.Tensor:
    """Assemble native-resolution band groups into float32 (..., 12, 120, 120).

    Works on one patch (C, H, W) or a batch (B, C, H, W).  ``nearest`` repeats every pixel
    exactly (integer factors 2 and 6); ``bilinear`` is half-pixel-centred bilinear
    interpolation, the same whether the bands come from GeoTIFFs or from a cache.
    """
    lead = tuple(np.shape(groups[10])[:-3])
    out = np.empty((*lead, len(S2_BANDS), PATCH_SIZE, PATCH_SIZE), dtype=np.float32)
    for res, index in S2_GROUP_INDEX.items():
        band = np.asarray(groups[res], dtype=np.float32)
        if res != 10:
            band = _upsample(band, resample)
        for k, position in enumerate(index):
            out[..., position, :, :] = band[..., k, :, :]
    return torch.from_numpy(out)


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object; a missing or malformed file raises CorruptPatchError."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise CorruptPatchError(path, "file not found") from None
    except RecursionError:
        raise CorruptPatchError(path, "malformed JSON (nested too deeply)") from None
    except (ValueError, OSError) as exc:  # JSONDecodeError, UnicodeDecodeError, huge integers
        raise CorruptPatchError(path, f"malformed JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CorruptPatchError(path, "malformed JSON (expected an object)")
    return data
