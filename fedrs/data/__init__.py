"""BigEarthNet readers (v1.0, v2.0), the synthetic archive, the memory-mapped cache and facts."""

from fedrs.data.archive import MODALITIES, PatchArchive, V1Archive, V2Archive, open_archive
from fedrs.data.cache import CachedArchive, prepare_cache
from fedrs.data.errors import ArchiveNotFoundError, CorruptPatchError
from fedrs.data.facts import LABELS_19, LABELS_43, S1_BANDS, S2_BANDS
from fedrs.data.metadata import labels_matrix, load_metadata, normalize_metadata
from fedrs.data.transforms import Normalize, collate_patches, denormalize, normalize

__all__ = [
    "LABELS_19",
    "LABELS_43",
    "MODALITIES",
    "S1_BANDS",
    "S2_BANDS",
    "ArchiveNotFoundError",
    "CachedArchive",
    "CorruptPatchError",
    "Normalize",
    "PatchArchive",
    "V1Archive",
    "V2Archive",
    "collate_patches",
    "denormalize",
    "labels_matrix",
    "load_metadata",
    "normalize",
    "normalize_metadata",
    "open_archive",
    "prepare_cache",
]
