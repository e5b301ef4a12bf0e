"""The fedrs cache: an archive converted to memory-mapped arrays (``fedrs prepare``).

Layout of a cache folder (format 2)::

    fedrs-cache.json   format, version, counts, source, modalities, resample (written last: a
                       cache without it is incomplete and is not recognised)
    index.parquet      normalised metadata + ``s2_row`` / ``s1_row`` (-1 where missing)
    s2_10m.npy         uint16  (N_s2, 4, 120, 120)  B02 B03 B04 B08
    s2_20m.npy         uint16  (N_s2, 6, 60, 60)    B05 B06 B07 B8A B11 B12
    s2_60m.npy         uint16  (N_s2, 2, 20, 20)    B01 B09
    s1.npy             float32 (N_s1, 2, 120, 120)  VV VH (dB)

Pixels keep their native size and type.  S2 bands are the files' uint16 digital numbers, one
array per resolution group (:data:`~fedrs.data.geotiff.S2_GROUPS`); a source whose S2 values
are not integers in 0..65535 is refused (``CorruptPatchError`` naming the patch).  S1 stays
float32: the S1 GeoTIFFs (BigEarthNet's and the synthetic archive's) hold float32 dB values
that are not quantised at all (a 120x120 band holds about 14,400 distinct values, the closest
1e-6 dB apart), so float16 would change nearly every one of them, by up to 0.016 dB, where
float32 keeps them exactly.  That is 275.2 kB per pair (S2 160.0 kB, S1 115.2 kB): the
native pixels, plus 128 bytes of header per array and the index.  (Format 1 stored S2
upsampled as float32: 806.4 kB, 2.9x.)

Items (``archive[i]``) and :meth:`CachedArchive.get_batch` are what the GeoTIFF readers
return, bit for bit: S2 upsampled to 120x120 with the ``resample`` mode recorded in the
marker, when read (a cache answers only for that mode).  ``get_batch(rows, native=True)``
returns the native groups instead, for :func:`fedrs.data.transforms.upsample_s2` on the
training device (what :func:`fedrs.train.load_batch` does).

Building (:func:`prepare_cache`): the rows are copied in chunks of :data:`CHUNK_ROWS` by
``workers`` processes; each opens the source archive itself (its layout, folder, modalities,
resampling and the metadata rows of its chunk) and writes into the memory-mapped arrays.
The cache is built in ``.<name>.partial`` beside its target; ``progress.json`` there lists
the complete chunks and is rewritten (atomically) after each chunk is flushed.  A build
interrupted or failed after a chunk was complete leaves that folder; the same build started
again (same source folder and patches, modalities and resampling) continues where it stopped,
while a partial folder of any other build is emptied and started over.  One build writes a
partial folder at a time (another one waits for it).  The complete cache is moved into place;
only a folder that carries the marker is ever replaced (``overwrite``), and only once the new
cache is whole, so an interrupted build leaves the old cache as it was.

A cache of format 1 (float32, upsampled) is refused with the command that rebuilds it; the
synthetic cache fedrs makes itself (:func:`fedrs.pipeline.resolve_cache`) is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import secrets
import shlex
import shutil
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from fedrs.data.archive import PatchArchive
from fedrs.data.errors import CorruptPatchError
from fedrs.data.facts import PATCH_SIZE, S1_BANDS, S2_PIXELS_PER_SIDE
from fedrs.data.geotiff import S2_GROUPS, upsample_s2
from fedrs.data.metadata import normalize_metadata, read_parquet
from fedrs.errors import InputError
from fedrs.io import atomic_write_text, sync_folder

if sys.platform != "win32":
    import fcntl

MARKER = "fedrs-cache.json"
FORMAT = "fedrs-cache"
VERSION = 2
PROGRESS = "progress.json"
CHUNK_ROWS = 256
"""Rows per chunk of a build: the unit of work of a process and of resuming."""
START_METHOD = "fork" if sys.platform == "linux" else "spawn"
"""How worker processes start: forked on Linux (at once, importing nothing; a worker runs no
torch and none of its parent's threads), spawned elsewhere (a script that builds a cache with
``workers > 1`` then needs the usual ``if __name__ == "__main__":`` guard)."""

ARRAYS: dict[str, tuple[str, np.dtype[Any], tuple[int, int, int]]] = {
    **{
        f"s2_{res}m": (
            "s2",
            np.dtype(np.uint16),
            (len(bands), S2_PIXELS_PER_SIDE[res], S2_PIXELS_PER_SIDE[res]),
        )
        for res, bands in S2_GROUPS.items()
    },
    "s1": ("s1", np.dtype(np.float32), (len(S1_BANDS), PATCH_SIZE, PATCH_SIZE)),
}
"""File stem -> (modality, dtype, shape of one row) of the cache's arrays."""

