"""Patch GeoTIFFs around a compressed archive: georeferences, query folders, reconstructed files.

* Where a patch's GeoTIFFs lie in an archive of the v1 or v2 layout (:class:`GeoTiffSource`), and
  the georeference of a patch: CRS, transform and size of one file per modality (Sentinel-2:
  the 10 m band B02, whose grid is the patch's 120 x 120 grid; Sentinel-1: VV).  A fedrs cache
  keeps no GeoTIFF; its marker names the archive it was made from, which is used while that
  folder still exists (:func:`geotiff_source`).
* A query patch given as folders of band files (v1 or v2 layout; :func:`read_patch_folders`).
* The files of a reconstructed patch in the v2 layout (:func:`write_s2_patch`,
  :func:`write_s1_patch`): Sentinel-2 bands at their native 10 / 20 / 60 m sizes (20 m and 60 m
  bands block-averaged from the 120 x 120 reconstruction), uint16 rounded and clipped;
  Sentinel-1 VV and VH float32 dB; each with the original georeference (its CRS named by EPSG
  code), its pixel size scaled for the coarser bands; written by
  :func:`fedrs.data.geotiff.geotiff_bytes`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.errors import RasterioError

from fedrs.container import GeoReference
from fedrs.data.archive import PatchArchive, V1Archive, V2Archive, product_folder
from fedrs.data.errors import CorruptPatchError
from fedrs.data.facts import PATCH_SIZE, S1_BANDS, S2_BANDS, S2_PIXELS_PER_SIDE, S2_RESOLUTION_M
from fedrs.data.geotiff import (
    block_mean,
    crs_epsg,
    geotiff_bytes,
    read_s1,
    read_s2_native,
    upsample_s2,
)
from fedrs.errors import InputError
from fedrs.io import check_name, inside

__all__ = [
    "GEOREF_BANDS",
    "PATCH_READERS",
    "PATCH_WRITERS",
    "GeoTiffSource",
    "QueryPatch",
    "geotiff_source",
    "read_georeference",
    "read_patch_folders",
    "s2_native_bands",
    "v2_patch_folders",
    "write_s1_patch",
    "write_s2_patch",
]

GEOREF_BANDS: dict[str, str] = {"s2": "B02", "s1": "VV"}
"""The band whose file gives a modality's georeference (a 120 x 120, 10 m grid)."""

_UINT16_MAX = float(np.iinfo(np.uint16).max)

# fedrs.data (and with it torch) is imported where used, so that fedrs.compression stays light.

# ------------------------------------------------------------------------------------------------
# Where the files of a patch are

Folders = Callable[[Path, str, str | None], dict[str, tuple[Path, str]]]
"""``folders(root, patch_id, s1_name)`` -> ``{modality: (patch folder, file name prefix)}``."""


def v2_patch_folders(root: Path, patch_id: str, s1_name: str | None) -> dict[str, tuple[Path, str]]:
    """``{modality: (patch folder, file name prefix)}`` of a patch in the v2 layout."""

    out = {"s2": (root / V2Archive.S2_DIR / product_folder(patch_id, 2) / patch_id, patch_id)}
    if s1_name:
        out["s1"] = (root / V2Archive.S1_DIR / product_folder(s1_name, 3) / s1_name, s1_name)
    return out


def _v1_folders(root: Path, patch_id: str, s1_name: str | None) -> dict[str, tuple[Path, str]]:
    out = {"s2": (root / V1Archive.S2_DIR / patch_id, patch_id)}
    if s1_name:
        out["s1"] = (root / V1Archive.S1_DIR / s1_name, s1_name)
    return out


LAYOUT_FOLDERS: dict[str, Folders] = {"v2": v2_patch_folders, "v1": _v1_folders}
"""Patch folders of each layout that stores GeoTIFFs, by layout name."""


@dataclass(frozen=True)
class GeoTiffSource:
    """An archive folder holding a patch's GeoTIFFs in a known layout (``v1`` or ``v2``)."""

    layout: str
    root: Path

    def georef_files(
        self, patch_id: str, s1_name: str | None, modalities: Sequence[str]
    ) -> dict[str, Path]:
        """The file that gives each modality's georeference (see :data:`GEOREF_BANDS`)."""
        folders = LAYOUT_FOLDERS[self.layout](self.root, patch_id, s1_name)
        return {
            m: folders[m][0] / f"{folders[m][1]}_{GEOREF_BANDS[m]}.tif"
            for m in modalities
            if m in folders
        }

    def georeference(
        self, patch_id: str, s1_name: str | None, modalities: Sequence[str]
    ) -> dict[str, GeoReference]:
        """Georeference per modality (modalities whose file has no CRS are left out).

        Raises:
            CorruptPatchError: a file is missing or unreadable (names it).
        """
        out = {}
        for modality, path in self.georef_files(patch_id, s1_name, modalities).items():
            georef = read_georeference(path)
            if georef is not None:
                out[modality] = georef
        return out


