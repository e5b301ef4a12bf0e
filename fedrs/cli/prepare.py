"""Convert an archive (v1, v2 or synthetic) into a memory-mapped fedrs cache.

The cache is built in ``.<name>.partial`` beside ``--out`` by ``--workers`` processes and moved
into place when whole; an interrupted preparation is continued by the same command.
"""

from __future__ import annotations

from pathlib import Path

import typer

from fedrs.cli._common import console, print_skipped, progress


def main(
    archive: Path = typer.Argument(..., help="Archive folder (v1.0, v2.0 or synthetic layout)."),
    out: Path = typer.Option(..., "--out", help="Cache folder to write."),
    metadata: Path | None = typer.Option(
        None, help="The v2 metadata.parquet when it is not in the archive folder."
    ),
    modalities: str = typer.Option("s1,s2", help="Modalities to keep, comma-separated."),
    resample: str = typer.Option("bilinear", help="Upsampling of 20/60 m bands: bilinear|nearest."),
    overwrite: bool = typer.Option(
        False, help="Replace the fedrs cache in --out (once the new one is complete)."
    ),
    skip_bad: bool = typer.Option(False, help="Leave out patches with bad files (reported)."),
    workers: int = typer.Option(
        2, min=1, help="Processes reading the archive (each opens it itself; 1: this process)."
    ),
) -> None:
    # heavy: pandas, pyarrow, rasterio, imported when the command runs
    from fedrs.data import open_archive, prepare_cache

    # heavy: pandas, pyarrow, rasterio, imported when the command runs
    from fedrs.data.cache import check_cache_target, partial_folder

    # every check before the (possibly long) opening of the archive, and before any change
    check_cache_target(out, source=archive, overwrite=overwrite)
    source = open_archive(
        archive,
        metadata=metadata,
        resample=resample,
        modalities=[m.strip() for m in modalities.split(",") if m.strip()],
        on_error="skip" if skip_bad else "raise",
    )
    print_skipped(source.skipped)
    with progress() as bar:
        task = bar.add_task("caching patches", total=len(source))

        def resumed(done: int) -> None:
            bar.console.print(
                f"continuing the interrupted preparation in {partial_folder(out)}: "
                f"{done} of {len(source)} patches are cached already",
                highlight=False,
                soft_wrap=True,
            )

        prepare_cache(
            source,
            out,
            overwrite=overwrite,
            workers=workers,
            on_progress=lambda n: bar.advance(task, n),
            on_resume=resumed,
        )
    console.print(
        f"cache [bold]{out}[/]: {len(source)} patches "
        f"({int(source.metadata['has_s2'].sum())} with S2, "
        f"{int(source.metadata['has_s1'].sum())} with S1)"
        + (f", {len(source.skipped)} skipped" if source.skipped else "")
    )
