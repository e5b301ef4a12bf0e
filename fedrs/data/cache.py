"""The fedrs cache: an archive converted to memory-mapped arrays (``fedrs prepare``).

Layout of a cache folder::

    fedrs-cache.json   format, version, counts, source (written last: a cache without it is
                       incomplete and is not recognised)
    index.parquet      normalised metadata + ``s2_row`` / ``s1_row`` (-1 where missing)
    s2_10m.npy         uint16 (N_s2, 4, 120, 120)   B02 B03 B04 B08
    s2_20m.npy         uint16 (N_s2, 6, 60, 60)     B05 B06 B07 B8A B11 B12
    s2_60m.npy         uint16 (N_s2, 2, 20, 20)     B01 B09
    s1.npy             float32 (N_s1, 2, 120, 120)  VV VH (dB)

S2 bands are kept at their native resolution and dtype (a third of the float32 size) and are
upsampled on read by the same code as the GeoTIFF path, so items are identical.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedrs.data.archive import PatchArchive
from fedrs.data.errors import ArchiveNotFoundError, CorruptPatchError
from fedrs.data.facts import PATCH_SIZE
from fedrs.data.geotiff import S2_GROUP_INDEX, S2_GROUPS, upsample_s2
from fedrs.data.metadata import normalize_metadata, read_parquet
from fedrs.errors import InputError

MARKER = "fedrs-cache.json"
FORMAT = "fedrs-cache"
VERSION = 1
_S2_FILES = {10: "s2_10m.npy", 20: "s2_20m.npy", 60: "s2_60m.npy"}
_S2_SIDE = {10: PATCH_SIZE, 20: PATCH_SIZE // 2, 60: PATCH_SIZE // 6}


class CachedArchive(PatchArchive):
    """An archive read from a fedrs cache (memory-mapped; no GeoTIFF is opened)."""

    layout = "cache"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / MARKER).is_file()

    @classmethod
    def open(cls, root: Path, metadata: str | Path | None, **kwargs: Any) -> CachedArchive:
        info = _read_marker(root)
        index = normalize_metadata(read_parquet(root / "index.parquet"), source=root)
        raw = read_parquet(root / "index.parquet")
        index["s2_row"] = raw["s2_row"].to_numpy(dtype=np.int64)
        index["s1_row"] = raw["s1_row"].to_numpy(dtype=np.int64)
        archive = cls(root, index, **kwargs)
        archive.info = info
        return archive

    def __init__(self, root: Path, metadata: pd.DataFrame, **kwargs: Any) -> None:
        self.info: dict[str, Any] = {}
        self._arrays = _open_arrays(root)
        super().__init__(root, metadata, **kwargs)

    def read_s2_native(self, row: int) -> dict[int, np.ndarray]:
        r = int(self.metadata.at[row, "s2_row"])
        return {res: self._arrays[f"s2_{res}"][r] for res in S2_GROUPS}

    def read_s1(self, row: int) -> np.ndarray:
        return np.asarray(self._arrays["s1"][int(self.metadata.at[row, "s1_row"])])

    def get_batch(self, rows: np.ndarray | list[int]) -> dict[str, Any]:
        """Several items at once, stacked: ``s1``/``s2`` (B, C, 120, 120) or None, ``labels``.

        Rows lacking a modality get zeros there; ``has_s1`` / ``has_s2`` (B,) bool tell which.
        """
        rows = np.asarray(rows, dtype=np.int64)
        meta = self.metadata
        out: dict[str, Any] = {
            "patch_id": meta["patch_id"].to_numpy()[rows].tolist(),
            "labels": torch.from_numpy(self._labels[rows]),
        }
        for modality in ("s1", "s2"):
            has = meta[f"has_{modality}"].to_numpy(dtype=bool)[rows]
            out[f"has_{modality}"] = torch.from_numpy(has)
            if not has.any():
                out[modality] = None
                continue
            source = meta[f"{modality}_row"].to_numpy()[rows][has]
            if modality == "s1":
                data = torch.from_numpy(np.asarray(self._arrays["s1"][source], dtype=np.float32))
            else:
                groups = {res: self._arrays[f"s2_{res}"][source] for res in S2_GROUPS}
                data = upsample_s2(groups, self.resample)  # type: ignore[arg-type]
            full = torch.zeros((len(rows), *data.shape[1:]), dtype=torch.float32)
            full[torch.from_numpy(has)] = data
            out[modality] = full
        return out


def _read_marker(root: Path) -> dict[str, Any]:
    path = root / MARKER
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CorruptPatchError(path, f"unreadable cache marker ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CorruptPatchError(path, "not a fedrs cache marker")
    if info.get("version") != VERSION:
        raise CorruptPatchError(
            path, f"cache format version {info.get('version')} (this fedrs reads {VERSION})"
        )
    return info


def _open_arrays(root: Path) -> dict[str, np.ndarray]:
    arrays = {}
    names = {f"s2_{res}": name for res, name in _S2_FILES.items()} | {"s1": "s1.npy"}
    for key, name in names.items():
        path = root / name
        try:
            arrays[key] = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise CorruptPatchError(path, f"unreadable cache array ({exc})") from None
    return arrays


def prepare_cache(
    archive: PatchArchive,
    out: str | Path,
    *,
    overwrite: bool = False,
    workers: int = 2,
    on_progress: Callable[[int], None] | None = None,
) -> Path:
    """Convert ``archive`` into a cache folder ``out`` (see the module docstring).

    The cache is written into ``out`` under temporary names and published by writing the marker
    last, so an interrupted run leaves no half cache that would be read as complete.  An existing
    non-empty ``out`` is refused unless ``overwrite`` is set (and it is a fedrs cache).
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists() and not (out / "index.parquet").exists():
            raise InputError(f"{out}: folder exists, is not empty and is not a fedrs cache")
        if not overwrite:
            raise InputError(f"{out}: a cache exists already (use --overwrite to replace it)")
        shutil.rmtree(out)
    if Path(archive.root).resolve() == out.resolve():
        raise InputError(f"{out}: the cache cannot be written into the archive itself")
    out.mkdir(parents=True, exist_ok=True)
    meta = archive.metadata.copy()
    has_s2 = meta["has_s2"].to_numpy(dtype=bool)
    has_s1 = meta["has_s1"].to_numpy(dtype=bool)
    s2_row = np.where(has_s2, np.cumsum(has_s2) - 1, -1)
    s1_row = np.where(has_s1, np.cumsum(has_s1) - 1, -1)
    n2, n1 = int(has_s2.sum()), int(has_s1.sum())
    s2 = {
        res: np.lib.format.open_memmap(
            out / _S2_FILES[res],
            mode="w+",
            dtype=np.uint16,
            shape=(n2, len(S2_GROUP_INDEX[res]), _S2_SIDE[res], _S2_SIDE[res]),
        )
        for res in S2_GROUPS
    }
    s1 = np.lib.format.open_memmap(
        out / "s1.npy", mode="w+", dtype=np.float32, shape=(n1, 2, PATCH_SIZE, PATCH_SIZE)
    )

    def copy(row: int) -> None:
        if has_s2[row]:
            groups = archive.read_s2_native(row)
            for res in S2_GROUPS:
                s2[res][s2_row[row]] = groups[res]
        if has_s1[row]:
            s1[s1_row[row]] = archive.read_s1(row)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for _ in pool.map(copy, range(len(meta))):
            if on_progress is not None:
                on_progress(1)
    for array in (*s2.values(), s1):
        array.flush()
    meta["s2_row"], meta["s1_row"] = s2_row, s1_row
    meta["labels"] = [list(map(str, v)) for v in meta["labels"]]
    meta.to_parquet(out / "index.parquet", index=False)
    info = {
        "format": FORMAT,
        "version": VERSION,
        "patches": len(meta),
        "with_s2": n2,
        "with_s1": n1,
        "source": str(Path(archive.root).resolve()),
        "source_layout": archive.layout,
        "modalities": list(archive.modalities),
    }
    (out / MARKER).write_text(json.dumps(info, indent=2), encoding="utf-8")
    return out


def require_cache(root: str | Path) -> Path:
    """Return ``root`` if it is a complete fedrs cache, else raise ArchiveNotFoundError."""
    path = Path(root)
    if not (path / MARKER).is_file():
        raise ArchiveNotFoundError(f"{path}: not a fedrs cache (no {MARKER})")
    return path