def geotiff_source(archive: PatchArchive) -> GeoTiffSource | None:
    """Where the GeoTIFFs of ``archive``'s patches are, or None.

    A v1 or v2 archive is its own source; a fedrs cache points to the archive it was made from
    (its marker's ``source`` and ``source_layout``) as long as that folder exists.
    """
    if archive.layout in LAYOUT_FOLDERS:
        return GeoTiffSource(archive.layout, Path(archive.root))
    info = getattr(archive, "info", None)
    if isinstance(info, dict):
        layout, source = info.get("source_layout"), info.get("source")
        if layout in LAYOUT_FOLDERS and isinstance(source, str) and Path(source).is_dir():
            return GeoTiffSource(str(layout), Path(source))
    return None


def read_georeference(path: Path) -> GeoReference | None:
    """CRS, transform and size of a GeoTIFF; None when it carries no CRS.

    Raises:
        CorruptPatchError: missing or unreadable file.
    """

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                if src.crs is None:
                    return None
                return GeoReference.coerce(
                    {
                        "crs": src.crs.to_string(),
                        "transform": tuple(src.transform)[:6],
                        "width": src.width,
                        "height": src.height,
                    },
                    str(path),
                )
    except (RasterioError, OSError) as exc:
        reason = "file not found" if not path.exists() else f"unreadable GeoTIFF ({exc})"
        raise CorruptPatchError(path, reason) from None
    except InputError as exc:
        raise CorruptPatchError(path, f"bad georeference ({exc})") from None


# ------------------------------------------------------------------------------------------------
# Query patches