Batch = dict[str, Any]


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
            count = len(self._arrays["s1" if modality == "s1" else "s2_10m"])
            if used.size and (used.min() < 0 or used.max() >= count):
                raise CorruptPatchError(
                    self.root / "index.parquet",
                    f"{modality}_row values outside the {count} rows of the {modality} arrays",
                )

    def read_s2_native(self, row: int) -> dict[int, np.ndarray]:
        source = self._cache_row(row, "s2")
        return {res: np.array(self._arrays[f"s2_{res}m"][source]) for res in S2_GROUPS}

    def read_s1(self, row: int) -> np.ndarray:
        return np.array(self._arrays["s1"][self._cache_row(row, "s1")])

    def _cache_row(self, row: int, modality: str) -> int:
        source = int((self._s1_rows if modality == "s1" else self._s2_rows)[row])
        if source < 0:
            raise InputError(f"{self.root}: patch {self._patch_ids[row]} has no {modality}")
        return source

    def get_batch(self, rows: np.ndarray | Sequence[int], *, native: bool = False) -> Batch:
        """Several items at once, stacked: ``s1``/``s2`` (B, C, 120, 120) or None, ``labels``.

        Rows lacking a modality get zeros there; ``has_s1`` / ``has_s2`` (B,) bool tell which.
        With ``native``, ``s2`` is the native pixels instead, ``{10: (B, 4, 120, 120), 20: (B,
        6, 60, 60), 60: (B, 2, 20, 20)}`` uint16 tensors, for
        :func:`fedrs.data.transforms.upsample_s2` on the training device.
        """
        rows = np.asarray(rows, dtype=np.int64)
        out: Batch = {
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
            if modality == "s1":
                out["s1"] = torch.from_numpy(_gather(self._arrays["s1"], source, has))
                continue
            groups = {res: _gather(self._arrays[f"s2_{res}m"], source, has) for res in S2_GROUPS}
            if native:
                out["s2"] = {res: torch.from_numpy(group) for res, group in groups.items()}
            else:
                out["s2"] = upsample_s2(groups, self.resample)  # type: ignore[arg-type]
        return out


def _gather(array: np.ndarray, source: np.ndarray, has: np.ndarray) -> np.ndarray:
    """Rows ``source[has]`` of ``array`` in one fancy-indexed read; zeros where not ``has``."""
    if has.all():
        return np.ascontiguousarray(array[source])
    full = np.zeros((len(source), *array.shape[1:]), dtype=array.dtype)
    full[has] = array[source[has]]
    return full


def _read_marker(root: Path) -> dict[str, Any]:
    path = root / MARKER
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CorruptPatchError(path, f"unreadable cache marker ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CorruptPatchError(path, "not a fedrs cache marker")
    if info.get("version") == 1:
        raise InputError(
            f"{root}: fedrs cache format 1 (float32, upsampled); rebuild it with "
            f"`{rebuild_command(root, info)}`"
        )
    if info.get("version") != VERSION:
        raise CorruptPatchError(
            path, f"cache format version {info.get('version')} (this fedrs reads {VERSION})"
        )
    return info


def rebuild_command(root: Path, info: dict[str, Any]) -> str:
    """The ``fedrs prepare`` command line that rebuilds the cache ``root`` from its marker."""
    words = ["fedrs", "prepare", str(info.get("source") or "<archive>"), "--out", str(root)]
    modalities = info.get("modalities")
    if isinstance(modalities, list) and sorted(modalities) != ["s1", "s2"]:
        words += ["--modalities", ",".join(map(str, modalities))]
    if info.get("resample", "bilinear") != "bilinear":
        words += ["--resample", str(info["resample"])]
    return " ".join(shlex.quote(w) for w in words) + " --overwrite"


def _open_arrays(root: Path, mode: Literal["r", "r+"] = "r") -> dict[str, np.memmap[Any, Any]]:
    """The memory-mapped arrays of a cache folder, checked against :data:`ARRAYS`."""
    arrays = {}
    for stem, (_, dtype, shape) in ARRAYS.items():
        path = root / f"{stem}.npy"
        try:
            array = np.load(path, mmap_mode=mode)
        except (OSError, ValueError) as exc:
            raise CorruptPatchError(path, f"unreadable cache array ({exc})") from None
        if array.dtype != dtype or array.shape[1:] != shape:
            raise CorruptPatchError(
                path,
                f"expected {dtype} (N, {', '.join(map(str, shape))}), got "
                f"{array.dtype} {array.shape}",
            )
        arrays[stem] = array
    lengths = {len(arrays[stem]) for stem in ARRAYS if stem.startswith("s2_")}
    if len(lengths) != 1:
        raise CorruptPatchError(root / "s2_10m.npy", "S2 arrays of different lengths")
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


def partial_folder(out: str | Path) -> Path:
    """The folder in which the cache ``out`` is built: ``.<name>.partial`` beside it."""
    out = Path(out)
    return out.with_name(f".{out.name}.partial")


def prepare_cache(
    archive: PatchArchive,
    out: str | Path,
    *,
    overwrite: bool = False,
    workers: int = 2,
    on_progress: Callable[[int], None] | None = None,
    on_resume: Callable[[int], None] | None = None,
) -> Path:
    """Convert ``archive`` into a cache folder ``out`` (see the module docstring).

    Every check comes first (:func:`check_cache_target`): a non-empty ``out`` is refused
    unless it is a fedrs cache (it carries the marker) and ``overwrite`` is set.  The cache is
    built in :func:`partial_folder` beside ``out`` and moved into place when complete, so that
    an error or an interruption leaves ``out`` as it was (an old cache intact, readable
    throughout) and no half cache is ever read as complete; the same call made again continues
    the partial build.

    Args:
        archive: the source (any layout, a cache included).
        out: the cache folder to write.
        overwrite: whether a fedrs cache in ``out`` may be replaced.
        workers: processes copying chunks of rows; 1 copies in this process.
        on_progress: called with the number of patches copied since the last call (first
            with the patches a continued build finds done).
        on_resume: called once with the patches a continued build finds done.

    Raises:
        InputError: ``out`` may not be written (see :func:`check_cache_target`).
        CorruptPatchError: a patch of the source is bad (names the file or the patch).
    """
    out = Path(out)
    check_cache_target(out, source=archive.root, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    plan = _Plan.of(archive)
    with _building(partial_folder(out)) as partial:
        try:
            # checked again: another build of ``out`` may have ended while this one waited
            replace = check_cache_target(out, source=archive.root, overwrite=overwrite)
            done = _start(partial, plan)
            if done:
                resumed = sum(plan.size(chunk) for chunk in done)
                if on_resume is not None:
                    on_resume(resumed)
                if on_progress is not None:
                    on_progress(resumed)
            todo = [chunk for chunk in range(plan.chunks) if chunk not in done]
            processes = min(max(1, workers), len(todo))
            if processes <= 1:
                _copy_here(archive, partial, plan, todo, done, on_progress)
            else:
                _copy_in_processes(archive, partial, plan, todo, done, processes, on_progress)
            _finish(archive, partial, plan)
            _swap_in(partial, out, replace)
            (out / PROGRESS).unlink()  # kept until here: a build stopped before continues
        except BaseException:
            if not _saved_chunks(partial):  # nothing worth continuing
                shutil.rmtree(partial, ignore_errors=True)
            raise
    return out


@dataclass(frozen=True)
class _Plan:
    """What a build writes: each row's target row per modality and the build's identity."""

    s2_row: np.ndarray
    s1_row: np.ndarray
    chunk_rows: int
    build: dict[str, Any]

    @classmethod
    def of(cls, archive: PatchArchive) -> _Plan:
        meta = archive.metadata
        has_s2 = meta["has_s2"].to_numpy(dtype=bool)
        has_s1 = meta["has_s1"].to_numpy(dtype=bool)
        columns = meta[["patch_id", "s1_name", "has_s1", "has_s2"]]
        rows = hashlib.sha256(pd.util.hash_pandas_object(columns, index=False).to_numpy().tobytes())
        build = {
            "format": FORMAT,
            "version": VERSION,
            "source": str(Path(archive.root).resolve()),
            "source_layout": archive.layout,
            "modalities": list(archive.modalities),
            "resample": archive.resample,
            "patches": len(meta),
            "with_s2": int(has_s2.sum()),
            "with_s1": int(has_s1.sum()),
            "rows_sha256": rows.hexdigest(),
            "chunk_rows": CHUNK_ROWS,
        }
        return cls(
            s2_row=np.where(has_s2, np.cumsum(has_s2) - 1, -1),
            s1_row=np.where(has_s1, np.cumsum(has_s1) - 1, -1),
            chunk_rows=CHUNK_ROWS,
            build=build,
        )

    @property
    def rows(self) -> int:
        return len(self.s2_row)

    @property
    def chunks(self) -> int:
        return -(-self.rows // self.chunk_rows)

    def span(self, chunk: int) -> range:
        return range(chunk * self.chunk_rows, min(self.rows, (chunk + 1) * self.chunk_rows))

    def size(self, chunk: int) -> int:
        return len(self.span(chunk))

    def count(self, modality: str) -> int:
        return int(self.build[f"with_{modality}"])


@contextlib.contextmanager
def _building(partial: Path) -> Iterator[Path]:
    """The folder ``partial``, created when absent, held against other builds of the same
    target (one that holds it already is waited for)."""
    while True:
        if partial.is_symlink() or (partial.exists() and not partial.is_dir()):
            raise InputError(f"{partial}: is not a folder; remove it to build the cache")
        partial.mkdir(exist_ok=True)
        if sys.platform == "win32":  # no advisory locks: one build at a time is up to the user
            yield partial
            return
        try:
            fd = os.open(partial, os.O_RDONLY)
        except FileNotFoundError:  # removed by the build that held it: make it again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:  # the folder may have been moved into place by the build that held it
                held = os.path.samestat(os.fstat(fd), os.stat(partial, follow_symlinks=False))
            except FileNotFoundError:
                held = False
            if held:
                yield partial
                return
        finally:
            os.close(fd)


def _start(partial: Path, plan: _Plan) -> set[int]:
    """The complete chunks of the build found in ``partial``; when it holds another build's
    files (or none), it is emptied and the arrays are created."""
    try:
        state = json.loads((partial / PROGRESS).read_text(encoding="utf-8"))
        if state["build"] == plan.build:
            arrays = _open_arrays(partial)
            if all(len(a) == plan.count(ARRAYS[stem][0]) for stem, a in arrays.items()):
                return {int(c) for c in state["done"] if 0 <= int(c) < plan.chunks}
    except (OSError, ValueError, KeyError, TypeError, CorruptPatchError):
        pass
    for child in partial.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    for stem, (modality, dtype, shape) in ARRAYS.items():
        path = partial / f"{stem}.npy"
        np.lib.format.open_memmap(
            path, mode="w+", dtype=dtype, shape=(plan.count(modality), *shape)
        )
        _fsync(path)
    _save_progress(partial, plan, set())
    return set()


def _saved_chunks(partial: Path) -> int:
    """How many complete chunks the progress file in ``partial`` records (0 when none)."""
    try:
        return len(json.loads((partial / PROGRESS).read_text(encoding="utf-8"))["done"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _save_progress(partial: Path, plan: _Plan, done: set[int]) -> None:
    state = {"build": plan.build, "done": sorted(done)}
    atomic_write_text(partial / PROGRESS, json.dumps(state))


def _copy_here(
    archive: PatchArchive,
    partial: Path,
    plan: _Plan,
    todo: list[int],
    done: set[int],
    on_progress: Callable[[int], None] | None,
) -> None:
    """Copy the chunks ``todo`` in this process, recording each one when it is flushed."""
    arrays = _open_arrays(partial, mode="r+")
    for chunk in todo:
        rows = plan.span(chunk)
        s2_row, s1_row = plan.s2_row[rows.start : rows.stop], plan.s1_row[rows.start : rows.stop]
        _copy_rows(archive, rows, s2_row, s1_row, arrays, on_progress)
        for array in arrays.values():
            array.flush()
        done.add(chunk)
        _save_progress(partial, plan, done)


@dataclass(frozen=True)
class _Job:
    """One chunk for a worker process: enough to open the source archive on its own."""

    chunk: int
    layout: type[PatchArchive]
    root: Path
    metadata: pd.DataFrame
    modalities: tuple[str, ...]
    resample: str
    s2_row: np.ndarray
    s1_row: np.ndarray
    folder: Path


def _copy_chunk(job: _Job) -> int:
    """Worker process: open the source archive over the chunk's rows and copy them."""
    archive = job.layout(
        job.root,
        job.metadata,
        modalities=job.modalities,
        split=None,
        resample=job.resample,
        on_error="raise",
    )
    if len(archive) != len(job.metadata):
        raise InputError(f"{job.root}: chunk {job.chunk} changed its rows when reopened")
    arrays = _open_arrays(job.folder, mode="r+")
    _copy_rows(archive, range(len(archive)), job.s2_row, job.s1_row, arrays, None)
    for array in arrays.values():
        array.flush()
    return job.chunk


def _quiet_interrupts() -> None:
    """Worker processes leave Ctrl-C to the parent, which stops them after their chunk."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _copy_in_processes(
    archive: PatchArchive,
    partial: Path,
    plan: _Plan,
    todo: list[int],
    done: set[int],
    processes: int,
    on_progress: Callable[[int], None] | None,
) -> None:
    """Copy the chunks ``todo`` in ``processes`` worker processes, recording each one when
    its worker reports it flushed; on an error or an interruption the chunks not started are
    cancelled and the ones running are waited for (and recorded)."""

    def job(chunk: int) -> _Job:
        rows = plan.span(chunk)
        return _Job(
            chunk=chunk,
            layout=type(archive),
            root=Path(archive.root),
            metadata=archive.metadata.iloc[rows.start : rows.stop].reset_index(drop=True),
            modalities=tuple(archive.modalities),
            resample=archive.resample,
            s2_row=plan.s2_row[rows.start : rows.stop],
            s1_row=plan.s1_row[rows.start : rows.stop],
            folder=partial,
        )

    context = multiprocessing.get_context(START_METHOD)
    pool = ProcessPoolExecutor(processes, mp_context=context, initializer=_quiet_interrupts)
    futures: list[Future[int]] = []
    try:
        futures = [pool.submit(_copy_chunk, job(chunk)) for chunk in todo]
        for future in as_completed(futures):
            chunk = future.result()
            done.add(chunk)
            _save_progress(partial, plan, done)
            if on_progress is not None:
                on_progress(plan.size(chunk))
    except BaseException:
        for future in futures:
            future.cancel()
        pool.shutdown(wait=True)
        finished = {
            f.result() for f in futures if f.done() and not f.cancelled() and not f.exception()
        }
        if finished - done:
            _save_progress(partial, plan, done | finished)
        raise
    finally:
        pool.shutdown(wait=True)


def _copy_rows(
    archive: PatchArchive,
    rows: range,
    s2_row: np.ndarray,
    s1_row: np.ndarray,
    arrays: dict[str, np.memmap[Any, Any]],
    on_progress: Callable[[int], None] | None,
) -> None:
    """Copy ``rows`` of ``archive`` to rows ``s2_row`` / ``s1_row`` (-1: none) of ``arrays``."""
    for row, to_s2, to_s1 in zip(rows, s2_row, s1_row, strict=True):
        if to_s2 >= 0:
            groups = archive.read_s2_native(row)
            for res in S2_GROUPS:
                stem = f"s2_{res}m"
                arrays[stem][to_s2] = _pixels(archive, row, stem, groups[res])
        if to_s1 >= 0:
            arrays["s1"][to_s1] = _pixels(archive, row, "s1", archive.read_s1(row))
        if on_progress is not None:
            on_progress(1)


def _pixels(archive: PatchArchive, row: int, stem: str, values: Any) -> np.ndarray:
    """``values`` checked to fit row array ``stem`` exactly: its shape, and for S2 integers in
    uint16 range (S1: finite values); a bad patch raises CorruptPatchError naming it."""
    _, dtype, shape = ARRAYS[stem]
    values = np.asarray(values)
    what = f"S2 {stem[3:-1]} m bands" if stem.startswith("s2_") else "S1 bands"

    def bad(reason: str) -> CorruptPatchError:
        patch = archive.metadata.at[row, "patch_id" if stem != "s1" else "s1_name"]
        return CorruptPatchError(Path(archive.root) / str(patch), f"{what} {reason}")

    if values.shape != shape:
        raise bad(f"of shape {values.shape}, expected {shape}")
    if values.dtype == dtype:
        if dtype.kind == "f" and not np.isfinite(values).all():
            raise bad("hold non-finite values (NaN or infinity)")
        return values
    if values.dtype.kind not in "biuf":
        raise bad(f"of dtype {values.dtype}")
    if dtype.kind == "f":
        if not np.isfinite(values).all():
            raise bad("hold non-finite values (NaN or infinity)")
        return values.astype(dtype)
    info = np.iinfo(dtype)
    with np.errstate(invalid="ignore"):
        fits = (values >= info.min) & (values <= info.max) & (values == np.round(values))
    if not fits.all():
        example = values[~fits].flat[0]
        raise bad(f"hold {example!r}: not an integer in {info.min}..{info.max} (uint16 DNs)")
    return values.astype(dtype)


def _finish(archive: PatchArchive, partial: Path, plan: _Plan) -> None:
    """Index, marker (last) and durability of a build whose chunks are all copied."""
    meta = archive.metadata.copy()
    meta["s2_row"], meta["s1_row"] = plan.s2_row, plan.s1_row
    meta["labels"] = [list(map(str, v)) for v in meta["labels"]]
    meta.to_parquet(partial / "index.parquet", index=False)
    for name in [f"{stem}.npy" for stem in ARRAYS] + ["index.parquet"]:
        _fsync(partial / name)
    info = {
        key: plan.build[key]
        for key in ("format", "version", "patches", "with_s2", "with_s1", "source")
    }
    info |= {
        "source_layout": archive.layout,
        "modalities": list(archive.modalities),
        "resample": archive.resample,
        "s2_groups": {f"{res}m": list(bands) for res, bands in S2_GROUPS.items()},
    }
    atomic_write_text(partial / MARKER, json.dumps(info, indent=2))


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


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
