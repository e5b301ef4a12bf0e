"""Patches/s through rasterio (GeoTIFFs) vs through the fedrs memory-mapped cache.

Both read the same patches, item by item through the same ``archive[i]`` API, in this one
process; the cache is also read in batches (``get_batch``) as the trainer does.  With no
``--archive`` a synthetic archive is written to a temporary folder.  The last line is a JSON
object with the figures.

    python bench/data_loading.py [--archive DIR] [--patches 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from fedrs.data import open_archive, prepare_cache


def rate(archive, rows: np.ndarray, repeat: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for i in rows:
            archive[int(i)]
        best = min(best, time.perf_counter() - start)
    return len(rows) / best


def batch_rate(archive, rows: np.ndarray, repeat: int, batch: int = 32) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for lo in range(0, len(rows), batch):
            archive.get_batch(rows[lo : lo + batch])
        best = min(best, time.perf_counter() - start)
    return len(rows) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, help="archive folder (default: synthetic)")
    parser.add_argument("--metadata", type=Path, help="v2 metadata.parquet if not in the archive")
    parser.add_argument("--patches", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.archive
        if root is None:
            from fedrs.data.synth import write_synthetic_archive

            root = Path(tmp) / "archive"
            write_synthetic_archive(root, patches=args.patches, seed=0)
        source = open_archive(root, metadata=args.metadata)
        prepare_cache(source, Path(tmp) / "cache")
        cached = open_archive(Path(tmp) / "cache")
        rows = np.arange(min(len(source), args.patches))
        geotiff = rate(source, rows, args.repeat)
        cache = rate(cached, rows, args.repeat)
        cache_batched = batch_rate(cached, rows, args.repeat)
    figures = {
        "patches": len(rows),
        "rasterio_patches_s": round(geotiff, 1),
        "cache_patches_s": round(cache, 1),
        "cache_batched_patches_s": round(cache_batched, 1),
        "cache_vs_rasterio_ratio": round(cache / geotiff, 1),
        "cache_batched_vs_rasterio_ratio": round(cache_batched / geotiff, 1),
    }
    print(f"rasterio (GeoTIFF)   {geotiff:10.1f} patches/s")
    print(f"cache (item)         {cache:10.1f} patches/s   {cache / geotiff:6.1f}x rasterio")
    print(f"cache (batch of 32)  {cache_batched:10.1f} patches/s   {cache_batched / geotiff:6.1f}x")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
