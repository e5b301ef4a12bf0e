"""Decompress a ``.fedrs`` archive into GeoTIFFs of the v2 layout: :func:`decompress_archive`.

Also the way back from a record to the model's objects (:func:`record_patches`) and to images
(:func:`decode_records`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedrs.compression._common import INFO_GROUP, INFO_STREAM, Model, Progress, check_batch_size
from fedrs.compression.patch_files import PATCH_WRITERS, v2_patch_folders
from fedrs.compression.trained import model_for_archive
from fedrs.container import CompressedArchive, CorruptRecordError, Record
from fedrs.data.archive import V2Archive
from fedrs.data.facts import PATCH_SIZE
from fedrs.data.metadata import season_of, write_metadata
from fedrs.data.transforms import denormalize
from fedrs.errors import InputError
from fedrs.io import atomic_write_text, check_output_folder, clear_output, inside, name_problem
from fedrs.models import CompressedPatch, JointModel

__all__ = [
    "DECOMPRESSED_MARKER",
    "DecompressReport",
    "decode_records",
    "decompress_archive",
    "record_patches",
]

DECOMPRESSED_MARKER = ".fedrs-decompressed.json"
"""Marker file of a folder written by :func:`decompress_archive`."""


# ------------------------------------------------------------------------------------------------
# Records back to the model's objects


def record_patches(archive: CompressedArchive, record: Record) -> dict[str, CompressedPatch]:
    """The :class:`CompressedPatch` of each modality of a record.

    Raises:
        CorruptRecordError: a modality without its ``y``/``z`` streams or shapes, an image size
            other than the patch size, or latent shapes other than those of that size.
    """

    out = {}
    for modality, named in record.streams.items():
        if modality == INFO_GROUP:
            continue
        shape = record.shapes.get(modality, {})
        image, z_shape = shape.get("image"), shape.get("z")
        if "y" not in named or "z" not in named or image is None or z_shape is None:
            raise CorruptRecordError(
                archive.path,
                record.patch_id,
                f"{modality} lacks its y/z streams or shapes",
                record.position,
            )
        if len(image) != 2 or len(z_shape) != 2:
            raise CorruptRecordError(
                archive.path, record.patch_id, f"{modality} shapes are not 2-D", record.position
            )
        patch = CompressedPatch(
            y=named["y"],
            z=named["z"],
            z_shape=(int(z_shape[0]), int(z_shape[1])),
            image_size=(int(image[0]), int(image[1])),
        )
        # before anything is allocated from them: a patch's size, and the latents of that size
        try:
            patch.check_shapes(image_size=(PATCH_SIZE, PATCH_SIZE))
        except InputError as exc:
            raise CorruptRecordError(
                archive.path, record.patch_id, f"{modality}: {exc}", record.position
            ) from None
        out[modality] = patch
    if not out:
        raise CorruptRecordError(
            archive.path, record.patch_id, "no bitstream of any modality", record.position
        )
    return out


def _record_info(archive: CompressedArchive, record: Record) -> dict[str, Any]:
    raw = record.streams.get(INFO_GROUP, {}).get(INFO_STREAM)
    if raw is None:
        return {}
    try:
        info = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptRecordError(
            archive.path, record.patch_id, f"unreadable info ({exc})", record.position
        ) from None
    if not isinstance(info, dict) or not all(
        isinstance(v, str) or v is None for v in info.values()
    ):
        raise CorruptRecordError(
            archive.path, record.patch_id, "info is not an object of strings", record.position
        )
    s1_name = info.get("s1_name")
    problem = None if s1_name is None else name_problem(s1_name)
    if problem is not None:
        raise CorruptRecordError(
            archive.path,
            record.patch_id,
            f"S1 name {s1_name!r} cannot name a file ({problem})",
            record.position,
        )
    return info


def decode_records(
    archive: CompressedArchive, model: JointModel, records: Sequence[Record], modality: str
) -> list[np.ndarray]:
    """Reconstructed physical images of ``modality`` for records that hold it.

    Records are decoded in groups of equal shapes; when a group fails, its records are decoded
    one by one so that the error names the damaged record.

    Raises:
        CorruptRecordError: a record whose streams do not decode.
    """

    patches = [record_patches(archive, r)[modality] for r in records]
    out: list[np.ndarray | None] = [None] * len(records)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, patch in enumerate(patches):
        groups.setdefault((patch.image_size, patch.z_shape), []).append(i)

    def decode(index: list[int]) -> None:
        x_hat = model.decompress({modality: [patches[i] for i in index]})["x_hat"][modality]
        physical = denormalize(x_hat, modality).to("cpu").numpy()
        for k, i in enumerate(index):
            out[i] = physical[k]

    for index in groups.values():
        try:
            decode(index)
        except ValueError:
            for i in index:
                try:
                    decode([i])
                except ValueError as exc:
                    record = records[i]
                    raise CorruptRecordError(
                        archive.path,
                        record.patch_id,
                        f"the {modality} bitstream does not decode ({exc})",
                        record.position,
                    ) from None
    return [x for x in out if x is not None]


# ------------------------------------------------------------------------------------------------
# Decompression


@dataclass
class DecompressReport:
    """What :func:`decompress_archive` wrote.

    Attributes:
        out: the archive folder (v2 layout).
        patches: patches written.
        written: patches per modality.
        georeferenced: patches written with a georeference.
        skipped: ``(record, reason)`` of damaged records left out.
        seconds: wall time.
    """

    out: Path
    patches: int
    written: dict[str, int]
    georeferenced: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def _prepare_output(out: Path, overwrite: bool) -> None:
    check_output_folder(out, markers=(DECOMPRESSED_MARKER,), holds="decompressed archive")
    if (out / DECOMPRESSED_MARKER).exists() and not overwrite:
        raise InputError(f"{out}: holds a decompressed archive (use --overwrite to replace it)")

    clear_output(out, (V2Archive.S2_DIR, V2Archive.S1_DIR, "metadata.parquet"))


def _chunks(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _write_metadata(rows: list[dict[str, Any]], path: Path) -> None:
    names = ("patch_id", "labels", "split", "country", "season", "s1_name", "has_s1", "has_s2")
    write_metadata({name: [row.get(name) for row in rows] for name in names}, path)


def decompress_archive(
    container: str | Path | CompressedArchive,
    model: Model | JointModel,
    out: str | Path,
    *,
    batch_size: int = 16,
    overwrite: bool = False,
    skip_bad: bool = False,
    progress: Progress | None = None,
) -> DecompressReport:
    """Decode a ``.fedrs`` archive into GeoTIFFs of the v2 layout plus ``metadata.parquet``.

    The result is a lossy reconstruction that :func:`fedrs.data.open_archive` reads:
    ``BigEarthNet-S2/<product>/<patch_id>/<patch_id>_<band>.tif`` (uint16, native 10 / 20 /
    60 m sizes), ``BigEarthNet-S1/<product>/<s1_name>/<s1_name>_{VV,VH}.tif`` (float32 dB), each
    with the record's georeference, and ``metadata.parquet`` (patch_id, labels, split, country,
    season, s1_name, has_s1, has_s2).

    Args:
        container: the ``.fedrs`` file or an opened archive.
        model: the model that wrote it (run folder or ``model.pt``; without ``config.toml``
            the configuration stored in the archive is used); checked by fingerprint.
        out: a new or empty folder (or, with ``overwrite``, one written by this function).
        batch_size: records decoded together.
        overwrite: replace a previous decompression in ``out``.
        skip_bad: leave out damaged records (listed in the report) instead of stopping.
        progress: ``progress(description, total)`` -> ``advance(n)``, for a progress bar.

    Raises:
        ModelMismatchError: the model did not write the archive.
        CorruptRecordError: a damaged record (without ``skip_bad``), naming it.
        InputError: bad arguments or output folder.
    """
    batch_size = check_batch_size(batch_size)
    if isinstance(container, CompressedArchive):
        return _decompress(container, model, Path(out), batch_size, overwrite, skip_bad, progress)
    with CompressedArchive.open(container) as archive:
        return _decompress(archive, model, Path(out), batch_size, overwrite, skip_bad, progress)


def _decompress(
    archive: CompressedArchive,
    model: Model | JointModel,
    out: Path,
    batch_size: int,
    overwrite: bool,
    skip_bad: bool,
    progress: Progress | None,
) -> DecompressReport:
    started = time.perf_counter()
    trained = model_for_archive(archive, model)
    _prepare_output(out, overwrite)
    marker = {
        "format": "fedrs-decompressed",
        "source": str(archive.path),
        "model_fingerprint": archive.model_fingerprint,
        "complete": False,
    }
    atomic_write_text(out / DECOMPRESSED_MARKER, json.dumps(marker, indent=1))
    report = DecompressReport(out=out, patches=0, written={}, georeferenced=0)
    rows: list[dict[str, Any]] = []
    label_names = archive.label_names
    records = archive.iter_records(skip_bad=skip_bad)
    advance = progress("decompressing patches", len(archive)) if progress is not None else None
    reported = 0
    with torch.no_grad():
        for chunk in _chunks(records, batch_size):
            handled = len(chunk)
            usable = _usable(archive, out, chunk, trained.modalities, skip_bad, report)
            images: dict[str, dict[int, np.ndarray]] = {}
            for modality in trained.modalities:
                holders = [r for r in usable if modality in r.streams]
                if holders:
                    images[modality] = _decode_checked(
                        archive, trained.model, holders, modality, skip_bad, report
                    )
            for record in usable:
                row = _write_patch(out, archive, record, images, label_names, report)
                if row is not None:
                    rows.append(row)
            if advance is not None:
                advance(handled + len(records.skipped) - reported)
            reported = len(records.skipped)
    if advance is not None and len(records.skipped) > reported:
        advance(len(records.skipped) - reported)
    for error in records.skipped:
        report.skipped.append((str(error.record), error.reason))
    _write_metadata(rows, out / "metadata.parquet")
    marker |= {"complete": True, "patches": report.patches}
    atomic_write_text(out / DECOMPRESSED_MARKER, json.dumps(marker, indent=1))
    report.seconds = time.perf_counter() - started
    return report


def _usable(
    archive: CompressedArchive,
    out: Path,
    chunk: list[Record],
    modalities: tuple[str, ...],
    skip_bad: bool,
    report: DecompressReport,
) -> list[Record]:
    """Records whose structure is sound and whose files would lie under ``out`` (others
    raise, or are skipped with ``skip_bad``)."""
    kept = []
    for record in chunk:
        try:
            unknown = sorted(set(record_patches(archive, record)) - set(modalities))
            if unknown:
                raise CorruptRecordError(
                    archive.path,
                    record.patch_id,
                    f"streams of {unknown[0]!r}, which the model does not decode",
                    record.position,
                )
            _output_folders(archive, out, record)
        except CorruptRecordError as exc:
            if not skip_bad:
                raise
            report.skipped.append((record.patch_id, exc.reason))
            continue
        kept.append(record)
    return kept


def _output_folders(archive: CompressedArchive, out: Path, record: Record) -> dict[str, Path]:
    """The folders a record's patch files go to, each checked to lie under ``out``.

    Raises:
        CorruptRecordError: a name that cannot name a file, or a folder outside ``out``.
    """
    info = _record_info(archive, record)
    s1_name = info.get("s1_name") or record.patch_id
    folders = {}
    for modality, (folder, _) in v2_patch_folders(out, record.patch_id, s1_name).items():
        try:
            folders[modality] = inside(out, folder)
        except InputError as exc:
            raise CorruptRecordError(
                archive.path, record.patch_id, str(exc), record.position
            ) from None
    return folders


def _decode_checked(
    archive: CompressedArchive,
    model: JointModel,
    records: list[Record],
    modality: str,
    skip_bad: bool,
    report: DecompressReport,
) -> dict[int, np.ndarray]:
    """Images by record position; with ``skip_bad`` undecodable records are reported."""
    try:
        decoded = decode_records(archive, model, records, modality)
        return {int(r.position or 0): x for r, x in zip(records, decoded, strict=True)}
    except CorruptRecordError:
        if not skip_bad:
            raise
    out: dict[int, np.ndarray] = {}
    for record in records:
        try:
            out[int(record.position or 0)] = decode_records(archive, model, [record], modality)[0]
        except CorruptRecordError as exc:
            report.skipped.append((record.patch_id, exc.reason))
    return out


def _write_patch(
    out: Path,
    archive: CompressedArchive,
    record: Record,
    images: dict[str, dict[int, np.ndarray]],
    label_names: tuple[str, ...],
    report: DecompressReport,
) -> dict[str, Any] | None:
    position = int(record.position or 0)
    modalities = [m for m in record.streams if m != INFO_GROUP]
    if not all(position in images.get(m, {}) for m in modalities):
        return None  # a modality failed to decode and was reported
    info = _record_info(archive, record)
    s1_name = info.get("s1_name") or record.patch_id
    names = {"s2": record.patch_id, "s1": s1_name}
    for modality in modalities:
        image, georef = images[modality][position], record.georef.get(modality)
        PATCH_WRITERS[modality](out, names[modality], image, georef)
        report.written[modality] = report.written.get(modality, 0) + 1
    report.patches += 1
    report.georeferenced += bool(record.georef)
    labels = np.asarray(record.labels, dtype=np.float32)
    return {
        "patch_id": record.patch_id,
        "labels": [label_names[i] for i in np.flatnonzero(labels > 0)],
        "split": info.get("split"),
        "country": info.get("country"),
        "season": info.get("season") or _season(record.patch_id),
        "s1_name": s1_name if "s1" in modalities else None,
        "has_s1": "s1" in modalities,
        "has_s2": "s2" in modalities,
    }


def _season(name: str) -> str | None:
    return season_of(name)
