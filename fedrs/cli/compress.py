"""Compress an archive into a .fedrs file: bitstreams, hash codes, labels, georeference."""

from __future__ import annotations

from pathlib import Path

import torch
import typer

from fedrs.cli._common import (
    DEVICE_OPTION,
    THREADS_OPTION,
    console,
    fail,
    print_skipped,
    progress,
    tracker,
)
from fedrs.devices import resolve_device


def parse_modalities(text: str | None) -> list[str] | None:
    """``"s1,s2"`` -> ``["s1", "s2"]``; None or empty -> None."""
    if text is None:
        return None
    chosen = [m.strip() for m in text.split(",") if m.strip()]
    if not chosen:
        fail(f"--modalities: expected a comma-separated subset of s1,s2, got {text!r}")
    return chosen


def parse_split(text: str) -> str | None:
    """``all`` -> None; other values are passed on (checked by the archive reader)."""
    return None if text.strip().lower() == "all" else text.strip()


def main(
    archive: Path = typer.Argument(
        ..., help="Archive folder: BigEarthNet v1 or v2 layout, synthetic, or a fedrs cache."
    ),
    model: Path = typer.Option(
        ..., "--model", help="Training run folder (model.pt + config.toml) or its model.pt."
    ),
    out: Path = typer.Option(..., "--out", help="The .fedrs file to write."),
    split: str = typer.Option("all", help="train, validation, test or all."),
    modalities: str | None = typer.Option(
        None, help="Modalities to encode, comma-separated (default: all the model encodes)."
    ),
    metadata: Path | None = typer.Option(
        None, help="The v2 metadata.parquet when it is not in the archive folder."
    ),
    batch_size: int = typer.Option(16, min=1, help="Patches encoded together."),
    name: str | None = typer.Option(None, help="Display name of the archive in search results."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out file."),
    skip_bad: bool = typer.Option(False, help="Leave out patches with bad files (reported)."),
    threads: int = THREADS_OPTION,
    device: str = DEVICE_OPTION,
) -> None:
    torch.set_num_threads(threads)
    # heavy: pandas, pyarrow, rasterio, imported when the command runs
    from fedrs.compression import compress_archive, load_trained_model

    target = resolve_device(device, key="--device")
    trained = load_trained_model(model, device=str(target))  # the archive records the type
    with progress() as bar:
        track = tracker(bar)

        report = compress_archive(
            archive,
            trained,
            out,
            split=parse_split(split),
            modalities=parse_modalities(modalities),
            metadata=metadata,
            batch_size=batch_size,
            overwrite=overwrite,
            skip_bad=skip_bad,
            name=name,
            progress=track,
        )
    print_skipped(report.skipped)
    counts = ", ".join(f"{m.upper()} {n}" for m, n in report.patches.items())
    per_patch = report.file_bytes / report.records if report.records else 0.0
    console.print(
        f"archive [bold]{report.path}[/]: {report.records} patches ({counts}), "
        f"{report.file_bytes / 2**20:.2f} MiB ({per_patch:.0f} bytes per patch), "
        f"georeference: {report.georeference} ({report.georeferenced} patches)"
        + (f", {len(report.skipped)} skipped" if report.skipped else ""),
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"model {report.fingerprint}", highlight=False, soft_wrap=True)
