"""From a data config to ready-to-train rows: archive (synthetic when none), cache, splits.

Used by centralized runs, by the Flower apps and by the CLI, so that all of them see the same
patches: the training rows (train split), the evaluation queries (test split), the evaluation
database (train split) and the validation rows (validation split, for checkpoint selection),
each capped and subsampled deterministically; and a federated client's rows, its shard of the
configured partition of the training rows (:func:`client_rows`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

import fedrs.partitions
from fedrs.config import DataConfig, PartitionConfig
from fedrs.data.archive import PatchArchive, open_archive
from fedrs.data.cache import MARKER, VERSION, CachedArchive, prepare_cache
from fedrs.data.synth import ensure_synthetic_archive
from fedrs.errors import FedrsError, InputError

Progress = Callable[[str, int], Callable[[int], None]]
"""``progress(description, total)`` returns an ``advance(n)`` callback."""


def cache_base(config: DataConfig) -> Path:
    """Folder of fedrs' cached data: ``data.cache_dir``, ``$FEDRS_CACHE_DIR`` or ~/.cache/fedrs."""
    if config.cache_dir is not None:
        return Path(config.cache_dir).expanduser()
    env = os.environ.get("FEDRS_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedrs"


def synthetic_name(config: DataConfig) -> str:
    """Folder name of the synthetic archive of ``config`` under :func:`cache_base`."""
    name = f"synthetic-{config.patches}-{config.seed}"
    if config.s1_only_fraction or config.s2_only_fraction:
        name += f"-s1o{config.s1_only_fraction:g}-s2o{config.s2_only_fraction:g}"
    return name


def resolve_cache(config: DataConfig, *, progress: Progress | None = None) -> Path:
    """Return a fedrs cache for the configured data, building what is missing (once).

    With no ``data.path``: a synthetic archive of ``data.patches`` patches under the cache
    folder, then its memory-mapped cache.  With a path: the path itself when it is a cache, else
    a cache of it under the cache folder (rebuilt when the source path differs).
    """
    base = cache_base(config)
    if config.path is None:
        source = base / synthetic_name(config)
        synth_progress: Callable[[int, int], None] | None = None
        if progress is not None:
            advance = progress("synthesising archive", config.patches)
            seen = [0]

            def advance_to(done: int, total: int) -> None:
                advance(done - seen[0])
                seen[0] = done

            synth_progress = advance_to

        ensure_synthetic_archive(
            source,
            patches=config.patches,
            seed=config.seed,
            s1_only_fraction=config.s1_only_fraction,
            s2_only_fraction=config.s2_only_fraction,
            progress=synth_progress,
        )
        cache = source.with_name(source.name + "-cache")
    else:
        source = Path(config.path).expanduser()
        if (source / MARKER).is_file():
            return source
        digest = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:10]
        cache = base / "caches" / f"{source.name}-{digest}"
    if _cache_is_of(cache, source):
        return cache
    archive = open_archive(source, metadata=config.metadata)
    on_cached = progress("caching archive", len(archive)) if progress else None
    prepare_cache(archive, cache, overwrite=True, on_progress=on_cached)
    return cache


def _cache_is_of(cache: Path, source: Path) -> bool:
    marker = cache / MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    # a cache of an older format (fedrs' own) is rebuilt like one of another source
    return bool(info.get("source") == str(source.resolve()) and info.get("version") == VERSION)


@dataclass(frozen=True)
class RunData:
    """An opened cache and the rows each part of a run uses.

    ``validation_rows`` choose checkpoints during training (the distortion-only warm-up);
    empty when not given.
    """

    archive: CachedArchive
    train_rows: np.ndarray
    query_rows: np.ndarray
    database_rows: np.ndarray
    validation_rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))


def split_rows(archive: PatchArchive, config: DataConfig, seed: int) -> RunData:
    """Training rows (train split), queries (test split), database (train split) and
    validation rows (validation split), capped.

    Archives without split information get a deterministic 80/20 train/test split.  Where the
    archive has no validation split (or no split information, or its validation split stands
    in for a missing test split), the validation rows are the query rows.  They are drawn
    last, so the other rows do not depend on ``data.max_validation``.
    """
    if not isinstance(archive, CachedArchive):
        raise InputError(f"{archive.root}: runs read a fedrs cache (fedrs prepare)")
    rng = np.random.default_rng(seed)
    split = archive.metadata["split"].to_numpy(dtype=object)
    if all(s is None for s in split):
        split = np.where(rng.random(len(split)) < 0.8, "train", "test").astype(object)
    train = np.flatnonzero(split == "train")
    test = np.flatnonzero(split == "test")
    validation = np.flatnonzero(split == "validation")
    if len(test) == 0:
        test = validation
    if len(train) == 0 or len(test) == 0:
        raise InputError(f"{archive.root}: needs patches in both the train and test splits")

    def cap(rows: np.ndarray, limit: int) -> np.ndarray:
        if limit == 0 or len(rows) <= limit:
            return rows
        return np.sort(rng.choice(rows, size=limit, replace=False))

    train_rows = cap(train, config.max_train)
    query_rows = cap(test, config.max_queries)
    database_rows = cap(train, config.max_database)
    if len(validation) == 0 or validation is test:
        validation_rows = query_rows
    else:
        validation_rows = cap(validation, config.max_validation)
    return RunData(
        archive=archive,
        train_rows=train_rows,
        query_rows=query_rows,
        database_rows=database_rows,
        validation_rows=validation_rows,
    )


