"""The fedrs cache: an archive converted to memory-mapped arrays (``fedrs prepare``).

Layout of a cache folder::

    fedrs-cache.json   format, version, counts, source, resample (written last: a cache
                       without it is incomplete and is not recognised)
    index.parquet      normalised metadata + ``s2_row`` / ``s1_row`` (-1 where missing)
    s2.npy             float32 (N_s2, 12, 120, 120)  S2 bands in S2_BANDS order, upsampled
    s1.npy             float32 (N_s1, 2, 120, 120)   VV VH (dB)

The arrays hold exactly the items the source archive returns (S2 upsampled to 120x120 with the
``resample`` mode recorded in the marker), so reading an item is one contiguous copy: 806 kB
per patch with both modalities.  A cache answers only for the upsampling it was made with.
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
from fedrs.data.errors import CorruptPatchError
from fedrs.data.facts import PATCH_SIZE, S1_BANDS, S2_BANDS
from fedrs.data.metadata import normalize_metadata, read_parquet
from fedrs.errors import InputError

MARKER = "fedrs-cache.json"
FORMAT = "fedrs-cache"
VERSION = 1
_CHANNELS = {"s1": len(S1_BANDS), "s2": len(S2_BANDS)}


class CachedArchive(PatchArchive):
    """An archive read from a fedrs cache (memory-mapped; no GeoTIFF is opened)."""

    layout = "cache"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / MARKER).is_file()

    @classmethod
    def open(cls, root: Path, metadata: str | Path | None, **kwargs: Any) -> CachedArchive:
        info = _read_marker(root)
        if kwargs.get("resample", info["resample"]) != info["resample"]:
            raise InputError(
                f"{root}: this cache holds {info['resample']}-upsampled bands, not "
                f"{kwargs['resample']}; prepare another with --resample {kwargs['resample']}"
            )
        kwargs["resample"] = info["resample"]
        path = root / "index.parquet"
        raw = read_parquet(path)
        rows = {}
        for column in ("s2_row", "s1_row"):
            if column not in raw.columns or raw[column].dtype.kind not in "iu":
                raise CorruptPatchError(path, f"no integer column {column!r}")
            rows[column] = raw[column].to_numpy(dtype=np.int64)
        index = normalize_metadata(raw.drop(columns=list(rows)), source=root)
        index["s2_row"], index["s1_row"] = rows["s2_row"], rows["s1_row"]
        archive = cls(root, index, **kwargs)
        archive.info = info
        return archive

    def __init__(self, root: Path, metadata: pd.DataFrame, **kwargs: Any) -> None:
        self.info: dict[str, Any] = {}
        self._arrays = _open_arrays(root)
        super().__init__(root, metadata, **kwargs)

    def _index_columns(self) -> None:
        super()._index_columns()
        self._s2_rows = self.metadata["s2_row"].to_numpy(dtype=np.int64)
        self._s1_rows = self.metadata["s1_row"].to_numpy(dtype=np.int64)
        for modality, rows, has in (
            ("s2", self._s2_rows, self._has_s2),
            ("s1", self._s1_rows, self._has_s1),
        ):
            used = rows[has]
            count = len(self._arrays[modality])
            if used.size and (used.min() < 0 or used.max() >= count):
                raise CorruptPatchError(
                    self.root / "index.parquet",
                    f"{modality}_row values outside the {count} rows of {modality}.npy",
                )

    def _read_s2(self, row: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self._arrays["s2"][self._s2_rows[row]]))

    def _read_s1(self, row: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self._arrays["s1"][self._s1_rows[row]]))

    def get_batch(self, rows: np.ndarray | list[int]) -> dict[str, Any]:
        """Several items at once, stacked: ``s1``/``s2`` (B, C, 120, 120) or None, ``labels``.

        Rows lacking a modality get zeros there; ``has_s1`` / ``has_s2`` (B,) bool tell which.
        """
        rows = np.asarray(rows, dtype=np.int64)
        out: dict[str, Any] = {
            "patch_id": [self._patch_ids[r] for r in rows],
            "labels": torch.from_numpy(self._labels[rows]),
        }
        for modality in ("s1", "s2"):
            has = (self._has_s1 if modality == "s1" else self._has_s2)[rows]
            out[f"has_{modality}"] = torch.from_numpy(has)
            if not has.any():
                out[modality] = None
                continue
            source = (self._s1_rows if modality == "s1" else self._s2_rows)[rows]
            full = np.zeros((len(rows), _CHANNELS[modality], PATCH_SIZE, PATCH_SIZE), np.float32)
            array = self._arrays[modality]
            for k in np.flatnonzero(has):  # one contiguous copy per patch
                full[k] = array[source[k]]
            out[modality] = torch.from_numpy(full)
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
    for key in _CHANNELS:
        path = root / f"{key}.npy"
        try:
            arrays[key] = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise CorruptPatchError(path, f"unreadable cache array ({exc})") from None
        shape = (_CHANNELS[key], PATCH_SIZE, PATCH_SIZE)
        if arrays[key].dtype != np.float32 or arrays[key].shape[1:] != shape:
            raise CorruptPatchError(
                path,
                f"expected float32 (N, {', '.join(map(str, shape))}), got "
                f"{arrays[key].dtype} {arrays[key].shape}",
            )
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
    arrays = {
        modality: np.lib.format.open_memmap(
            out / f"{modality}.npy",
            mode="w+",
            dtype=np.float32,
            shape=(count, _CHANNELS[modality], PATCH_SIZE, PATCH_SIZE),
        )
        for modality, count in (("s2", n2), ("s1", n1))
    }
    target = {"s2": s2_row, "s1": s1_row}

    def copy(row: int) -> None:
        item = archive[row]
        for modality, array in arrays.items():
            if item[modality] is not None:
                array[target[modality][row]] = item[modality].numpy()

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for _ in pool.map(copy, range(len(meta))):
            if on_progress is not None:
                on_progress(1)
    for array in arrays.values():
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
        "resample": archive.resample,
    }
    (out / MARKER).write_text(json.dumps(info, indent=2), encoding="utf-8")
    return out
