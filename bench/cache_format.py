"""The fedrs cache, format 2 (native pixels) against format 1 (float32, S2 upsampled).

Figures, measured in this one run on the same archive: bytes per S1/S2 pair of each format
against the native pixels; ``fedrs prepare`` (:func:`fedrs.data.prepare_cache`) patches/s with
1 and 2 worker processes; and ``load_batch`` of 16 random rows (normalised, on the CPU): format
2 through :func:`fedrs.train.load_batch` (native pixels, upsampled per batch), format 1 as it
was read (one float32 copy per patch, then normalised).  The format-2 caches are built in a
temporary folder (``--tmp``); the format-1 cache is read only: ``--format1`` (default: the
synthetic 2,000-patch one under ~/.cache/fedrs when it is of format 1), else one is written to
the temporary folder (and its writing, in this process, is timed too).  The last line is a
JSON object with the figures.

    python bench/cache_format.py [--archive DIR] [--format1 DIR] [--tmp DIR] [--batches 40]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedrs.data import PatchArchive, open_archive, prepare_cache
from fedrs.data.cache import ARRAYS, MARKER, CachedArchive
from fedrs.data.transforms import normalize
from fedrs.train import load_batch

SYNTHETIC = Path.home() / ".cache" / "fedrs" / "synthetic-2000-0"
BATCH = 16


def native_bytes_per_pair() -> int:
    return sum(dtype.itemsize * int(np.prod(shape)) for _, dtype, shape in ARRAYS.values())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


class Format1:
    """A format-1 cache (``s2.npy`` float32 (N, 12, 120, 120), ``s1.npy``), read as it was."""

    def __init__(self, root: Path) -> None:
        self.s2 = np.load(root / "s2.npy", mmap_mode="r")
        self.s1 = np.load(root / "s1.npy", mmap_mode="r")
        index = pd.read_parquet(root / "index.parquet", columns=["s2_row", "s1_row"])
        self.rows = {"s2": index["s2_row"].to_numpy(), "s1": index["s1_row"].to_numpy()}

    def load_batch(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        batch = {}
        for modality, array in (("s1", self.s1), ("s2", self.s2)):
            source = self.rows[modality][rows]
            full = np.zeros((len(rows), *array.shape[1:]), np.float32)
            for k in np.flatnonzero(source >= 0):  # one contiguous copy per patch
                full[k] = array[source[k]]
            batch[modality] = normalize(torch.from_numpy(full), modality)
        return batch


def write_format1(archive: PatchArchive, out: Path) -> Path:
    """A format-1 cache of ``archive`` (the items as read, float32), for a run without one."""
    out.mkdir()
    meta = archive.metadata.copy()
    rows = {}
    arrays = {}
    for modality, channels in (("s2", 12), ("s1", 2)):
        has = meta[f"has_{modality}"].to_numpy(dtype=bool)
        rows[modality] = np.where(has, np.cumsum(has) - 1, -1)
        arrays[modality] = np.lib.format.open_memmap(
            out / f"{modality}.npy",
            mode="w+",
            dtype=np.float32,
            shape=(int(has.sum()), channels, 120, 120),
        )
    for i in range(len(archive)):
        item = archive[i]
        for modality, array in arrays.items():
            if item[modality] is not None:
                array[rows[modality][i]] = item[modality].numpy()
    for array in arrays.values():
        array.flush()
    pd.DataFrame({"s2_row": rows["s2"], "s1_row": rows["s1"]}).to_parquet(out / "index.parquet")
    return out


def batch_seconds(load: Any, batches: list[np.ndarray]) -> float:
    """Seconds per batch: the best of three passes (the first one warms the page cache)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for rows in batches:
            load(rows)
        best = min(best, (time.perf_counter() - start) / len(batches))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=SYNTHETIC, help="source archive")
    parser.add_argument("--format1", type=Path, help="a format-1 cache of the same archive")
    parser.add_argument("--tmp", type=Path, help="where the caches are built (default: /tmp)")
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    source = open_archive(args.archive)
    format1 = args.format1
    if format1 is None:
        default = SYNTHETIC.with_name(SYNTHETIC.name + "-cache")
        marker = default / MARKER
        if args.archive == SYNTHETIC and marker.is_file():
            if json.loads(marker.read_text())["version"] == 1:
                format1 = default
    figures: dict[str, Any] = {"patches": len(source)}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for workers in (1, 2):
            start = time.perf_counter()
            out = prepare_cache(source, Path(tmp) / f"cache-{workers}", workers=workers)
            rate = len(source) / (time.perf_counter() - start)
            figures[f"prepare_patches_s_workers_{workers}"] = round(rate, 1)
        if format1 is None:
            start = time.perf_counter()
            format1 = write_format1(source, Path(tmp) / "format1")
            rate = len(source) / (time.perf_counter() - start)
            figures["format1_prepare_patches_s_in_process"] = round(rate, 1)
        cache = open_archive(out)
        assert isinstance(cache, CachedArchive)
        pairs = int((cache.metadata["has_s1"] & cache.metadata["has_s2"]).sum())
        native = native_bytes_per_pair()
        figures["native_bytes_per_pair"] = native
        for name, folder in (("format2", out), ("format1", format1)):
            per_pair = folder_bytes(folder) / pairs
            figures[f"{name}_bytes_per_pair"] = round(per_pair)
            figures[f"{name}_vs_native"] = round(per_pair / native, 3)
        rng = np.random.default_rng(0)
        batches = [rng.choice(len(cache), BATCH, replace=False) for _ in range(args.batches)]
        old = Format1(format1)
        modalities = ("s1", "s2")
        two = batch_seconds(lambda rows: load_batch(cache, rows, modalities), batches)
        one = batch_seconds(old.load_batch, batches)
        check = load_batch(cache, batches[0], modalities)
        reference = old.load_batch(batches[0])
        figures["same_batches"] = all(torch.equal(check[m], reference[m]) for m in modalities)
    figures["load_batch_ms_format2"] = round(two * 1e3, 2)
    figures["load_batch_ms_format1"] = round(one * 1e3, 2)
    figures["load_batch_format2_vs_format1"] = round(one / two, 2)
    figures["prepare_workers_2_vs_1"] = round(
        figures["prepare_patches_s_workers_2"] / figures["prepare_patches_s_workers_1"], 2
    )
    print(
        f"bytes per pair     format 2 {figures['format2_bytes_per_pair']:>9,}  "
        f"({figures['format2_vs_native']}x native)   format 1 "
        f"{figures['format1_bytes_per_pair']:>9,} ({figures['format1_vs_native']}x)"
    )
    print(
        f"prepare patches/s  1 worker {figures['prepare_patches_s_workers_1']:>9}  "
        f"2 workers {figures['prepare_patches_s_workers_2']}"
    )
    print(
        f"load_batch of {BATCH}   format 2 {figures['load_batch_ms_format2']:>8} ms  "
        f"format 1 {figures['load_batch_ms_format1']} ms  (same values: {figures['same_batches']})"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