def load_run_data(
    config: DataConfig, *, progress: Progress | None = None, reuse: bool = False
) -> RunData:
    """:func:`resolve_cache`, :func:`open_cache` (modalities from the config, ``reuse`` as
    there), then :func:`split_rows`."""
    cache = resolve_cache(config, progress=progress)
    archive = open_cache(cache, config.modalities, reuse=reuse)
    return split_rows(archive, config, config.seed)


CacheIdentity = tuple[str, int, int, int]
"""(resolved folder, inode, mtime in ns, size of the marker): see :func:`cache_identity`."""

_OPENED: OrderedDict[tuple[CacheIdentity, tuple[str, ...]], CachedArchive] = OrderedDict()
_OPENED_LIMIT = 1  # an opened BigEarthNet v2 index holds about half a GiB


def cache_identity(cache: Path) -> CacheIdentity:
    """What tells one build of a cache from another: its folder and its marker file, which is
    written last, so a rebuilt cache (``fedrs prepare --overwrite`` swaps the folder) has
    another marker.

    Raises:
        InputError: ``cache`` carries no marker.
    """
    try:
        stat = (cache / MARKER).stat()
    except OSError:
        raise InputError(f"{cache}: not a fedrs cache (no {MARKER})") from None
    return (str(cache.resolve()), stat.st_ino, stat.st_mtime_ns, stat.st_size)


def open_cache(cache: Path, modalities: Sequence[str], *, reuse: bool = False) -> CachedArchive:
    """Open the fedrs cache ``cache`` for ``modalities``.

    Opening reads and checks the whole index (seconds for the 480,038 patches of BigEarthNet
    v2).  With ``reuse``, an archive this process opened with ``reuse`` before from the same
    build of the cache (:func:`cache_identity`) and for the same modalities is returned instead:
    the Flower apps open the run's cache every round, and a Ray worker hosts many client calls.
    The answer never depends on what was opened before, only its cost does; the last archive
    opened with ``reuse`` is kept.  Callers treat the archive as read-only.

    Raises:
        InputError: ``cache`` is not a fedrs cache.
    """
    chosen = tuple(modalities)
    key = (cache_identity(cache), chosen) if reuse else None
    if key is not None and key in _OPENED:
        _OPENED.move_to_end(key)
        return _OPENED[key]
    archive = open_archive(cache, modalities=chosen)
    if not isinstance(archive, CachedArchive):
        raise InputError(f"{archive.root}: runs read a fedrs cache (fedrs prepare)")
    if key is not None:
        _OPENED[key] = archive
        while len(_OPENED) > _OPENED_LIMIT:
            _OPENED.popitem(last=False)
    return archive


def client_rows(
    run: RunData, partition: PartitionConfig, clients: int, client_id: int
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Rows of ``run.archive`` that client ``client_id`` of ``clients`` trains on, and its
    modalities: its shard of the configured partition of the training rows.

    Rows are in archive order.  Deterministic for the partition's seed.

    Raises:
        InputError: ``client_id`` is not in ``0 .. clients - 1``, or the partition fails (see
            :func:`fedrs.partitions.partition`).
    """

    if not 0 <= client_id < clients:
        raise InputError(f"partition-id {client_id} is outside 0 .. {clients - 1}")
    train_meta = run.archive.metadata.iloc[run.train_rows]
    shards = fedrs.partitions.partition(
        partition.name, train_meta, clients, seed=partition.seed, **partition.options
    )
    shard = shards[client_id]
    # patch ids are unique (the partition checks), so each id has one position
    positions = pd.Index(train_meta["patch_id"].to_numpy(dtype=object)).get_indexer(
        list(shard.patch_ids)
    )
    if (positions < 0).any():
        raise FedrsError(f"partition {partition.name!r} named patches outside the training rows")
    return run.train_rows[np.sort(positions)], shard.modalities
