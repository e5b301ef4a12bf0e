"""Losses of the joint model: rate-distortion, deep hashing, classification and cross-modal MIM.

* Rate: bits of ``y`` and ``z`` from the likelihoods, per pixel of the original image (left
  out of the optimised total, still measured, in a distortion-only warm-up: ``rate=False``).
* Distortion: MSE or 1 - MS-SSIM (registry :data:`DISTORTIONS`) on the normalised bands.
* Hashing: soft pairwise similarity (target = Jaccard overlap of the multi-label sets), bit
  balance, quantisation; multi-label classification (BCE over the 19 classes).
* MIM: symmetric InfoNCE between the S1 and S2 embeddings of the same patch (items with both).

:func:`compute_losses` returns every named term plus ``"rd"``, ``"hash"`` and ``"total"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor

from fedrs.errors import InputError
from fedrs.registry import Registry

__all__ = [
    "DISTORTIONS",
    "HASH_TERMS",
    "MS_SSIM_WEIGHTS",
    "LossConfig",
    "bit_balance_loss",
    "classification_loss",
    "compute_losses",
    "distortion",
    "hash_losses",
    "jaccard_similarity",
    "mim_loss",
    "ms_ssim",
    "ms_ssim_distortion",
    "mse_distortion",
    "quantization_loss",
    "rate_bpp",
    "register_distortion",
    "soft_pairwise_loss",
    "weighted_hash_terms",
]

MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Scale weights of Wang et al. 2003 (the first ``levels`` are used, renormalised)."""

HASH_TERMS: tuple[str, ...] = ("pairwise", "balance", "quantization", "classification", "mim")
"""Names of the hashing sub-losses (the tasks PCGrad balances)."""


