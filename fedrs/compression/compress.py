"""Compress an archive into a ``.fedrs`` file: :func:`compress_archive`.

What an archive written by :func:`compress_archive` holds (the container format itself is
described in :mod:`fedrs.container.format`):

* Header ``meta``: ``{"format": "fedrs-compressed-archive", "version": 1, "model":
  {"config", "fingerprint", "experiment"}, "modalities", "resample", "device", "source":
  {"root", "layout", "split"}, "georeference"}``; ``device`` is the device type that ran the
  codec (``"cpu"``, ``"cuda"``: bitstreams are not promised to decode alike on another type,
  see :mod:`fedrs.devices`); ``georeference`` says where the records' georeferences
  came from: ``"geotiff"`` (the patches' GeoTIFFs), ``"cache-source"`` (the archive a fedrs cache
  was made from) or ``"none"`` (a cache whose source folder is gone: its records carry none,
  since a cache stores no georeference).  The header's ``model_fingerprint`` is the model's
  (:func:`~fedrs.compression.trained.model_fingerprint`).
* One record per patch: ``streams`` ``{"s2": {"z": ..., "y": ...}, "s1": {...}}`` with the
  codec's bitstreams of each modality the patch has, and ``"info": {"json": ...}``, the
  patch's descriptive fields as compact JSON (``s1_name`` where it differs from the patch id,
  ``split``, ``country``, ``season`` where it differs from the one the name gives); ``shapes``
  ``{modality: {"image": [H, W], "z": [h, w]}}``; the hash code computed from the bitstreams
  (``JointModel.hash_from_bitstreams``: entropy decoding of the latents only, no image);
  the 19 labels; ``georef`` per modality (S2: the grid of the 10 m band B02; S1: VV).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedrs.compression._common import INFO_GROUP, INFO_STREAM, Model, Progress, check_batch_size
from fedrs.compression.patch_files import geotiff_source
from fedrs.compression.trained import TrainedModel, as_trained_model
from fedrs.container import ArchiveWriter, ContainerExistsError, GeoReference, Record
from fedrs.data.archive import PatchArchive, check_modalities, open_archive
from fedrs.data.errors import CorruptPatchError
from fedrs.data.metadata import season_of
from fedrs.data.transforms import normalize
from fedrs.errors import InputError
from fedrs.io import check_name
from fedrs.models import CompressedPatch, JointModel

__all__ = [
    "ARCHIVE_FORMAT",
    "CompressReport",
    "compress_archive",
    "encode_patches",
]

ARCHIVE_FORMAT = "fedrs-compressed-archive"
"""``meta["format"]`` of archives written by :func:`compress_archive`."""

ARCHIVE_META_VERSION = 1


# ------------------------------------------------------------------------------------------------
# Encoding


@dataclass
class CompressReport:
    """What :func:`compress_archive` wrote.

    Attributes:
        path: the ``.fedrs`` file.
        records: patches written.
        patches: patches per modality.
        stream_bytes: bitstream bytes per modality.
        file_bytes: size of the file.
        georeferenced: records that carry a georeference.
        georeference: where georeferences came from (``geotiff``, ``cache-source``, ``none``).
        skipped: ``(patch_id, reason)`` of the patches left out because their files are bad.
        fingerprint: the model's fingerprint.
        seconds: wall time.
    """

    path: Path
    records: int
    patches: dict[str, int]
    stream_bytes: dict[str, int]
    file_bytes: int
    georeferenced: int
    georeference: str
    skipped: list[tuple[str, str]]
    fingerprint: str
    seconds: float


@dataclass
class _Patch:
    row: int
    patch_id: str
    item: dict[str, Any]
    georef: dict[str, GeoReference]


def _device(model: JointModel) -> torch.device:
    return next(model.parameters()).device


def encode_patches(
    model: JointModel, images: Sequence[dict[str, torch.Tensor | None]]
) -> tuple[dict[str, list[CompressedPatch | None]], np.ndarray]:
    """Compress items and hash them from their bitstreams.

    Args:
        model: the joint model (evaluation mode).
        images: per item, physical values per modality (``None`` where the item lacks it).

    Returns:
        ``(compressed, codes)``: per modality a list with one :class:`CompressedPatch` per item
        (``None`` where absent), and the ``(B, K)`` ``int8`` codes in {-1, +1} computed by
        ``model.hash_from_bitstreams`` from exactly those streams.
    """

    device = _device(model)
    compressed: dict[str, list[CompressedPatch | None]] = {}
    for modality in model.modalities:
        index = [i for i, item in enumerate(images) if item.get(modality) is not None]
        if not index:
            continue
        x = torch.stack([images[i][modality] for i in index])  # type: ignore[misc]
        streams = model.compress({modality: normalize(x, modality).to(device)})[modality]
        full: list[CompressedPatch | None] = [None] * len(images)
        for i, patch in zip(index, streams, strict=True):
            full[i] = patch
        compressed[modality] = full
    if not compressed:
        raise InputError(f"no item holds any of the model's modalities {model.modalities}")
    codes = model.hash_from_bitstreams(compressed)
    return compressed, codes.to("cpu", torch.int8).numpy()


def _info_bytes(info: dict[str, Any]) -> bytes:
    kept = {k: v for k, v in info.items() if v is not None}
    return json.dumps(kept, separators=(",", ":"), sort_keys=True).encode()


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return str(value)


def _open_source(
    archive: str | Path | PatchArchive,
    modalities: tuple[str, ...],
    split: str | None,
    metadata: str | Path | None,
) -> PatchArchive:
    if isinstance(archive, PatchArchive):
        if split is not None or metadata is not None:
            raise InputError("split and metadata apply when the archive is given as a folder")
        extra = sorted(set(archive.modalities) - set(modalities))
        if extra:
            raise InputError(
                f"{archive.root}: the archive holds {extra[0]!r}, which the model does not "
                f"encode; open it with modalities={list(modalities)}"
            )
        return archive
    return open_archive(archive, modalities=modalities, split=split, metadata=metadata)


def _choose_modalities(trained: TrainedModel, modalities: Sequence[str] | None) -> tuple[str, ...]:
    if modalities is None:
        return trained.modalities
    chosen = check_modalities(modalities)
    missing = [m for m in chosen if m not in trained.modalities]
    if missing:
        raise InputError(
            f"the model has no codec for {missing[0]!r} (it encodes {list(trained.modalities)})"
        )
    return chosen


def compress_archive(
    archive: str | Path | PatchArchive,
    model: Model | JointModel,
    out: str | Path,
    *,
    split: str | None = None,
    modalities: Sequence[str] | None = None,
    metadata: str | Path | None = None,
    batch_size: int = 16,
    overwrite: bool = False,
    skip_bad: bool = False,
    name: str | None = None,
    workers: int = 2,
    progress: Progress | None = None,
) -> CompressReport:
    """Write the compressed archive of ``archive`` to ``out`` (see the module docstring).

    Args:
        archive: an archive folder that :func:`fedrs.data.open_archive` reads (v1, v2,
            synthetic, fedrs cache), or an opened archive.
        model: a run folder, its ``model.pt`` (with ``config.toml`` beside it), a
            :class:`TrainedModel` or a ``JointModel``.
        out: the ``.fedrs`` file to write (its folder must exist).
        split: ``train``, ``validation``, ``test`` or None for all patches.
        modalities: what to encode (default: all the model encodes).
        metadata: the v2 ``metadata.parquet`` when it is not in the archive folder.
        batch_size: patches encoded together.
        overwrite: replace an existing ``out``.
        skip_bad: leave out patches whose files are bad (listed in the report) instead of
            stopping at the first.
        name: display name stored in the header (default: the file stem when read).
        workers: threads reading GeoTIFFs.
        progress: ``progress(description, total)`` -> ``advance(n)``, for a progress bar.

    Returns:
        A :class:`CompressReport`.

    Raises:
        InputError: bad arguments, an archive that cannot be opened, or ``out`` exists.
        CorruptPatchError: a bad patch file (without ``skip_bad``); nothing is written.
    """

    started = time.perf_counter()
    if Path(out).exists() and not overwrite:  # before the (possibly long) opening of the archive
        raise ContainerExistsError(out, "already exists; pass overwrite=True to replace it")
    trained = as_trained_model(model)
    batch_size = check_batch_size(batch_size)
    chosen = _choose_modalities(trained, modalities)
    source = _open_source(archive, chosen, split, metadata)
    geo = geotiff_source(source)
    if geo is None:
        georeference = "none"
    else:
        georeference = "geotiff" if geo.layout == source.layout else "cache-source"
    meta = {
        "format": ARCHIVE_FORMAT,
        "version": ARCHIVE_META_VERSION,
        "model": trained.header_meta(),
        "modalities": list(chosen),
        "resample": source.resample,
        "device": _device(trained.model).type,
        "source": {
            "root": str(Path(source.root).resolve()),
            "layout": source.layout,
            "split": split,
        },
        "georeference": georeference,
    }
    table = source.metadata
    ids = table["patch_id"].astype(str).tolist()
    s1_names = [_text(v) for v in table["s1_name"]]
    infos = _descriptive_fields(table)
    report = CompressReport(
        path=Path(out),
        records=0,
        patches=dict.fromkeys(chosen, 0),
        stream_bytes=dict.fromkeys(chosen, 0),
        file_bytes=0,
        georeferenced=0,
        georeference=georeference,
        skipped=[],
        fingerprint=trained.fingerprint,
        seconds=0.0,
    )

    advance = progress("compressing patches", len(source)) if progress is not None else None

    def read(row: int) -> _Patch | tuple[str, str]:
        try:
            item = source[row]
            present = [m for m in chosen if item.get(m) is not None]
            georef = geo.georeference(ids[row], s1_names[row], present) if geo else {}
        except CorruptPatchError as exc:
            if not skip_bad:
                raise
            return (ids[row], str(exc))
        return _Patch(row, ids[row], item, georef)

    with (
        ArchiveWriter(
            out,
            hash_bits=trained.hash_bits,
            model_fingerprint=trained.fingerprint,
            meta=meta,
            name=name,
            overwrite=overwrite,
        ) as writer,
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        torch.no_grad(),
    ):
        for start in range(0, len(source), batch_size):
            rows = range(start, min(start + batch_size, len(source)))
            patches: list[_Patch] = []
            for result in pool.map(read, rows):
                if isinstance(result, _Patch):
                    patches.append(result)
                else:
                    report.skipped.append(result)
            if patches:
                _write_batch(writer, trained.model, patches, infos, chosen, report)
            if advance is not None:
                advance(len(rows))
    report.file_bytes = Path(out).stat().st_size
    report.seconds = time.perf_counter() - started
    return report


def _descriptive_fields(table: Any) -> list[dict[str, Any]]:
    columns = {
        c: table[c].tolist() if c in table.columns else [None] * len(table)
        for c in ("patch_id", "s1_name", "split", "country", "season")
    }
    out = []
    for pid, s1, split, country, season in zip(*columns.values(), strict=True):
        pid, s1, season = str(pid), _text(s1), _text(season)
        if s1 is not None and s1 != pid:
            check_name(s1, f"patch {pid!r}: S1 name")
        out.append(
            {
                "s1_name": s1 if s1 != pid else None,
                "split": _text(split),
                "country": _text(country),
                "season": season if season != season_of(pid) else None,
            }
        )
    return out


def _write_batch(
    writer: ArchiveWriter,
    model: JointModel,
    patches: list[_Patch],
    infos: list[dict[str, Any]],
    modalities: tuple[str, ...],
    report: CompressReport,
) -> None:
    images = [{m: p.item.get(m) for m in modalities} for p in patches]
    compressed, codes = encode_patches(model, images)
    for i, patch in enumerate(patches):
        streams: dict[str, dict[str, bytes]] = {}
        shapes: dict[str, dict[str, list[int]]] = {}
        for modality, column in compressed.items():
            stream = column[i]
            if stream is None:
                continue
            streams[modality] = {"z": stream.z, "y": stream.y}
            shapes[modality] = {"image": list(stream.image_size), "z": list(stream.z_shape)}
            report.patches[modality] += 1
            report.stream_bytes[modality] += stream.num_bytes
        info = infos[patch.row]
        if any(v is not None for v in info.values()):
            streams[INFO_GROUP] = {INFO_STREAM: _info_bytes(info)}
        writer.add(
            Record(
                patch_id=patch.patch_id,
                code=codes[i],
                streams=streams,
                shapes=shapes,
                labels=np.asarray(patch.item["labels"], dtype=np.float32),
                georef=patch.georef,
            )
        )
        report.records += 1
        report.georeferenced += bool(patch.georef)