@dataclass(frozen=True)
class QueryPatch:
    """A patch read from band files.

    Attributes:
        names: file name prefix per modality (the S2 patch name, the S1 name).
        images: physical values per modality, float32 ``(C, 120, 120)`` like archive items.
        folders: the folder each modality was read from.
        georef: georeference per modality (when the files carry one).
    """

    names: dict[str, str]
    images: dict[str, torch.Tensor]
    folders: dict[str, Path]
    georef: dict[str, GeoReference] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The S2 name when there is one, else the S1 name."""
        return self.names.get("s2") or next(iter(self.names.values()))


def _prefixes(folder: Path, band: str) -> list[str]:
    suffix = f"_{band}.tif"
    return sorted(p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}") if p.is_file())


def _read_s2(folder: Path, name: str, resample: str) -> torch.Tensor:
    return upsample_s2(read_s2_native(folder, name), resample)  # type: ignore[arg-type]


def _read_s1(folder: Path, name: str, resample: str) -> torch.Tensor:
    return torch.from_numpy(np.asarray(read_s1(folder, name), dtype=np.float32))


PATCH_READERS: dict[str, Callable[[Path, str, str], torch.Tensor]] = {
    "s2": _read_s2,
    "s1": _read_s1,
}
"""Reader of each modality's band files: ``reader(folder, name, resample)`` -> physical
values ``(C, 120, 120)`` as archive items hold them."""


def read_patch_folders(folders: Sequence[str | Path], *, resample: str = "bilinear") -> QueryPatch:
    """Read one patch from the band files in ``folders``.

    Each folder is a patch folder of the v1 or v2 layout: Sentinel-2 band files
    ``<name>_B01.tif`` ... ``<name>_B12.tif`` and/or Sentinel-1 files ``<name>_VV.tif``,
    ``<name>_VH.tif``.  Give two folders to combine the S2 and the S1 folder of one patch.

    Args:
        folders: one or more folders.
        resample: upsampling of the 20 m / 60 m bands (as the archive the model was applied to).

    Raises:
        InputError: a folder that is missing, holds no band files or several patches, or a
            modality found twice.
        CorruptPatchError: a band file is missing or malformed (names the file).
    """
    if not folders:
        raise InputError("no query patch folder given")
    names: dict[str, str] = {}
    found: dict[str, Path] = {}
    for entry in folders:
        folder = Path(entry)
        if not folder.is_dir():
            raise InputError(f"{folder}: query patch folder not found")
        hits = 0
        for modality, band in GEOREF_BANDS.items():
            prefixes = _prefixes(folder, band)
            if len(prefixes) > 1:
                raise InputError(f"{folder}: holds several patches ({', '.join(prefixes[:3])})")
            if not prefixes:
                continue
            if modality in names:
                raise InputError(
                    f"{folder}: a second {modality.upper()} patch (first: {found[modality]})"
                )
            names[modality], found[modality] = prefixes[0], folder
            hits += 1
        if not hits:
            raise InputError(
                f"{folder}: no Sentinel-2 band files (<name>_B02.tif, ...) or Sentinel-1 files "
                "(<name>_VV.tif, <name>_VH.tif)"
            )
    images: dict[str, torch.Tensor] = {}
    georef: dict[str, GeoReference] = {}
    for modality, folder in found.items():
        name = names[modality]
        images[modality] = PATCH_READERS[modality](folder, name, resample)
        ref = read_georeference(folder / f"{name}_{GEOREF_BANDS[modality]}.tif")
        if ref is not None:
            georef[modality] = ref
    return QueryPatch(names, images, found, georef)


# ------------------------------------------------------------------------------------------------
# Writing reconstructed patches (v2 layout)


def s2_native_bands(image: np.ndarray) -> dict[str, np.ndarray]:
    """The 12 bands of a (12, 120, 120) physical S2 image at native size, uint16.

    20 m bands are averaged over 2 x 2 blocks, 60 m bands over 6 x 6; values are rounded and
    clipped to 0 .. 65535.
    """

    if image.shape != (len(S2_BANDS), PATCH_SIZE, PATCH_SIZE):
        raise InputError(f"expected a (12, 120, 120) S2 image, got {image.shape}")
    data = np.asarray(image, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for res in (10, 20, 60):
        factor = PATCH_SIZE // S2_PIXELS_PER_SIDE[res]
        index = [i for i, b in enumerate(S2_BANDS) if S2_RESOLUTION_M[b] == res]
        group = data[index] if factor == 1 else block_mean(data[index], factor)
        group = np.clip(np.rint(group), 0.0, _UINT16_MAX).astype(np.uint16)
        for k, i in enumerate(index):
            out[S2_BANDS[i]] = group[k]
    return out


def _write_bands(
    folder: Path, name: str, bands: dict[str, np.ndarray], georef: GeoReference | None
) -> None:
    """Write ``<folder>/<name>_<band>.tif`` for each band, on ``georef``'s grid scaled to its size.

    Raises:
        InputError: ``georef``'s CRS has no EPSG code.
    """

    epsg, geographic = crs_epsg(georef.crs) if georef is not None else (None, False)
    folder.mkdir(parents=True, exist_ok=True)
    for band, data in bands.items():
        transform = None
        if georef is not None:
            scale = PATCH_SIZE // data.shape[0]  # the pixels of a 20 m or 60 m band are larger
            a, b, c, d, e, f = georef.transform
            transform = (a * scale, b * scale, c, d * scale, e * scale, f)
        tiff = geotiff_bytes(data, epsg=epsg, transform=transform, geographic=geographic)
        (folder / f"{name}_{band}.tif").write_bytes(tiff)


def write_s2_patch(
    root: Path, patch_id: str, image: np.ndarray, georef: GeoReference | None
) -> Path:
    """Write ``BigEarthNet-S2/<product>/<patch_id>/<patch_id>_<band>.tif`` (12 files).

    Args:
        root: the output archive folder.
        patch_id: the S2 patch name.
        image: physical (12, 120, 120) values.
        georef: the 10 m grid of the patch, or None (files without georeference).

    Returns:
        The patch folder.

    Raises:
        InputError: a name that cannot name a file, a folder that would lie outside ``root``,
            or a CRS without an EPSG code.
    """
    check_name(patch_id, "patch id")
    folder = v2_patch_folders(root, patch_id, None)["s2"][0]
    inside(root, folder)
    _write_bands(folder, patch_id, s2_native_bands(image), georef)
    return folder


def write_s1_patch(
    root: Path, s1_name: str, image: np.ndarray, georef: GeoReference | None
) -> Path:
    """Write ``BigEarthNet-S1/<product>/<s1_name>/<s1_name>_{VV,VH}.tif`` (float32 dB).

    Returns:
        The patch folder.

    Raises:
        InputError: a name that cannot name a file, a folder that would lie outside ``root``,
            or a CRS without an EPSG code.
    """

    if image.shape != (len(S1_BANDS), PATCH_SIZE, PATCH_SIZE):
        raise InputError(f"expected a (2, 120, 120) S1 image, got {image.shape}")
    check_name(s1_name, "S1 name")
    folder = v2_patch_folders(root, s1_name, s1_name)["s1"][0]
    inside(root, folder)
    bands = {
        band: np.ascontiguousarray(image[b], dtype=np.float32) for b, band in enumerate(S1_BANDS)
    }
    _write_bands(folder, s1_name, bands, georef)
    return folder


PatchWriter = Callable[[Path, str, np.ndarray, GeoReference | None], Path]
"""``writer(root, name, physical image, georeference)`` -> the patch folder it wrote."""

PATCH_WRITERS: dict[str, PatchWriter] = {"s2": write_s2_patch, "s1": write_s1_patch}
"""Writer of each modality's files in the v2 layout (S2 named by patch id, S1 by S1 name)."""
