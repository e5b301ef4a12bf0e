"""Decompress a .fedrs archive into GeoTIFFs (v2 layout) that read as an archive again."""

from __future__ import annotations

from pathlib import Path

import torch
import typer

from fedrs.cli._common import (
    DEVICE_OPTION,
    THREADS_OPTION,
    console,
    print_skipped,
    progress,
    tracker,
)
from fedrs.devices import cross_device_note, resolve_device


def main(
    container: Path = typer.Argument(..., help="The .fedrs file."),
    model: Path = typer.Option(
        ...,
        "--model",
        help="The model that wrote it: run folder or model.pt (checked by fingerprint).",
    ),
    out: Path = typer.Option(..., "--out", help="Folder to write (new or empty)."),
    batch_size: int = typer.Option(16, min=1, help="Records decoded together."),
    overwrite: bool = typer.Option(False, help="Replace a previous decompression in --out."),
    skip_bad: bool = typer.Option(False, help="Leave out damaged records (reported)."),
    threads: int = THREADS_OPTION,
    device: str = DEVICE_OPTION,
) -> None:
    torch.set_num_threads(threads)
    # heavy: pandas, pyarrow, rasterio, imported when the command runs
    from fedrs.compression import decompress_archive, model_for_archive

    # heavy: pandas, pyarrow, rasterio, imported when the command runs
    from fedrs.container import CompressedArchive

    target = resolve_device(device, key="--device")
    with CompressedArchive.open(container) as archive:
        trained = model_for_archive(archive, model)
        trained.model.to(target)
        meta = archive.meta if isinstance(archive.meta, dict) else {}
        note = cross_device_note(meta.get("device"), target, "decoding")
        if note is not None:
            typer.echo(f"fedrs: warning: {note}", err=True)
        with progress() as bar:
            track = tracker(bar)

            report = decompress_archive(
                archive,
                trained,
                out,
                batch_size=batch_size,
                overwrite=overwrite,
                skip_bad=skip_bad,
                progress=track,
            )
    print_skipped(report.skipped)
    counts = ", ".join(f"{m.upper()} {n}" for m, n in sorted(report.written.items()))
    console.print(
        f"archive [bold]{report.out}[/]: {report.patches} patches ({counts or 'none'}), "
        f"{report.georeferenced} georeferenced"
        + (f", {len(report.skipped)} damaged records skipped" if report.skipped else ""),
        highlight=False,
        soft_wrap=True,
    )
