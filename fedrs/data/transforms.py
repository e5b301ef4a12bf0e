"""Normalisation of patches with the archive-wide band statistics of BigEarthNet, and the
upsampling of native-resolution S2 batches (a fedrs cache's) on the training device."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fedrs.data.facts import PATCH_SIZE, S1_MEAN, S1_STD, S2_BANDS, S2_MEAN, S2_STD
from fedrs.data.geotiff import S2_GROUP_INDEX, check_resample
from fedrs.devices import to_device
from fedrs.errors import InputError

BAND_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "s1": (S1_MEAN, S1_STD),
    "s2": (S2_MEAN, S2_STD),
}


def _stats(modality: str, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = BAND_STATS[modality]
    shape = (len(mean), 1, 1)
    return (
        torch.tensor(mean, dtype=like.dtype, device=like.device).view(shape),
        torch.tensor(std, dtype=like.dtype, device=like.device).view(shape),
    )


def normalize(x: torch.Tensor, modality: str) -> torch.Tensor:
    """(x - mean) / std per band; ``x`` is (C, H, W) or (B, C, H, W) physical values."""
    mean, std = _stats(modality, x)
    return (x - mean) / std


def denormalize(x: torch.Tensor, modality: str) -> torch.Tensor:
    """Inverse of :func:`normalize`: back to physical values."""
    mean, std = _stats(modality, x)
    return x * std + mean


def _on_device(band: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``band`` on ``device``: the bytes of a host batch are copied as they are (uint16 as its
    16 bits, an int16 view, which every device copies) and uint16 is widened to float32 there.
    On the CPU uint16 stays as it is (a copy into the float32 output converts it)."""
    if band.dtype != torch.uint16:
        return to_device(band, device)
    if device.type == "cpu":
        return band.to(device)
    bits = to_device(band.view(torch.int16), device)
    return bits.to(torch.int32).bitwise_and_(0xFFFF).float()


def _upsample_axis(x: torch.Tensor, factor: int, dim: int) -> torch.Tensor:
    """Half-pixel-centred bilinear upsampling of dimension ``dim`` by an integer factor.

    The arithmetic of :func:`fedrs.data.geotiff._upsample_axis` (and of ``F.interpolate(...,
    mode="bilinear", align_corners=False)``), step for step: each output phase ``o % factor``
    is a fixed blend of two shifted copies of the edge-padded input (two products rounded to
    float32, then their sum), so the values are the GeoTIFF readers' exactly, on any device.
    The products are written in place: a batch allocates its output and one scratch tensor.
    """
    dim %= x.dim()
    n = x.shape[dim]
    padded = torch.cat([x.narrow(dim, 0, 1), x, x.narrow(dim, n - 1, 1)], dim=dim)
    left, centre, right = (padded.narrow(dim, k, n) for k in range(3))
    out = x.new_empty((*x.shape[: dim + 1], factor, *x.shape[dim + 1 :]))
    scratch = torch.empty_like(x)
    for phase in range(factor):
        d = (phase + 0.5) / factor - 0.5
        first, second, a, b = (centre, right, 1.0 - d, d) if d >= 0 else (left, centre, -d, 1.0 + d)
        blend = out.select(dim + 1, phase)
        torch.mul(first, a, out=blend)
        torch.mul(second, b, out=scratch)
        blend.add_(scratch)
    return out.flatten(dim, dim + 1)


def _repeat_axis(x: torch.Tensor, factor: int, dim: int) -> torch.Tensor:
    """Every element of dimension ``dim`` repeated ``factor`` times (nearest upsampling)."""
    dim %= x.dim()
    out = x.new_empty((*x.shape[: dim + 1], factor, *x.shape[dim + 1 :]))
    for phase in range(factor):
        out.select(dim + 1, phase).copy_(x)
    return out.flatten(dim, dim + 1)


def upsample_s2(
    groups: Mapping[int, torch.Tensor],
    resample: str,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Assemble native-resolution S2 band groups into float32 (..., 12, 120, 120) on ``device``.

    ``groups`` maps the resolution (10, 20, 60 m) to its bands, (..., C, n, n) in
    :data:`~fedrs.data.geotiff.S2_GROUPS` order (uint16 digital numbers, or floats), as a cache
    batch holds them (``CachedArchive.get_batch(rows, native=True)``).  The bands are moved to
    ``device`` (default: where they are) first, so the upsampling runs there on the whole batch.
    ``nearest`` repeats every pixel exactly; ``bilinear`` is half-pixel-centred bilinear
    interpolation (``align_corners=False``).  Both give the values of the GeoTIFF readers'
    items (:func:`fedrs.data.geotiff.upsample_s2`) exactly.
    """
    check_resample(resample)
    target = groups[10].device if device is None else torch.device(device)
    lead = tuple(groups[10].shape[:-3])
    out = torch.empty(
        (*lead, len(S2_BANDS), PATCH_SIZE, PATCH_SIZE), dtype=torch.float32, device=target
    )
    for res, index in S2_GROUP_INDEX.items():
        band = _on_device(groups[res], target)
        side = band.shape[-1]
        factor = PATCH_SIZE // max(1, side)
        if side * factor != PATCH_SIZE or tuple(band.shape) != (*lead, len(index), side, side):
            raise InputError(f"S2 {res} m bands of shape {tuple(band.shape)}: not (..., C, n, n)")
        rows = 1
        if factor > 1 and resample == "bilinear":
            band = _upsample_axis(_upsample_axis(band.float(), factor, -1), factor, -2)
        elif factor > 1:  # the rows are repeated by the copy below
            band, rows = _repeat_axis(band, factor, -1), factor
        for k, position in enumerate(index):
            slot = out[..., position, :, :].unflatten(-2, (PATCH_SIZE // rows, rows))
            slot.copy_(band[..., k, :, None, :])
    return out


class Normalize:
    """Transform of an archive item or batch dict: returns a copy with ``s1``/``s2`` normalised."""

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        out = dict(item)
        for modality in BAND_STATS:
            if out.get(modality) is not None:
                out[modality] = normalize(out[modality], modality)
        return out


def collate_patches(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack archive items into a batch; a modality missing from some items is zero-filled.

    Returns ``patch_id`` (list), ``labels`` (B, 19), ``s1``/``s2`` (B, C, 120, 120) or None when no
    item has it, and ``has_s1``/``has_s2`` (B,) bool masks.
    """
    batch: dict[str, Any] = {
        "patch_id": [it["patch_id"] for it in items],
        "labels": torch.stack([torch.as_tensor(it["labels"]) for it in items]),
    }
    for modality in BAND_STATS:
        present = [it[modality] is not None for it in items]
        batch[f"has_{modality}"] = torch.tensor(present, dtype=torch.bool)
        if not any(present):
            batch[modality] = None
            continue
        like = next(it[modality] for it in items if it[modality] is not None)
        batch[modality] = torch.stack(
            [
                torch.as_tensor(it[modality])
                if it[modality] is not None
                else torch.zeros_like(like)
                for it in items
            ]
        )
    return batch
