"""Normalisation of patches with the archive-wide band statistics of BigEarthNet."""

from __future__ import annotations

from typing import Any

import torch

from fedrs.data.facts import S1_MEAN, S1_STD, S2_MEAN, S2_STD

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
