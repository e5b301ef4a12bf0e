"""Compress an archive into a ``.fedrs`` file, decompress it to GeoTIFFs, hash a query patch.

The Python face of ``fedrs compress``, ``fedrs decompress`` and ``fedrs search``::

    report = compress_archive("BigEarthNet-v2", "runs/centralized", "client-3.fedrs")
    decompress_archive("client-3.fedrs", "runs/centralized", "reconstructed/")
    query = hash_query_patch(["BigEarthNet-S2/<product>/<patch>"], "runs/centralized")
    archives = open_archives(["client-3.fedrs", "client-7.fedrs"])
    result = federated_search([ArchiveSearch(a) for a in archives], query.code[None, :], k=20)

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
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedrs.compression.trained import TrainedModel, as_trained_model, model_for_archive
from fedrs.container import (
    ArchiveWriter,
    CompressedArchive,
    ContainerExistsError,
    CorruptRecordError,
    GeoReference,
    Record,
    RecordNotFoundError,
)
from fedrs.errors import InputError
from fedrs.io import atomic_write_text, check_name, inside, name_problem
from fedrs.retrieval.patch_files import (
    PATCH_WRITERS,
    QueryPatch,
    geotiff_source,
    read_patch_folders,
    v2_patch_folders,
)

if TYPE_CHECKING:
    import torch

    from fedrs.data.archive import PatchArchive
    from fedrs.models import CompressedPatch, JointModel

__all__ = [
    "ARCHIVE_FORMAT",
    "DECOMPRESSED_MARKER",
    "INFO_GROUP",
    "CompressReport",
    "DecompressReport",
    "QueryCode",
    "compress_archive",
    "decode_records",
    "decompress_archive",
    "encode_patches",
    "hash_query_patch",
    "model_for_archives",
    "open_archives",
    "patch_code",
    "record_patches",
]

ARCHIVE_FORMAT = "fedrs-compressed-archive"
"""``meta["format"]`` of archives written by :func:`compress_archive`."""

ARCHIVE_META_VERSION = 1

INFO_GROUP = "info"
"""Stream group of a record that holds its descriptive fields (not a modality)."""

_INFO_STREAM = "json"

DECOMPRESSED_MARKER = ".fedrs-decompressed.json"
"""Marker file of a folder written by :func:`decompress_archive`."""

Model = TrainedModel | str | Path
Progress = Callable[[str, int], Callable[[int], None]]
"""``progress(description, total)`` returns an ``advance(n)`` callback (as in fedrs.pipeline)."""


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
    import torch

    from fedrs.data.transforms import normalize

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
    from fedrs.data.archive import PatchArchive, open_archive

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


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def _choose_modalities(trained: TrainedModel, modalities: Sequence[str] | None) -> tuple[str, ...]:
    from fedrs.data.archive import check_modalities

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
    import torch

    from fedrs.data.errors import CorruptPatchError

    started = time.perf_counter()
    if Path(out).exists() and not overwrite:  # before the (possibly long) opening of the archive
        raise ContainerExistsError(out, "already exists; pass overwrite=True to replace it")
    trained = as_trained_model(model)
    batch_size = _check_batch_size(batch_size)
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
    from fedrs.data.metadata import season_of

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
            streams[INFO_GROUP] = {_INFO_STREAM: _info_bytes(info)}
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


# ------------------------------------------------------------------------------------------------
# Records back to the model's objects


def record_patches(archive: CompressedArchive, record: Record) -> dict[str, CompressedPatch]:
    """The :class:`CompressedPatch` of each modality of a record.

    Raises:
        CorruptRecordError: a modality without its ``y``/``z`` streams or shapes, an image size
            other than the patch size, or latent shapes other than those of that size.
    """
    from fedrs.data.facts import PATCH_SIZE
    from fedrs.models import CompressedPatch

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
    raw = record.streams.get(INFO_GROUP, {}).get(_INFO_STREAM)
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
    from fedrs.data.transforms import denormalize

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
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / DECOMPRESSED_MARKER).is_file():
            raise InputError(
                f"{out}: folder is not empty and holds no decompressed archive; give a new or "
                "empty folder"
            )
        if not overwrite:
            raise InputError(f"{out}: holds a decompressed archive (use --overwrite to replace it)")
        from fedrs.data.archive import V2Archive

        for sub in (V2Archive.S2_DIR, V2Archive.S1_DIR):
            if (out / sub).is_dir():
                shutil.rmtree(out / sub)
        (out / "metadata.parquet").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


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
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("patch_id", pa.string()),
            ("labels", pa.list_(pa.string())),
            ("split", pa.string()),
            ("country", pa.string()),
            ("season", pa.string()),
            ("s1_name", pa.string()),
            ("has_s1", pa.bool_()),
            ("has_s2", pa.bool_()),
        ]
    )
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    pq.write_table(pa.table(columns, schema=schema), path)


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
    batch_size = _check_batch_size(batch_size)
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
    import torch

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
    from fedrs.data.metadata import season_of

    return season_of(name)


# ------------------------------------------------------------------------------------------------
# Queries


@dataclass(frozen=True)
class QueryCode:
    """The hash code of a query patch.

    Attributes:
        code: packed ``uint8`` ``(K/8,)`` (the form archives store).
        signs: ``int8`` ``(K,)`` in {-1, +1}.
        patch: what was read (names, folders, images, georeference).
        fingerprint: the model's fingerprint.
    """

    code: np.ndarray
    signs: np.ndarray
    patch: QueryPatch
    fingerprint: str


def hash_query_patch(
    folder: str | Path | Sequence[str | Path],
    model: Model | JointModel,
    *,
    resample: str = "bilinear",
) -> QueryCode:
    """Hash a patch given as band files, the way archives hash theirs (from its bitstreams).

    Args:
        folder: a patch folder of the v1 or v2 layout (S2 band files and/or S1 VV/VH files),
            or several (e.g. the S2 and the S1 folder of one patch).
        model: the model of the archives to search (run folder, ``model.pt``, ...).
        resample: upsampling of the 20 m / 60 m bands (an archive's ``meta["resample"]``).

    Raises:
        InputError: no usable band files, or only modalities the model does not encode.
        CorruptPatchError: a bad band file (names it).
    """
    import torch

    trained = as_trained_model(model)
    folders = [folder] if isinstance(folder, str | Path) else list(folder)
    patch = read_patch_folders(folders, resample=resample)
    usable = {m: x for m, x in patch.images.items() if m in trained.modalities}
    if not usable:
        raise InputError(
            f"{folders[0]}: the patch holds {sorted(patch.images)}, the model encodes "
            f"{list(trained.modalities)}"
        )
    with torch.no_grad():
        _, codes = encode_patches(trained.model, [dict(usable)])  # type: ignore[arg-type]
    signs = codes[0]
    return QueryCode(
        code=np.packbits(signs > 0), signs=signs, patch=patch, fingerprint=trained.fingerprint
    )


def open_archives(paths: Sequence[str | Path]) -> list[CompressedArchive]:
    """Open ``.fedrs`` files for a federated search (same code length and model required).

    Raises:
        InputError: no path, or the archives' code lengths or models differ.
        ContainerError: a file that is not a readable archive (names it).
    """
    if not paths:
        raise InputError("no archive given")
    archives = [CompressedArchive.open(p) for p in paths]
    bits = {a.hash_bits for a in archives}
    prints = {a.model_fingerprint for a in archives}
    if len(bits) > 1 or len(prints) > 1:
        detail = ", ".join(f"{a.path}: {a.hash_bits} bits, {a.model_fingerprint}" for a in archives)
        for a in archives:
            a.close()
        raise InputError(f"archives of different models cannot be searched together ({detail})")
    return archives


def patch_code(archives: Sequence[CompressedArchive], patch_id: str) -> tuple[int, np.ndarray]:
    """``(archive index, packed code)`` of the first archive holding ``patch_id`` (its stored
    code, from the index: no record is read).

    Raises:
        RecordNotFoundError: no archive holds it.
    """
    for a, archive in enumerate(archives):
        try:
            position = archive.position(patch_id)
        except RecordNotFoundError:
            continue
        return a, np.array(archive.codes[position])
    names = ", ".join(str(a.path) for a in archives)
    raise RecordNotFoundError(
        archives[0].path if archives else Path("."),
        f"no record with patch id {patch_id!r} in {names}",
    )


def model_for_archives(
    archives: Sequence[CompressedArchive], model: Model | JointModel
) -> TrainedModel:
    """The model of ``archives`` (all written by the same one), checked by fingerprint."""
    if not archives:
        raise InputError("no archive given")
    return model_for_archive(archives[0], model)
