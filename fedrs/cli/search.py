"""Search .fedrs archives by content: a federated top-k over every archive given."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fedrs.cli._common import THREADS_OPTION, console, fail
from fedrs.devices import cross_device_note, resolve_device


def main(
    archive: list[Path] = typer.Option(
        ..., "--archive", help="A .fedrs archive to search (repeat for several)."
    ),
    query_patch: list[Path] | None = typer.Option(
        None,
        "--query-patch",
        help="Patch folder (v1 or v2 layout) with S2 band files and/or S1 VV/VH files; repeat "
        "to combine the S2 and the S1 folder of one patch. Needs --model.",
    ),
    query_id: str | None = typer.Option(
        None, "--query-id", help="Patch id of a record in one of the archives (its stored code)."
    ),
    k: int = typer.Option(20, "--k", min=1, help="Hits to return."),
    model: Path | None = typer.Option(
        None, "--model", help="Run folder or model.pt of the archives' model (for --query-patch)."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    threads: int = THREADS_OPTION,
    device: str = typer.Option(
        "auto",
        help="Where --query-patch is hashed: auto (a GPU where one is seen, else the CPU), cpu, "
        "cuda or cuda:N.",
    ),
) -> None:
    torch.set_num_threads(threads)

    # heavy: pandas, pyarrow, rasterio, imported when the command runs
    from fedrs.compression import (
        hash_query_patch,
        model_for_archives,
        open_archives,
        patch_code,
    )

    # heavy: faiss, pandas, pyarrow, rasterio, imported when the command runs
    from fedrs.retrieval import ArchiveSearch, federated_search

    if bool(query_patch) == (query_id is not None):
        fail("give exactly one of --query-patch and --query-id")
    archives = open_archives(archive)
    query: dict[str, Any]
    if query_id is not None:
        found, code = patch_code(archives, query_id)
        query = {"patch_id": query_id, "archive": archives[found].name}
    else:
        if model is None:
            fail("--query-patch needs --model (the model that wrote the archives)")

        target = resolve_device(device, key="--device")
        trained = model_for_archives(archives, model)
        trained.model.to(target)
        meta = archives[0].meta
        resample = meta.get("resample", "bilinear") if isinstance(meta, dict) else "bilinear"
        written = {a.meta.get("device") for a in archives if isinstance(a.meta, dict)}
        for kind in sorted(w for w in written if isinstance(w, str)):
            note = cross_device_note(kind, target, "the query's hash code")
            if note is not None:
                typer.echo(f"fedrs: warning: {note}", err=True)
        hashed = hash_query_patch(list(query_patch or []), trained, resample=str(resample))
        code = hashed.code
        query = {
            "patch": hashed.patch.name,
            "folders": [str(f) for f in hashed.patch.folders.values()],
            "modalities": sorted(hashed.patch.images),
        }
    query["code"] = bytes(np.asarray(code, dtype=np.uint8)).hex()
    result = federated_search([ArchiveSearch(a) for a in archives], code[None, :], k)
    hits = []
    for rank, hit in enumerate(result[0], start=1):
        labels = archives[hit.archive].labels[hit.position]
        names = archives[hit.archive].label_names
        hits.append(
            {
                "rank": rank,
                "patch_id": hit.patch_id,
                "archive": hit.archive_name,
                "archive_path": str(archives[hit.archive].path),
                "distance": hit.distance,
                "labels": [names[i] for i in np.flatnonzero(labels > 0)],
            }
        )
    if json_output:
        payload = {
            "query": query,
            "k": k,
            "archives": [
                {"name": a.name, "path": str(a.path), "records": len(a)} for a in archives
            ],
            "hits": hits,
        }
        typer.echo(json.dumps(payload))
        return
    _print_table(query, hits, archives)


def hits_table(title: str, hits: list[dict[str, Any]], *, one_line: bool = False) -> Table:
    """The hits of a search, whole in an 80-column terminal: each patch id with its archive and
    labels on the line below; ``one_line`` gives them columns of their own (one line a hit)."""
    table = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False
    )
    table.add_column("rank", justify="right", no_wrap=True)
    table.add_column("patch", overflow="fold")
    if one_line:
        table.add_column("archive", overflow="fold")
    table.add_column("distance", justify="right", no_wrap=True)
    if one_line:
        table.add_column("labels")
    for hit in hits:
        labels = "; ".join(hit["labels"])
        rank, distance = str(hit["rank"]), str(hit["distance"])
        if one_line:
            table.add_row(rank, Text(hit["patch_id"]), Text(hit["archive"]), distance, Text(labels))
        else:
            patch = Text(hit["patch_id"])
            patch.append(f"\nin {hit['archive']}: {labels}", style="dim")
            table.add_row(rank, patch, distance)
    return table


def _print_table(query: dict[str, Any], hits: list[dict[str, Any]], archives: list[Any]) -> None:
    what = query.get("patch_id") or query.get("patch")
    title = f"top {len(hits)} for {what} over {len(archives)} archive(s)"
    if console.is_terminal:
        console.print(hits_table(title, hits))
    else:  # a pipe or a file: no terminal width to respect, keep rows on one line
        wide = Console(file=console.file, width=max(console.width, 200))
        wide.print(hits_table(title, hits, one_line=True))
