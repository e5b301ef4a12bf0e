"""Split an archive among federated clients and show what each client gets.

ARCHIVE_OR_METADATA: a metadata .parquet file, or an archive folder (v1, v2, synthetic, cache).

Partitions: iid, dirichlet, modality, country, season.

Options: dirichlet alpha=0.5 min_size=10; modality s1_only=0.3 s2_only=0.3 both=0.4.

One row per client: patches, modalities, main countries, main labels.

--json writes the shards (for the simulation and the Flower clients).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from fedrs.cli._common import console
from fedrs.errors import InputError

_LABEL_WIDTH = 24


def parse_option(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as int, float, true/false/none, or else a string."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise InputError(f"--option {text!r}: expected key=value")
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    if lowered in ("none", "null"):
        return key, None
    for convert in (int, float):
        try:
            return key, convert(raw)
        except ValueError:
            pass
    return key, raw


def read_metadata(source: Path, metadata: Path | None = None) -> Any:
    """Normalised metadata of a parquet file or of an archive folder."""
    if source.is_dir():
        # heavy: pandas, pyarrow, rasterio, imported when the command runs
        from fedrs.data import open_archive

        return open_archive(source, metadata=metadata).metadata
    if not source.exists():
        raise InputError(f"{source}: no such file or folder")
    if source.suffix.lower() != ".parquet":
        raise InputError(f"{source}: expected a metadata .parquet file or an archive folder")
    # heavy: pandas, pyarrow, rasterio, imported when the command runs
    from fedrs.data.metadata import load_metadata

    return load_metadata(source)


def _shorten(name: str, width: int = _LABEL_WIDTH) -> str:
    return name if len(name) <= width else name[: width - 1].rstrip(" ,") + "…"


def _shares(items: tuple[tuple[str, float], ...], *, shorten: bool = False) -> str:
    return ", ".join(f"{_shorten(n) if shorten else n} {share:.0%}" for n, share in items)


def main(
    archive_or_metadata: Path = typer.Argument(
        ..., help="Metadata .parquet file, or an archive folder (v1, v2, synthetic, cache)."
    ),
    clients: int = typer.Option(10, "--clients", "-n", help="Number of clients."),
    partition: str = typer.Option(
        "iid", "--partition", "-p", help="iid, dirichlet, modality, country or season."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same shards."),
    option: list[str] | None = typer.Option(
        None, "--option", "-o", help="Partition option key=value (repeatable), e.g. alpha=0.1."
    ),
    metadata: Path | None = typer.Option(
        None, "--metadata", help="The v2 metadata.parquet when it is not in the archive folder."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write the shards to this file."),
    top: int = typer.Option(3, "--top", help="Countries and labels shown per client."),
) -> None:
    # heavy: pandas, pyarrow, rasterio, imported when the command runs
    from fedrs.partitions import partition as make_partition

    # heavy: pandas, pyarrow, rasterio, imported when the command runs
    from fedrs.partitions import save_shards, summarize_shards

    options = dict(parse_option(text) for text in option or [])
    if top < 1:
        raise InputError(f"--top must be >= 1, got {top}")
    table = read_metadata(archive_or_metadata, metadata)
    started = time.perf_counter()
    shards = make_partition(partition, table, clients, seed=seed, **options)
    elapsed = time.perf_counter() - started
    summaries = summarize_shards(shards, table, top=top)

    view = Table(title=f"{partition} partition of {archive_or_metadata} (seed {seed})")
    view.add_column("client", justify="right")
    view.add_column("patches", justify="right")
    view.add_column("modalities")
    view.add_column("countries")
    view.add_column("top labels")
    for s in summaries:
        view.add_row(
            str(s.client_id),
            f"{s.patches:,}",
            "+".join(m.upper() for m in s.modalities),
            _shares(s.countries),
            _shares(s.labels, shorten=True),
        )
    console.print(view)
    assigned = sum(s.patches for s in summaries)
    console.print(
        f"{len(shards)} clients, {assigned:,} of {len(table):,} patches assigned in {elapsed:.2f} s"
    )
    if json_out is not None:
        save_shards(
            json_out,
            shards,
            partition=partition,
            num_clients=clients,
            seed=seed,
            options=options,
            source=str(archive_or_metadata),
        )
        console.print(f"shards written to [bold]{json_out}[/]")
