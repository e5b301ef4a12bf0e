"""The synthetic archive on disk: output checks, marker files, patch files and metadata.

:func:`write_synthetic_archive` plans the rows, renders and calibrates the pixels batch by
batch and writes them; :func:`ensure_synthetic_archive` writes only when the folder does not
already hold a complete archive with the same parameters.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedrs.data.facts import S1_BANDS, S2_BANDS, S2_RESOLUTION_M
from fedrs.data.geotiff import geotiff_bytes
from fedrs.data.metadata import write_metadata
from fedrs.data.synth.calibrate import CALIBRATION, calibrate_s1, calibrate_s2
from fedrs.data.synth.plan import S1_DIR, S2_DIR, Plan, check_parameters, make_plan
from fedrs.data.synth.render import BATCH, batch_rng, render_raw
from fedrs.data.synth.stats import load_stats
from fedrs.io import check_output_folder, clear_output

if sys.platform != "win32":
    import fcntl

SYNTH_VERSION = 1
"""Version of the generator; an archive written by another version is rebuilt."""

MARKER = ".fedrs-synth.json"
"""Written last: the archive is complete and was made with the parameters it records."""

PARTIAL_MARKER = ".fedrs-synth.partial"
"""Written first: the folder holds a synthetic archive being written (or left incomplete)."""

METADATA_FILE = "metadata.parquet"

METADATA_COLUMNS: tuple[str, ...] = (
    "patch_id",
    "labels",
    "split",
    "country",
    "s1_name",
    "s2v1_name",
    "contains_seasonal_snow",
    "contains_cloud_or_shadow",
    "has_s1",
    "has_s2",
)

ProgressCallback = Callable[[int, int], None]
"""Progress callback: ``(patches_done, patches_total)``."""


def default_synthetic_root(patches: int, seed: int) -> Path:
    """Cache folder of the default synthetic archive.

    ``$FEDRS_CACHE_DIR/synthetic-<patches>-<seed>`` when the variable is set, else
    ``~/.cache/fedrs/synthetic-<patches>-<seed>``.
    """
    base = os.environ.get("FEDRS_CACHE_DIR")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "fedrs"
    return root / f"synthetic-{patches}-{seed}"


def _parameters(patches: int, seed: int, s1_only: float, s2_only: float) -> dict[str, Any]:
    return {
        "format": "fedrs-synthetic-bigearthnet",
        "version": SYNTH_VERSION,
        "patches": int(patches),
        "seed": int(seed),
        "s1_only_fraction": float(s1_only),
        "s2_only_fraction": float(s2_only),
    }


def read_marker(root: str | Path) -> dict[str, Any] | None:
    """The parameters recorded in a complete synthetic archive, or None."""
    path = Path(root) / MARKER
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_synthetic_archive(
    root: str | Path,
    *,
    patches: int,
    seed: int,
    s1_only_fraction: float = 0.0,
    s2_only_fraction: float = 0.0,
) -> bool:
    """Whether ``root`` holds a complete synthetic archive made with these parameters."""
    root = Path(root)
    marker = read_marker(root)
    if marker is None or (root / PARTIAL_MARKER).exists() or not (root / METADATA_FILE).is_file():
        return False
    wanted = _parameters(patches, seed, s1_only_fraction, s2_only_fraction)
    return all(marker.get(key) == value for key, value in wanted.items())


def check_output(root: str | Path) -> Path:
    """Check that a synthetic archive may be written to ``root``.

    ``root`` may be missing, an empty folder, or a folder holding a synthetic archive (complete
    or not), which writing replaces.

    Raises:
        InputError: ``root`` is a file, or a non-empty folder without a synthetic archive.
    """
    return check_output_folder(root, markers=(MARKER, PARTIAL_MARKER), holds="synthetic archive")


def _write_patch_files(
    root: Path, plan: Plan, start: int, s2: Sequence[np.ndarray], s1: np.ndarray
) -> None:
    for j in range(s1.shape[0]):
        i = start + j
        epsg, ulx, uly = int(plan.epsg[i]), float(plan.ulx[i]), float(plan.uly[i])
        s2_folder = plan.s2_folder[i]
        if s2_folder is not None:
            folder = root / s2_folder
            folder.mkdir(parents=True, exist_ok=True)
            for b, band in enumerate(S2_BANDS):
                pixel = float(S2_RESOLUTION_M[band])
                transform = (pixel, 0.0, ulx, 0.0, -pixel, uly)
                tiff = geotiff_bytes(s2[b][j], epsg=epsg, transform=transform, nodata=0)
                (folder / f"{folder.name}_{band}.tif").write_bytes(tiff)
        s1_folder = plan.s1_folder[i]
        if s1_folder is not None:
            folder = root / s1_folder
            folder.mkdir(parents=True, exist_ok=True)
            transform = (10.0, 0.0, ulx, 0.0, -10.0, uly)
            for b, band in enumerate(S1_BANDS):
                tiff = geotiff_bytes(s1[j, b], epsg=epsg, transform=transform)
                (folder / f"{folder.name}_{band}.tif").write_bytes(tiff)


def write_synthetic_archive(
    out: str | Path,
    *,
    patches: int,
    seed: int,
    s1_only_fraction: float = 0.0,
    s2_only_fraction: float = 0.0,
    progress: ProgressCallback | None = None,
) -> pd.DataFrame:
    """Write a synthetic BigEarthNet-like archive (v2.0 layout) into ``out``.

    Args:
        out: a new or empty folder, or one holding a synthetic archive (which is replaced).
        patches: number of patches (rows of ``metadata.parquet``).
        seed: random seed; the same seed gives the same files byte for byte.
        s1_only_fraction: share of patches with Sentinel-1 only.
        s2_only_fraction: share of patches with Sentinel-2 only.
        progress: called as ``progress(done, total)`` after each batch of patches.

    Returns:
        The metadata table written to ``out/metadata.parquet``.

    Raises:
        InputError: a bad parameter, or ``out`` is a file or a non-empty folder that holds no
            synthetic archive.
    """
    check_parameters(patches, seed, s1_only_fraction, s2_only_fraction)
    root = Path(out)
    plan = make_plan(
        load_stats(), int(patches), int(seed), float(s1_only_fraction), float(s2_only_fraction)
    )
    clear_output(check_output(root), (MARKER, S2_DIR, S1_DIR, METADATA_FILE))
    (root / PARTIAL_MARKER).write_text("writing\n", encoding="utf-8")
    for start in range(0, patches, BATCH):
        stop = min(start + BATCH, patches)
        raw, s1_raw = render_raw(
            batch_rng(seed, start),
            plan.masks[start:stop],
            plan.month[start:stop],
            plan.country[start:stop],
        )
        _write_patch_files(
            root, plan, start, calibrate_s2(raw, CALIBRATION), calibrate_s1(s1_raw, CALIBRATION)
        )
        if progress is not None:
            progress(stop, patches)
    write_metadata({c: plan.metadata[c] for c in METADATA_COLUMNS}, root / METADATA_FILE)
    marker = _parameters(patches, seed, s1_only_fraction, s2_only_fraction)
    (root / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    (root / PARTIAL_MARKER).unlink()
    return plan.metadata


def ensure_synthetic_archive(
    root: str | Path | None = None,
    *,
    patches: int,
    seed: int,
    s1_only_fraction: float = 0.0,
    s2_only_fraction: float = 0.0,
    progress: ProgressCallback | None = None,
) -> Path:
    """Return a complete synthetic archive at ``root``, writing it only when needed.

    An archive already complete with the same parameters is returned as is (the cached default
    data); an incomplete one, or one made with other parameters, is rebuilt.  Processes that
    ask for the same folder at once (two runs started together on an empty cache) take turns
    on the lock file ``<root>.lock`` beside it: the first writes the archive, the others wait
    and find it complete.

    Args:
        root: the archive folder; default :func:`default_synthetic_root` ``(patches, seed)``.
        patches, seed, s1_only_fraction, s2_only_fraction, progress: as for
            :func:`write_synthetic_archive`.

    Returns:
        The archive folder.
    """
    check_parameters(patches, seed, s1_only_fraction, s2_only_fraction)
    path = Path(root) if root is not None else default_synthetic_root(patches, seed)
    fractions = {"s1_only_fraction": s1_only_fraction, "s2_only_fraction": s2_only_fraction}
    if is_synthetic_archive(path, patches=patches, seed=seed, **fractions):  # cached: no lock
        return path
    with _held(path.with_name(path.name + ".lock")):
        # written by another process while this one waited?
        if not is_synthetic_archive(path, patches=patches, seed=seed, **fractions):
            write_synthetic_archive(
                path, patches=patches, seed=seed, **fractions, progress=progress
            )
    return path


@contextlib.contextmanager
def _held(lock: Path) -> Iterator[None]:
    """An exclusive advisory lock on the file ``lock`` (created when absent) while inside."""
    if sys.platform == "win32":  # no advisory locks: one build at a time is up to the user
        yield
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
