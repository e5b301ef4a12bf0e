"""Hash a query patch the way archives hash theirs, and open archives to search.

:func:`hash_query_patch` hashes a patch given as band files; :func:`open_archives` opens the
``.fedrs`` files of one model, :func:`patch_code` takes a stored code as the query instead, and
:func:`model_for_archives` loads their model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedrs.compression._common import Model
from fedrs.compression.compress import encode_patches
from fedrs.compression.patch_files import QueryPatch, read_patch_folders
from fedrs.compression.trained import TrainedModel, as_trained_model, model_for_archive
from fedrs.container import CompressedArchive, RecordNotFoundError
from fedrs.errors import InputError
from fedrs.models import JointModel

__all__ = [
    "QueryCode",
    "hash_query_patch",
    "model_for_archives",
    "open_archives",
    "patch_code",
]


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
