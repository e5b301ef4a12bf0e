"""Write a synthetic BigEarthNet-like archive (v2.0 layout: GeoTIFFs + metadata.parquet).

Labels, split, country and products are drawn from the real v2.0 metadata.
Pixels follow the labels: one region per label with its class's spectral and radar signature.
The same seed gives the same files.
A complete archive with the same parameters in --out is kept (--overwrite writes it again).
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from fedrs.cli._common import console, progress


def main(
    out: Path = typer.Option(..., "--out", help="Folder to write (new, empty, or synthetic)."),
    patches: int = typer.Option(2000, "--patches", help="Number of patches."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    s1_only_fraction: float = typer.Option(
        0.0, "--s1-only-fraction", help="Share of patches with Sentinel-1 only."
    ),
    s2_only_fraction: float = typer.Option(
        0.0, "--s2-only-fraction", help="Share of patches with Sentinel-2 only."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Write again even if --out holds this very archive."
    ),
) -> None:
    # heavy: pandas, pyarrow, rasterio, imported when the command runs
    from fedrs.data.synth import (
        check_output,
        check_parameters,
        is_synthetic_archive,
        write_synthetic_archive,
    )

    check_parameters(patches, seed, s1_only_fraction, s2_only_fraction)
    check_output(out)
    fractions = {"s1_only_fraction": s1_only_fraction, "s2_only_fraction": s2_only_fraction}
    if not overwrite and is_synthetic_archive(out, patches=patches, seed=seed, **fractions):
        console.print(f"synthetic archive [bold]{out}[/] is complete already ({patches} patches)")
        return
    start = time.perf_counter()
    with progress() as bar:
        task = bar.add_task("writing patches", total=patches)
        metadata = write_synthetic_archive(
            out,
            patches=patches,
            seed=seed,
            progress=lambda done, _total: bar.update(task, completed=done),
            **fractions,
        )
    both = int((metadata["has_s1"] & metadata["has_s2"]).sum())
    console.print(
        f"synthetic archive [bold]{out}[/]: {len(metadata)} patches ({both} S1+S2, "
        f"{int((~metadata['has_s2']).sum())} S1-only, {int((~metadata['has_s1']).sum())} "
        f"S2-only) in {time.perf_counter() - start:.1f} s"
    )
