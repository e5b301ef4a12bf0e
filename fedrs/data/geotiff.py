"""BigEarthNet patch files: read with rasterio, checked and upsampled to 120x120; written.

Reading: every failure (missing file, truncated or corrupt GeoTIFF, wrong shape, band count or
dtype) raises :class:`~fedrs.data.errors.CorruptPatchError` naming the file.

Writing (:func:`geotiff_bytes`, with :func:`crs_epsg` for a CRS given as text): the one GeoTIFF
writer of fedrs, for the synthetic archive and for reconstructed patches.  It encodes the
single-band, uncompressed files of BigEarthNet itself rather than through GDAL: a synthetic
archive is thousands of small files, and GDAL's cost per file (rasterio) made building one
2 to 2.5 times slower.

Between the 120x120 grid and the native grids of the 20 m and 60 m bands: :func:`upsample_s2`
(up) and :func:`block_mean` (down).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioError

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


def geotiff_bytes(
    array: np.ndarray,
    *,
    epsg: int | None = None,
    transform: Sequence[float] | None = None,
    geographic: bool = False,
    nodata: float | None = None,
) -> bytes:
    """A single-band, uncompressed GeoTIFF of a 2-D uint16 or float32 array.

    Baseline little-endian TIFF, one strip.  With ``epsg`` and ``transform`` the GeoTIFF tags:
    ModelPixelScale and ModelTiepoint (upper-left corner) for a north-up grid, else
    ModelTransformation; a GeoKey directory (PixelIsArea) naming the CRS by its EPSG code, as
    a projected CRS or, with ``geographic``, a geographic one.  Without them a TIFF with no
    georeference.  GDAL's nodata tag when ``nodata`` is given.

    Args:
        array: the band, (height, width) uint16 or float32.
        epsg: EPSG code of the CRS.
        transform: the six coefficients ``(a, b, c, d, e, f)`` of the affine map from pixel
            (column, row) to CRS coordinates (rasterio's ``dataset.transform``).
        geographic: the CRS is geographic (latitude / longitude), not projected.
        nodata: the nodata value, or None.

    Raises:
        InputError: not a 2-D uint16 or float32 array, an EPSG code outside 1024 .. 32767,
            only one of ``epsg`` and ``transform``, or a transform that is not six finite
            numbers.
    """
    data = np.ascontiguousarray(array)
    if data.ndim != 2 or data.dtype not in (np.dtype("uint16"), np.dtype("float32")):
        raise InputError(f"expected a 2-D uint16 or float32 array, got {data.dtype} {data.shape}")
    data = data.astype(data.dtype.newbyteorder("<"), copy=False)
    height, width = data.shape
    bits, sample_format = (16, 1) if data.dtype.kind == "u" else (32, 3)
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
        *_geotiff_tags(epsg, transform, geographic),
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


def _geotiff_tags(
    epsg: int | None, transform: Sequence[float] | None, geographic: bool
) -> list[tuple[int, int, int, bytes]]:
    """The GeoTIFF entries (tag, type, count, value bytes) of a georeference, in tag order."""
    if epsg is None and transform is None:
        return []
    if epsg is None or transform is None:
        raise InputError("a georeference needs both an EPSG code and a transform")
    if (
        isinstance(epsg, bool)
        or not isinstance(epsg, int | np.integer)
        or not 1024 <= epsg <= 32767
    ):
        raise InputError(f"EPSG code of a CRS expected (1024 .. 32767), not {epsg!r}")
    try:
        a, b, c, d, e, f = (float(x) for x in transform)
    except (TypeError, ValueError):
        raise InputError(
            f"transform must be 6 numbers (a, b, c, d, e, f), not {transform!r}"
        ) from None
    if not all(math.isfinite(x) for x in (a, b, c, d, e, f)):
        raise InputError(f"transform must be 6 finite numbers, not {transform!r}")
    if b == 0.0 and d == 0.0 and a > 0.0 and e < 0.0:  # north-up: pixel size and a tie point
        grid = [
            (33550, 12, 3, struct.pack("<3d", a, -e, 0.0)),
            (33922, 12, 6, struct.pack("<6d", 0.0, 0.0, 0.0, c, f, 0.0)),
        ]
    else:
        matrix = (a, b, 0.0, c, d, e, 0.0, f, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
        grid = [(34264, 12, 16, struct.pack("<16d", *matrix))]
    model, crs_key = (2, 2048) if geographic else (1, 3072)  # GTModelType, its CRS key
    keys = (1, 1, 0, 3, 1024, 0, 1, model, 1025, 0, 1, 1, crs_key, 0, 1, int(epsg))
    return [*grid, (34735, 3, 16, struct.pack("<16H", *keys))]


def crs_epsg(crs: str) -> tuple[int, bool]:
    """The EPSG code of a CRS (``"EPSG:n"`` or WKT) and whether it is geographic.

    Raises:
        InputError: the CRS cannot be read or has no EPSG code (the writer names a CRS by
            its code only).
    """
    try:
        parsed = CRS.from_user_input(crs)
    except CRSError as exc:
        raise InputError(f"unreadable CRS {crs!r} ({exc})") from None
    epsg = parsed.to_epsg()
    if epsg is None:
        raise InputError(f"a GeoTIFF is written with an EPSG code; this CRS has none: {crs!r}")
    return int(epsg), bool(parsed.is_geographic)


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
