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

A cache is built in a hidden folder beside its target and moved into place when complete; only a
folder that carries the marker is ever replaced (``overwrite``), and only once the new cache is
whole, so an interrupted build leaves the old cache as it was.
"""

from __future__ import annotations

import json
import os
import secrets
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
from fedrs.io import atomic_write_text, sync_folder

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


def is_cache(folder: str | Path) -> bool:
    """Whether ``folder`` carries a fedrs cache marker (what ``--overwrite`` may replace)."""
    path = Path(folder) / MARKER
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("format") == FORMAT


def check_cache_target(
    out: str | Path, *, source: str | Path | None = None, overwrite: bool = False
) -> bool:
    """Refuse a folder :func:`prepare_cache` may not write; nothing is changed here.

    Args:
        out: the cache folder to write.
        source: the archive folder the cache is made from.
        overwrite: whether an existing cache in ``out`` may be replaced.

    Returns:
        True when ``out`` holds a cache that will be replaced.

    Raises:
        InputError: ``out`` is a link or a file, is (or holds) the archive itself, holds
            something other than a fedrs cache, or holds a cache and ``overwrite`` is not set.
    """
    out = Path(out)
    if out.is_symlink():
        raise InputError(f"{out}: is a symbolic link; give the cache folder itself")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if source is not None:
        root, target = Path(source).resolve(), out.resolve()
        if root == target or root.is_relative_to(target):
            raise InputError(f"{out}: the cache cannot be written into the archive itself")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    if not is_cache(out):
        raise InputError(f"{out}: folder exists, is not empty and is not a fedrs cache")
    if not overwrite:
        raise InputError(f"{out}: a cache exists already (use --overwrite to replace it)")
    return True


def prepare_cache(
    archive: PatchArchive,
    out: str | Path,
    *,
    overwrite: bool = False,
    workers: int = 2,
    on_progress: Callable[[int], None] | None = None,
) -> Path:
    """Convert ``archive`` into a cache folder ``out`` (see the module docstring).

    Every check comes first (:func:`check_cache_target`): a non-empty ``out`` is refused
    unless it is a fedrs cache (it carries the marker) and ``overwrite`` is set.  The cache is
    built in a hidden folder beside ``out`` and moved into place when complete, so that an
    error or an interruption leaves ``out`` as it was (an old cache intact, readable
    throughout) and no half cache is ever read as complete.
    """
    out = Path(out)
    replace = check_cache_target(out, source=archive.root, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{secrets.token_hex(6)}.partial")
    partial.mkdir()
    try:
        _write_cache(archive, partial, workers, on_progress)
        _swap_in(partial, out, replace)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


def _swap_in(partial: Path, out: Path, replace: bool) -> None:
    """Move the complete cache ``partial`` to ``out``; an old cache (or an empty folder)
    there is moved aside first and removed once the new one is in place."""
    old = out.with_name(f".{out.name}.{secrets.token_hex(6)}.old") if out.exists() else None
    if old is not None:
        if replace:
            check_cache_target(out, overwrite=True)  # still the cache that was checked
        os.rename(out, old)
    try:
        os.rename(partial, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)
        raise
    sync_folder(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_cache(
    archive: PatchArchive,
    out: Path,
    workers: int,
    on_progress: Callable[[int], None] | None,
) -> None:
    """Write the cache files of ``archive`` into the (new, empty) folder ``out``."""
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
    for name in ("s2.npy", "s1.npy", "index.parquet"):
        _fsync(out / name)
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
    atomic_write_text(out / MARKER, json.dumps(info, indent=2))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
