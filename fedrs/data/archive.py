"""BigEarthNet archives as torch datasets: the v1.0 layout, the v2.0 layout and the fedrs cache.

BigEarthNet-MM (v1.0) holds 590,326 pairs of Sentinel-1 / Sentinel-2 patches of 1.2 x 1.2 km
over 10 European countries (Jun 2017 - May 2018); v2.0 (reBEN) re-cuts 549,488 of them and gives
labels, split and country in one ``metadata.parquet``.  Sentinel-2: 12 L2A bands (B01..B12 without
B10), uint16 surface reflectance x 10000, 10 m bands 120x120, 20 m 60x60, 60 m 20x20.
Sentinel-1: VV and VH GRD backscatter in dB, float32 120x120.  Labels: 19 classes of the
BigEarthNet nomenclature (multi-label), derived from CORINE Land Cover 2018.

Item ``i`` of an archive is a dict: ``patch_id`` (S2 name; the S1 name when only S1 exists),
``s2`` float32 tensor (12, 120, 120) in :data:`~fedrs.data.facts.S2_BANDS` order or ``None``,
``s1`` float32 tensor (2, 120, 120) [VV, VH] in dB or ``None``, ``labels`` float32 (19,) multi-hot
in :data:`~fedrs.data.facts.LABELS_19` order.  Values are the files' physical values (S2 digital
numbers, S1 dB); 20 m and 60 m bands are upsampled to 120x120.

Citation: Sumbul et al., "BigEarthNet-MM", IEEE GRSM 2021; Clasen et al., "reBEN", 2024.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from fedrs.data.errors import ArchiveNotFoundError, CorruptPatchError
from fedrs.data.facts import LABEL_43_TO_19, LABELS_19
from fedrs.data.geotiff import check_resample, read_json, read_s1, read_s2_native, upsample_s2
from fedrs.data.metadata import (
    SPLIT_ALIASES,
    labels_matrix,
    load_metadata,
    multi_hot,
    normalize_metadata,
    season_of,
)
from fedrs.errors import InputError

MODALITIES = ("s1", "s2")
ON_ERROR = ("raise", "skip")
Item = dict[str, Any]


def check_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
    """Validate and order a modality selection (subset of ``("s1", "s2")``)."""
    chosen = tuple(m for m in MODALITIES if m in modalities)
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not chosen:
        raise InputError(f"modalities must be a non-empty subset of {MODALITIES}, not {modalities}")
    return chosen


class PatchArchive(Dataset[Item]):
    """Base of all layouts: metadata filtering, labels, items, skip-on-error reporting."""

    layout: ClassVar[str] = ""

    def __init__(
        self,
        root: Path,
        metadata: pd.DataFrame,
        *,
        modalities: Sequence[str],
        split: str | None,
        resample: str = "bilinear",
        on_error: str,
    ) -> None:
        self.root = root
        self.modalities = check_modalities(modalities)
        self.resample = check_resample(resample)
        if on_error not in ON_ERROR:
            raise InputError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")
        self.on_error = on_error
        meta = metadata
        if split is not None:
            split = SPLIT_ALIASES.get(split, split)
            meta = meta[meta["split"] == split]
        wanted = np.zeros(len(meta), dtype=bool)
        for modality in self.modalities:
            wanted |= meta[f"has_{modality}"].to_numpy(dtype=bool)
        meta = meta[wanted].reset_index(drop=True)
        if "s1" not in self.modalities:
            meta["has_s1"] = False
        if "s2" not in self.modalities:
            meta["has_s2"] = False
        self.metadata: pd.DataFrame = meta
        self._labels = labels_matrix(meta["labels"])
        self._index_columns()
        self.skipped: list[tuple[str, str]] = []
        if on_error == "skip":
            self._drop_bad_patches()

    # -- per-layout readers -------------------------------------------------------------
    def read_s2_native(self, row: int) -> dict[int, np.ndarray]:
        """S2 bands of row ``row`` at native resolution, grouped by resolution (10, 20, 60)."""
        raise NotImplementedError

    def read_s1(self, row: int) -> np.ndarray:
        """S1 [VV, VH] of row ``row``, float32 (2, 120, 120) in dB."""
        raise NotImplementedError

    def _read_s2(self, row: int) -> torch.Tensor:
        return upsample_s2(self.read_s2_native(row), self.resample)  # type: ignore[arg-type]

    def _read_s1(self, row: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.read_s1(row), dtype=np.float32))

    # -- dataset protocol -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.metadata)

    def __getitem__(self, index: int) -> Item:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for an archive of {len(self)} patches")
        row = int(index) % len(self)
        return {
            "patch_id": self._patch_ids[row],
            "s2": self._read_s2(row) if self._has_s2[row] else None,
            "s1": self._read_s1(row) if self._has_s1[row] else None,
            "labels": torch.from_numpy(self._labels[row].copy()),
        }

    @property
    def labels(self) -> np.ndarray:
        """(N, 19) multi-hot float32 labels of all patches."""
        return self._labels

    def _drop_bad_patches(self) -> None:
        """Read every patch once; drop the ones that fail, and report them (never silently)."""
        good = np.ones(len(self.metadata), dtype=bool)
        for row in range(len(self.metadata)):
            try:
                self[row]
            except CorruptPatchError as exc:
                good[row] = False
                self.skipped.append((str(self.metadata.at[row, "patch_id"]), str(exc)))
        if self.skipped:
            self._keep_rows(good)
            warnings.warn(
                f"{self.root}: skipped {len(self.skipped)} bad patch(es): "
                + "; ".join(f"{pid} ({why})" for pid, why in self.skipped[:5])
                + (" ..." if len(self.skipped) > 5 else ""),
                stacklevel=3,
            )

    def _keep_rows(self, keep: np.ndarray) -> None:
        self.metadata = self.metadata[keep].reset_index(drop=True)
        self._labels = self._labels[keep]
        self._index_columns()

    def _index_columns(self) -> None:
        """Plain arrays of the columns read per item (a DataFrame lookup costs microseconds)."""
        self._patch_ids = self.metadata["patch_id"].astype(str).tolist()
        self._has_s1 = self.metadata["has_s1"].to_numpy(dtype=bool)
        self._has_s2 = self.metadata["has_s2"].to_numpy(dtype=bool)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, patches={len(self)}, "
            f"modalities={self.modalities}, resample={self.resample!r})"
        )


class V2Archive(PatchArchive):
    """The BigEarthNet v2.0 (reBEN) layout, also written by ``fedrs synth``.

    ``BigEarthNet-S2/<product>/<patch_id>/<patch_id>_<band>.tif``,
    ``BigEarthNet-S1/<product>/<s1_name>/<s1_name>_{VV,VH}.tif`` and ``metadata.parquet`` (in the
    root or given).  Only patches found on disk are part of the archive; a row whose S2 folder
    is absent but whose S1 folder exists is an S1-only patch (its ``patch_id`` is the S1 name).
    """

    layout = "v2"
    S2_DIR = "BigEarthNet-S2"
    S1_DIR = "BigEarthNet-S1"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / cls.S2_DIR).is_dir() or (root / cls.S1_DIR).is_dir()

    @classmethod
    def open(cls, root: Path, metadata: str | Path | None, **kwargs: Any) -> V2Archive:
        meta_path = Path(metadata) if metadata is not None else root / "metadata.parquet"
        if not meta_path.exists():
            raise ArchiveNotFoundError(
                f"{root}: v2 layout without metadata.parquet; pass metadata=<path> "
                "(the official metadata.parquet is a separate download)"
            )
        meta = load_metadata(meta_path)
        s2_found = _folders_two_deep(root / cls.S2_DIR)
        s1_found = _folders_two_deep(root / cls.S1_DIR)
        has_s2 = meta["patch_id"].isin(s2_found).to_numpy() & meta["has_s2"].to_numpy(dtype=bool)
        has_s1 = meta["s1_name"].isin(s1_found).to_numpy() & meta["has_s1"].to_numpy(dtype=bool)
        meta = meta.assign(has_s1=has_s1, has_s2=has_s2)
        s1_only = has_s1 & ~has_s2
        meta.loc[s1_only, "patch_id"] = meta.loc[s1_only, "s1_name"]
        meta = meta[has_s1 | has_s2].drop_duplicates("patch_id").reset_index(drop=True)
        return cls(root, meta, **kwargs)

    def read_s2_native(self, row: int) -> dict[int, np.ndarray]:
        pid = str(self.metadata.at[row, "patch_id"])
        return read_s2_native(self.root / self.S2_DIR / product_folder(pid, 2) / pid, pid)

    def read_s1(self, row: int) -> np.ndarray:
        name = str(self.metadata.at[row, "s1_name"])
        return read_s1(self.root / self.S1_DIR / product_folder(name, 3) / name, name)


class V1Archive(PatchArchive):
    """The BigEarthNet v1.0 layout (BigEarthNet-MM): labels from the per-patch JSON files.

    ``BigEarthNet-v1.0/<S2 name>/<S2 name>_<band>.tif`` + ``<S2 name>_labels_metadata.json`` and
    ``BigEarthNet-S1-v1.0/<S1 name>/<S1 name>_{VV,VH}.tif`` + ``_labels_metadata.json`` whose
    ``corresponding_s2_patch`` pairs it with its S2 patch.  43 CORINE class names are mapped to
    the 19 classes.  Split comes from official ``train/val/test`` CSV files in the root (plain or
    ``.bz2``, optionally prefixed ``v1-``) when present; the season from the acquisition date.
    """

    layout = "v1"
    S2_DIR = "BigEarthNet-v1.0"
    S1_DIR = "BigEarthNet-S1-v1.0"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / cls.S2_DIR).is_dir() or (root / cls.S1_DIR).is_dir()

    @classmethod
    def open(cls, root: Path, metadata: str | Path | None, **kwargs: Any) -> V1Archive:
        rows: dict[str, dict[str, Any]] = {}
        s2_dir, s1_dir = root / cls.S2_DIR, root / cls.S1_DIR
        for folder in _subfolders(s2_dir):
            name = folder.name
            labels = _labels_19(folder / f"{name}_labels_metadata.json")
            rows[name] = {"patch_id": name, "s1_name": None, "labels": labels, "has_s2": True}
        for folder in _subfolders(s1_dir):
            name = folder.name
            path = folder / f"{name}_labels_metadata.json"
            info = read_json(path)
            s2_name = info.get("corresponding_s2_patch")
            if s2_name is not None and not isinstance(s2_name, str):
                raise CorruptPatchError(path, "corresponding_s2_patch is not a string")
            if s2_name in rows:
                rows[s2_name]["s1_name"] = name
            else:
                labels = _labels_19(path, info)
                rows[name] = {"patch_id": name, "s1_name": name, "labels": labels, "has_s2": False}
        if not rows:
            raise ArchiveNotFoundError(f"{root}: v1 layout folders hold no patch folders")
        meta = pd.DataFrame(list(rows.values()))
        meta["has_s1"] = meta["s1_name"].notna()
        meta["split"] = meta["patch_id"].map(_v1_splits(root))
        meta["season"] = [season_of(p) for p in meta["patch_id"]]
        meta["country"] = None
        extra = _v1_country_season(root, metadata)
        if extra is not None:
            meta["country"] = meta["patch_id"].map(extra["country"])
            known = meta["patch_id"].map(extra["season"])
            meta["season"] = known.where(known.notna(), meta["season"])
        meta = normalize_metadata(meta.sort_values("patch_id"), source=root)
        return cls(root, meta, **kwargs)

    def read_s2_native(self, row: int) -> dict[int, np.ndarray]:
        pid = str(self.metadata.at[row, "patch_id"])
        return read_s2_native(self.root / self.S2_DIR / pid, pid)

    def read_s1(self, row: int) -> np.ndarray:
        name = str(self.metadata.at[row, "s1_name"])
        return read_s1(self.root / self.S1_DIR / name, name)


def _labels_19(path: Path, info: dict[str, Any] | None = None) -> tuple[str, ...]:
    """19-class names of a v1 ``labels_metadata.json`` (43-class CORINE names mapped)."""
    info = read_json(path) if info is None else info
    labels = info.get("labels")
    if not isinstance(labels, list) or not all(isinstance(n, str) for n in labels):
        raise CorruptPatchError(path, "'labels' is missing or not a list of class names")
    unknown = [n for n in labels if n not in LABEL_43_TO_19]
    if unknown:
        raise CorruptPatchError(path, f"unknown 43-class label(s) {unknown}")
    mapped = {LABEL_43_TO_19[n] for n in labels} - {None}
    vec = multi_hot([n for n in mapped if n is not None], source=path)
    return tuple(LABELS_19[i] for i in np.flatnonzero(vec))


def _v1_splits(root: Path) -> dict[str, str]:
    split_of: dict[str, str] = {}
    for split, stem in (("train", "train"), ("validation", "val"), ("test", "test")):
        for candidate in (f"{stem}.csv", f"{stem}.csv.bz2", f"v1-{stem}.csv", f"v1-{stem}.csv.bz2"):
            path = root / candidate
            if path.exists():
                try:
                    names = pd.read_csv(path, header=None)[0].astype(str)
                except Exception as exc:
                    raise CorruptPatchError(path, f"unreadable split CSV ({exc})") from None
                split_of.update(dict.fromkeys(names, split))
                break
    return split_of


def _v1_country_season(root: Path, metadata: str | Path | None) -> pd.DataFrame | None:
    """Country and season per S2 name from the official v1 name/country/season CSV, if any."""
    candidates = [Path(metadata)] if metadata is not None else []
    candidates += [
        root / n for n in ("s1_s2_name_country_season.csv", "v1-s1_s2_name_country_season.csv.bz2")
    ]
    for path in candidates:
        if path.exists():
            try:
                table = pd.read_csv(path)
                return table.set_index("s2_name")[["country", "season"]]
            except Exception as exc:
                raise CorruptPatchError(path, f"unreadable country/season CSV ({exc})") from None
    if metadata is not None:
        raise CorruptPatchError(metadata, "file not found")
    return None


def _subfolders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir())


def _folders_two_deep(folder: Path) -> set[str]:
    """Names of ``folder/<product>/<patch>`` directories (one scandir per product)."""

    found: set[str] = set()
    if not folder.is_dir():
        return found
    with os.scandir(folder) as products:
        for product in products:
            if product.is_dir():
                with os.scandir(product.path) as patches:
                    found.update(p.name for p in patches if p.is_dir())
    return found


_TRAILING = {2: re.compile(r"_\d+_\d+$"), 3: re.compile(r"_[^_]+_\d+_\d+$")}


def product_folder(name: str, parts: int) -> str:
    """Product folder of a patch name: the name without its trailing ``parts`` fields."""
    return _TRAILING[parts].sub("", name)


LayoutOpener = Callable[..., PatchArchive]


def _layouts() -> list[tuple[Callable[[Path], bool], LayoutOpener]]:
    from fedrs.data.cache import CachedArchive  # cycle: fedrs.data.cache imports this module

    return [
        (CachedArchive.detect, CachedArchive.open),
        (V2Archive.detect, V2Archive.open),
        (V1Archive.detect, V1Archive.open),
    ]


def open_archive(
    root: str | Path,
    *,
    modalities: Sequence[str] = MODALITIES,
    split: str | None = None,
    resample: str | None = None,
    metadata: str | Path | None = None,
    on_error: str = "raise",
) -> PatchArchive:
    """Open a BigEarthNet archive in any layout fedrs knows (v1.0, v2.0, synthetic, cache).

    Args:
        root: the archive folder (holding ``BigEarthNet-v1.0/``, ``BigEarthNet-S2/``, ... or a
            fedrs cache written by ``fedrs prepare``).
        modalities: which of ``("s1", "s2")`` to read; patches with none of them are left out.
        split: ``train``, ``validation`` (or ``val``), ``test``, or None for all.
        resample: upsampling of the 20 m / 60 m bands: ``bilinear`` (default) or ``nearest``;
            a cache answers with the mode it was prepared with (another mode is refused).
        metadata: the v2 ``metadata.parquet`` when it is not in ``root``.
        on_error: ``raise`` (default) or ``skip``: read every patch once and leave out the ones
            whose files are bad; they are listed in ``archive.skipped`` and reported by a warning.

    Raises:
        ArchiveNotFoundError: ``root`` holds no known layout.
        CorruptPatchError: a file is missing or malformed (names the file).
    """
    path = Path(root)
    if not path.is_dir():
        raise ArchiveNotFoundError(f"{path}: archive folder not found")
    options: dict[str, Any] = {"modalities": modalities, "split": split, "on_error": on_error}
    if resample is not None:
        options["resample"] = resample
    for detect, opener in _layouts():
        if detect(path):
            return opener(path, metadata, **options)
    raise ArchiveNotFoundError(
        f"{path}: no BigEarthNet layout found (expected BigEarthNet-S2/ or BigEarthNet-S1/ "
        "(v2), BigEarthNet-v1.0/ or BigEarthNet-S1-v1.0/ (v1), or a fedrs cache)"
    )