class LossConfig(BaseModel):
    """Weights and options of the losses.

    Attributes:
        lmbda: rate-distortion trade-off: ``rd = bpp + lmbda * distortion`` per modality.
        distortion: ``"mse"`` or ``"ms-ssim"`` (1 - MS-SSIM).
        ms_ssim_levels: scales of MS-SSIM; with the 11-pixel window a 120x120 patch allows 4
            (120 -> 60 -> 30 -> 15), not the original 5.
        ms_ssim_window: Gaussian window size.
        ms_ssim_data_range: dynamic range of the normalised bands used in the SSIM constants.
        pairwise_weight, balance_weight, quantization_weight, classification_weight, mim_weight:
            weights of the hashing sub-losses (``hash`` is their weighted sum).
        pairwise_alpha: logit scale of the pairwise loss: ``theta_ij = alpha * <u_i, u_j> / K``.
        mim_temperature: InfoNCE temperature.
        rd_weight: weight of the rate-distortion loss in stage 2.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    lmbda: float = Field(default=100.0, ge=0.0)
    distortion: str = "mse"
    ms_ssim_levels: int = Field(default=4, ge=1, le=5)
    ms_ssim_window: int = Field(default=11, ge=1)
    ms_ssim_data_range: float = Field(default=6.0, gt=0.0)
    pairwise_weight: float = Field(default=1.0, ge=0.0)
    pairwise_alpha: float = Field(default=10.0, gt=0.0)
    balance_weight: float = Field(default=0.1, ge=0.0)
    quantization_weight: float = Field(default=0.1, ge=0.0)
    classification_weight: float = Field(default=1.0, ge=0.0)
    mim_weight: float = Field(default=0.1, ge=0.0)
    mim_temperature: float = Field(default=0.1, gt=0.0)
    rd_weight: float = Field(default=1.0, ge=0.0)

    @field_validator("distortion")
    @classmethod
    def _check_distortion(cls, value: str) -> str:
        DISTORTIONS.lookup(value)
        return value

    @field_validator("ms_ssim_window")
    @classmethod
    def _check_window(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"ms_ssim_window must be odd, got {value}")
        return value


# --- rate ---------------------------------------------------------------------------------


def rate_bpp(likelihoods: Mapping[str, Tensor], num_pixels: int) -> Tensor:
    """Bits per pixel: ``sum(-log2 likelihood)`` over all latents divided by ``num_pixels``
    (batch size times image height times width)."""
    if num_pixels <= 0:
        raise InputError(f"num_pixels must be positive, got {num_pixels}")
    bits = sum((-torch.log2(lik)).sum() for lik in likelihoods.values())
    return torch.as_tensor(bits) / num_pixels


def _per_item_bits(likelihoods: Mapping[str, Tensor]) -> Tensor:
    return sum((-torch.log2(lik)).flatten(1).sum(1) for lik in likelihoods.values())  # type: ignore[return-value]


# --- distortion ---------------------------------------------------------------------------


def _gaussian_window(size: int, sigma: float, channels: int, like: Tensor) -> Tensor:
    coords = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g.view(1, 1, 1, size).repeat(channels, 1, 1, 1)


def _blur(x: Tensor, window: Tensor) -> Tensor:
    channels = x.shape[1]
    x = F.conv2d(x, window, groups=channels)
    return F.conv2d(x, window.transpose(2, 3), groups=channels)


def _ssim_terms(x: Tensor, y: Tensor, window: Tensor, data_range: float) -> tuple[Tensor, Tensor]:
    """Per-item, per-channel mean SSIM and contrast-structure term (B, C)."""
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mu_x = _blur(x, window)
    mu_y = _blur(y, window)
    sigma_xx = _blur(x * x, window) - mu_x**2
    sigma_yy = _blur(y * y, window) - mu_y**2
    sigma_xy = _blur(x * y, window) - mu_x * mu_y
    cs_map = (2 * sigma_xy + c2) / (sigma_xx + sigma_yy + c2)
    ssim_map = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs_map
    return ssim_map.mean((-2, -1)), cs_map.mean((-2, -1))


def ms_ssim(
    x: Tensor,
    y: Tensor,
    *,
    data_range: float = 6.0,
    levels: int = 4,
    window: int = 11,
    sigma: float = 1.5,
) -> Tensor:
    """Multi-scale SSIM per item (B,), averaged over channels (any number of bands).

    The window is applied without padding; the image at the coarsest scale must be at least
    ``window`` pixels (for 120x120 and an 11-pixel window: at most 4 levels).  Negative
    contrast-structure values are clamped to a small positive number before the powers.

    Raises:
        InputError: shapes differ or the image is too small for ``levels`` and ``window``.
    """
    if x.shape != y.shape or x.dim() != 4:
        raise InputError(
            f"ms_ssim needs two (B, C, H, W) tensors of one shape, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    if not 1 <= levels <= len(MS_SSIM_WEIGHTS):
        raise InputError(f"ms_ssim levels must be 1..{len(MS_SSIM_WEIGHTS)}, got {levels}")
    smallest = min(x.shape[-2:]) // 2 ** (levels - 1)
    if smallest < window:
        raise InputError(
            f"image {tuple(x.shape[-2:])} too small for {levels} MS-SSIM levels with a "
            f"{window}-pixel window (coarsest side {smallest})"
        )
    weights = torch.tensor(MS_SSIM_WEIGHTS[:levels], dtype=x.dtype, device=x.device)
    weights = weights / weights.sum()
    win = _gaussian_window(window, sigma, x.shape[1], x)
    factors = []
    for level in range(levels):
        ssim_val, cs = _ssim_terms(x, y, win, data_range)
        last = level == levels - 1
        factors.append((ssim_val if last else cs).clamp_min(1e-6) ** weights[level])
        if not last:
            x = F.avg_pool2d(x, 2, ceil_mode=True)
            y = F.avg_pool2d(y, 2, ceil_mode=True)
    return torch.stack(factors).prod(0).mean(1)


DistortionFn = Callable[[Tensor, Tensor, LossConfig], Tensor]
"""A distortion: (x_hat, x, config) -> per-item distortion (B,)."""

DISTORTIONS: Registry[DistortionFn] = Registry("distortion")
"""Registered distortions by name."""

register_distortion = DISTORTIONS.register
"""``@register_distortion("name")``: register a per-item distortion function (taken: ValueError)."""


@register_distortion("mse")
def mse_distortion(x_hat: Tensor, x: Tensor, config: LossConfig) -> Tensor:
    """Mean squared error per item."""
    return (x_hat - x).pow(2).flatten(1).mean(1)


@register_distortion("ms-ssim")
def ms_ssim_distortion(x_hat: Tensor, x: Tensor, config: LossConfig) -> Tensor:
    """1 - MS-SSIM per item."""
    return 1.0 - ms_ssim(
        x_hat,
        x,
        data_range=config.ms_ssim_data_range,
        levels=config.ms_ssim_levels,
        window=config.ms_ssim_window,
    )


def distortion(x_hat: Tensor, x: Tensor, config: LossConfig) -> Tensor:
    """Per-item distortion (B,) named by ``config.distortion``."""
    return DISTORTIONS.lookup(config.distortion)(x_hat, x, config)


# --- hashing ------------------------------------------------------------------------------


def jaccard_similarity(labels: Tensor) -> Tensor:
    """Pairwise Jaccard overlap (B, B) of multi-hot label sets (two empty sets count as 1)."""
    lab = (labels > 0.5).to(torch.float32)
    inter = lab @ lab.t()
    count = lab.sum(1)
    union = count[:, None] + count[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(inter))


def soft_pairwise_loss(codes: Tensor, labels: Tensor, alpha: float = 10.0) -> Tensor:
    """Soft pairwise similarity loss over the distinct pairs of a batch.

    With ``theta_ij = alpha * <u_i, u_j> / K`` and target ``s_ij`` the Jaccard overlap of the
    label sets, the loss is the binary cross-entropy ``softplus(theta) - s * theta`` (DPSH with
    soft targets), averaged over pairs i != j.
    """
    batch, bits = codes.shape
    if batch < 2:
        return codes.sum() * 0.0
    theta = alpha * (codes @ codes.t()) / bits
    target = jaccard_similarity(labels).to(codes.dtype)
    off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=codes.device)
    return F.binary_cross_entropy_with_logits(theta[off_diagonal], target[off_diagonal])


def bit_balance_loss(codes: Tensor) -> Tensor:
    """Mean over bits of the squared batch mean: each bit should be +1 for half the items."""
    return codes.mean(0).pow(2).mean()


def quantization_loss(codes: Tensor) -> Tensor:
    """Mean ``(|u| - 1)^2``: pushes relaxed codes to +-1."""
    return (codes.abs() - 1.0).pow(2).mean()


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Multi-label binary cross-entropy."""
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def mim_loss(
    first: Tensor, second: Tensor, temperature: float = 0.1, mask: Tensor | None = None
) -> Tensor:
    """Symmetric InfoNCE between two embeddings of the same items (positives on the diagonal).

    Args:
        first, second: (B, E) embeddings (e.g. S1 and S2 of the same patches).
        temperature: softmax temperature on cosine similarities.
        mask: optional (B,) bool: items that really have both embeddings.

    Returns:
        The loss; zero (with a gradient path) when fewer than two items qualify.
    """
    if mask is not None:
        keep = mask.to(torch.bool)
        first, second = first[keep], second[keep]
    if first.shape[0] < 2:
        return (first.sum() + second.sum()) * 0.0
    a = F.normalize(first, dim=1)
    b = F.normalize(second, dim=1)
    logits = a @ b.t() / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


