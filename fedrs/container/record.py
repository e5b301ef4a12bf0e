"""One record of a ``.fedrs`` archive: :class:`Record`, and the :class:`GeoReference` of a
modality (how they are stored: :mod:`fedrs.container.format`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedrs.errors import InputError

__all__ = ["GeoReference", "Record"]


@dataclass(frozen=True)
class GeoReference:
    """Where a patch lies: CRS, affine transform and raster size of one modality.

    Args:
        crs: WKT or ``"EPSG:n"`` string (a ``rasterio`` ``CRS`` is converted with
            ``to_string()``).
        transform: the six coefficients ``(a, b, c, d, e, f)`` of ``affine.Affine`` (what
            ``rasterio`` returns as ``dataset.transform``; an ``Affine`` is accepted).
        width: raster width in pixels.
        height: raster height in pixels.
    """

    crs: str
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int

    @classmethod
    def coerce(cls, value: Any, where: str) -> GeoReference:
        """Build from a :class:`GeoReference` or a mapping with the same keys; validate.

        Raises:
            InputError: a missing key or a bad value, naming ``where``.
        """
        if isinstance(value, GeoReference):
            crs, transform, width, height = value.crs, value.transform, value.width, value.height
        elif isinstance(value, Mapping):
            missing = {"crs", "transform", "width", "height"} - set(value)
            if missing:
                raise InputError(f"{where}: georeference lacks {sorted(missing)}")
            crs, transform = value["crs"], value["transform"]
            width, height = value["width"], value["height"]
        else:
            raise InputError(
                f"{where}: georeference must be a GeoReference or a mapping, got "
                f"{type(value).__name__}"
            )
        if hasattr(crs, "to_string") and not isinstance(crs, str):
            crs = crs.to_string()
        if not isinstance(crs, str) or not crs.strip():
            raise InputError(f"{where}: crs must be a non-empty WKT or 'EPSG:n' string")
        try:
            coeffs = [float(x) for x in transform]
        except (TypeError, ValueError) as exc:
            raise InputError(f"{where}: transform must be 6 numbers ({exc})") from exc
        if len(coeffs) == 9 and coeffs[6:] == [0.0, 0.0, 1.0]:  # a full affine.Affine matrix
            coeffs = coeffs[:6]
        if len(coeffs) != 6 or not all(math.isfinite(x) for x in coeffs):
            raise InputError(f"{where}: transform must be 6 finite numbers (a, b, c, d, e, f)")
        for key, size in (("width", width), ("height", height)):
            if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
                raise InputError(f"{where}: {key} must be a positive integer, got {size!r}")
        return cls(crs, (*coeffs,), int(width), int(height))  # type: ignore[arg-type]

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored in a record."""
        return {
            "crs": self.crs,
            "transform": list(self.transform),
            "width": self.width,
            "height": self.height,
        }


@dataclass(eq=False, repr=False)
class Record:
    """One patch of a compressed archive.

    When written, fields accept several forms (normalised by :meth:`ArchiveWriter.add`); when
    read back (:meth:`CompressedArchive.record`) they have the canonical form given here.

    Attributes:
        patch_id: the patch name; unique within an archive, and usable as a file name (see
            :func:`fedrs.io.name_problem`).
        code: the hash code; read back as packed ``uint8`` ``(K/8,)``. Written as packed
            ``uint8`` ``(K/8,)`` or unpacked ``(K,)`` (``±1``, bool, scores with bit = value > 0).
        streams: ``{modality: {stream_name: bytes}}``, e.g. ``{"s2": {"y": b"...", "z":
            b"..."}}``; a modality the patch lacks is simply absent. Order is preserved.
        shapes: ``{modality: {name: [int, ...]}}``, small non-negative integers such as the
            latent shapes the decoder needs.
        labels: read back as ``float32`` multi-hot ``(L,)``. Written as a multi-hot vector of
            length ``L`` (bool or 0/1 numbers), a list of class names from the archive's
            ``label_names``, or ``None`` (no label).
        georef: ``{modality: GeoReference}`` (mappings with the same keys are accepted).
        position: the record's position in its archive (set by the reader).
    """

    patch_id: str
    code: Any
    streams: dict[str, dict[str, bytes]] = field(default_factory=dict)
    shapes: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    labels: Any = None
    georef: dict[str, GeoReference] = field(default_factory=dict)
    position: int | None = None

    def __repr__(self) -> str:
        sizes = {m: {n: len(b) for n, b in s.items()} for m, s in self.streams.items()}
        return f"Record(patch_id={self.patch_id!r}, streams={sizes}, position={self.position})"

    @property
    def num_bytes(self) -> int:
        """Total bytes of the bitstreams."""
        return sum(len(b) for s in self.streams.values() for b in s.values())