# --- everything ---------------------------------------------------------------------------


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return values.mean()
    weight = mask.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def compute_losses(
    model_out: Mapping[str, Any],
    batch: Mapping[str, Any],
    labels: Tensor | None,
    config: LossConfig,
    stage: int,
    *,
    rate: bool = True,
) -> dict[str, Tensor]:
    """All loss terms of one batch.

    Args:
        model_out: output of :class:`fedrs.models.JointModel` (training mode).
        batch: the model's input batch (``"s1"`` / ``"s2"`` targets, optional ``"has_*"``).
        labels: (B, classes) multi-hot, required in stage 2.
        config: weights and options.
        stage: 1 (codec only: ``total = rd``) or 2 (``total = rd_weight * rd + hash``).
        rate: Whether the rate enters ``rd``; without it ``rd = lmbda * distortion`` (the
            distortion-only warm-up of stage 1; ``bpp`` is still measured and returned).

    Returns:
        ``bpp_<mod>``, ``distortion_<mod>`` per modality, ``bpp``, ``distortion``, ``rd``; in
        stage 2 also the unweighted hashing terms of :data:`HASH_TERMS` and their weighted sum
        ``hash``; and ``total``.  Per-modality terms average over the items that have the
        modality (``model_out["masks"]``).
    """
    if stage not in (1, 2):
        raise InputError(f"stage must be 1 or 2, got {stage}")
    masks: Mapping[str, Tensor] = model_out.get("masks") or {}
    terms: dict[str, Tensor] = {}
    rd_total: Tensor | None = None
    bpp_total: Tensor | None = None
    dist_total: Tensor | None = None
    for modality, x_hat in model_out["x_hat"].items():
        x = batch.get(modality)
        if not isinstance(x, Tensor):
            raise InputError(f"batch lacks the {modality!r} target of the reconstruction")
        mask = masks.get(modality)
        pixels = x.shape[-2] * x.shape[-1]
        bits = _per_item_bits(model_out["likelihoods"][modality])
        bpp = _masked_mean(bits / pixels, mask)
        dist = _masked_mean(distortion(x_hat, x, config), mask)
        terms[f"bpp_{modality}"] = bpp
        terms[f"distortion_{modality}"] = dist
        bpp_total = bpp if bpp_total is None else bpp_total + bpp
        dist_total = dist if dist_total is None else dist_total + dist
        rd = bpp + config.lmbda * dist if rate else config.lmbda * dist
        rd_total = rd if rd_total is None else rd_total + rd
    if rd_total is None or bpp_total is None or dist_total is None:
        raise InputError("model output holds no reconstruction")
    terms["bpp"] = bpp_total
    terms["distortion"] = dist_total
    terms["rd"] = rd_total
    if stage == 1:
        terms["total"] = rd_total
        return terms
    if labels is None:
        raise InputError("stage 2 needs labels")
    codes: Tensor = model_out["codes"]
    terms |= hash_losses(model_out, labels, config, masks)
    weighted = list(weighted_hash_terms(terms, config).values())
    terms["hash"] = torch.stack(weighted).sum() if weighted else codes.sum() * 0.0
    terms["total"] = config.rd_weight * rd_total + terms["hash"]
    return terms


def hash_losses(
    head_out: Mapping[str, Any],
    labels: Tensor,
    config: LossConfig,
    masks: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """The unweighted hashing terms of :data:`HASH_TERMS` of a hash head's output (``codes``,
    ``logits``, ``embeddings``) for (B, classes) multi-hot ``labels``; MIM over the items
    that hold both modalities (``masks``), zero when none or one does."""
    codes: Tensor = head_out["codes"]
    terms = {
        "pairwise": soft_pairwise_loss(codes, labels, config.pairwise_alpha),
        "balance": bit_balance_loss(codes),
        "quantization": quantization_loss(codes),
        "classification": classification_loss(head_out["logits"], labels),
    }
    embeddings: Mapping[str, Tensor] = head_out.get("embeddings") or {}
    masks = masks or {}
    if "s1" in embeddings and "s2" in embeddings:
        both = None
        if masks.get("s1") is not None and masks.get("s2") is not None:
            both = masks["s1"] & masks["s2"]
        terms["mim"] = mim_loss(embeddings["s1"], embeddings["s2"], config.mim_temperature, both)
    else:
        terms["mim"] = codes.sum() * 0.0
    return terms


def weighted_hash_terms(terms: Mapping[str, Tensor], config: LossConfig) -> dict[str, Tensor]:
    """The hashing sub-losses of :func:`compute_losses` times their weights (PCGrad's tasks);
    terms with weight zero are left out."""
    out: dict[str, Tensor] = {}
    for name in HASH_TERMS:
        weight = float(getattr(config, f"{name}_weight"))
        if name in terms and weight > 0.0 and math.isfinite(weight):
            out[name] = weight * terms[name]
    return out
