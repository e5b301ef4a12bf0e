"""Rate-distortion, MS-SSIM, hashing, classification and MIM losses."""

from __future__ import annotations

import math

import pydantic
import pytest
import torch

from fedrs.errors import InputError
from fedrs.losses import (
    HASH_TERMS,
    LossConfig,
    bit_balance_loss,
    compute_losses,
    jaccard_similarity,
    mim_loss,
    ms_ssim,
    quantization_loss,
    rate_bpp,
    soft_pairwise_loss,
    weighted_hash_terms,
)
from fedrs.models import JointModel, ModelConfig


def tiny_model(seed: int = 0) -> JointModel:
    torch.manual_seed(seed)
    return JointModel(
        ModelConfig(width=8, latent=8, hash_bits=16, embedding_dim=16, whitening_group=8)
    )


def smooth_images(batch: int, channels: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, 120, 120, generator=g)
    return torch.nn.functional.avg_pool2d(x, 7, 1, 3) * 2.5


def test_ms_ssim_of_identical_images_is_one_and_falls_with_noise() -> None:
    x = smooth_images(2, 12)
    assert torch.allclose(ms_ssim(x, x), torch.ones(2), atol=1e-5)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    scores = [float(ms_ssim(x + s * noise, x).mean()) for s in (0.05, 0.2, 0.8)]
    assert 1.0 > scores[0] > scores[1] > scores[2]


def test_ms_ssim_checks_scales_against_the_image_size() -> None:
    x = smooth_images(1, 2)
    with pytest.raises(InputError, match="too small"):
        ms_ssim(x, x, levels=5, window=11)
    assert torch.allclose(ms_ssim(x, x, levels=5, window=7), torch.ones(1), atol=1e-5)
    with pytest.raises(InputError):
        ms_ssim(x, x[:, :1])


def test_ms_ssim_distortion_has_finite_gradients() -> None:
    x = smooth_images(2, 12)
    x_hat = (x + 0.1).requires_grad_()
    config = LossConfig(distortion="ms-ssim")
    model_out = {
        "x_hat": {"s2": x_hat},
        "likelihoods": {"s2": {"y": torch.full((2, 4), 0.5), "z": torch.full((2, 1), 0.5)}},
    }
    terms = compute_losses(model_out, {"s2": x}, None, config, stage=1)
    terms["rd"].backward()
    assert x_hat.grad is not None and bool(torch.isfinite(x_hat.grad).all())
    assert 0.0 < float(terms["distortion_s2"].detach()) < 1.0


def test_loss_config_rejects_unknown_distortion() -> None:
    with pytest.raises(pydantic.ValidationError, match="distortion"):
        LossConfig(distortion="l3")
    with pytest.raises(pydantic.ValidationError):
        LossConfig(lmbda=-1.0)


def test_rate_counts_bits_per_pixel() -> None:
    likelihoods = {"y": torch.full((2, 3, 4, 4), 0.5), "z": torch.full((2, 3, 1, 1), 0.25)}
    bits = 2 * 3 * 16 * 1 + 2 * 3 * 1 * 2
    assert math.isclose(float(rate_bpp(likelihoods, 2 * 10 * 10)), bits / 200, rel_tol=1e-6)
    with pytest.raises(InputError):
        rate_bpp(likelihoods, 0)


def test_jaccard_similarity_by_hand() -> None:
    labels = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]]).float()
    sim = jaccard_similarity(labels)
    assert math.isclose(float(sim[0, 1]), 1 / 3, rel_tol=1e-6)
    assert float(sim[0, 2]) == 0.0
    assert float(sim[0, 0]) == 1.0
    assert float(sim[3, 3]) == 1.0 and float(sim[3, 0]) == 0.0
    assert torch.equal(sim, sim.t())


def test_soft_pairwise_loss_prefers_codes_that_follow_the_labels() -> None:
    labels = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1]]).float()
    a = torch.ones(16)
    good = torch.stack([a, a, -a, -a])
    bad = torch.stack([a, -a, a, -a])
    assert float(soft_pairwise_loss(good, labels)) < float(soft_pairwise_loss(bad, labels))
    assert float(soft_pairwise_loss(good[:1], labels[:1])) == 0.0


def test_balance_and_quantization_losses() -> None:
    balanced = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    assert float(bit_balance_loss(balanced)) == 0.0
    assert float(bit_balance_loss(torch.ones(3, 2))) == 1.0
    assert float(quantization_loss(balanced)) == 0.0
    assert math.isclose(float(quantization_loss(torch.full((2, 2), 0.5))), 0.25)


def test_mim_loss_rewards_matching_pairs_and_respects_the_mask() -> None:
    g = torch.Generator().manual_seed(0)
    first = torch.randn(6, 8, generator=g)
    aligned = float(mim_loss(first, first + 0.01 * torch.randn(6, 8, generator=g)))
    shuffled = float(mim_loss(first, first.roll(1, 0)))
    assert aligned < shuffled
    one = torch.tensor([True, False, False, False, False, False])
    second = first.clone().requires_grad_()
    masked = mim_loss(first, second, mask=one)
    assert float(masked.detach()) == 0.0
    masked.backward()
    assert second.grad is not None


def _labels(batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 19, generator=g) > 0.7).float()


def test_compute_losses_terms_per_stage() -> None:
    model = tiny_model().train()
    batch = {"s1": smooth_images(4, 2), "s2": smooth_images(4, 12, seed=1)}
    out = model(batch)
    config = LossConfig()
    first = compute_losses(out, batch, None, config, stage=1)
    assert set(first) == {
        "bpp_s1",
        "bpp_s2",
        "distortion_s1",
        "distortion_s2",
        "bpp",
        "distortion",
        "rd",
        "total",
    }
    assert torch.equal(first["total"], first["rd"])
    expected_rd = first["bpp"] + config.lmbda * first["distortion"]
    assert torch.allclose(first["rd"], expected_rd)
    second = compute_losses(out, batch, _labels(4), config, stage=2)
    assert set(HASH_TERMS) <= set(second)
    assert float(second["mim"].detach()) > 0.0
    weighted = weighted_hash_terms(second, config)
    assert torch.allclose(second["hash"], torch.stack(list(weighted.values())).sum())
    assert torch.allclose(second["total"], config.rd_weight * second["rd"] + second["hash"])
    with pytest.raises(InputError, match="stage"):
        compute_losses(out, batch, None, config, stage=3)
    with pytest.raises(InputError, match="labels"):
        compute_losses(out, batch, None, config, stage=2)


def test_compute_losses_masks_items_without_the_modality() -> None:
    model = tiny_model().eval()
    batch = {"s1": smooth_images(3, 2), "s2": smooth_images(3, 12, seed=1)}
    mask = torch.tensor([True, True, False])
    out = model({**batch, "has_s1": mask})
    terms = compute_losses(out, batch, None, LossConfig(), stage=1)
    sub = model({m: x[:2] for m, x in batch.items()})
    sub_terms = compute_losses(sub, {m: x[:2] for m, x in batch.items()}, None, LossConfig(), 1)
    assert torch.allclose(terms["bpp_s1"], sub_terms["bpp_s1"], rtol=1e-5)
    assert torch.allclose(terms["distortion_s1"], sub_terms["distortion_s1"], rtol=1e-5)


def test_a_few_steps_lower_the_rate_distortion_loss() -> None:
    g = torch.Generator().manual_seed(4)

    def coarse(channels: int) -> torch.Tensor:  # smooth images a tiny codec can learn quickly
        x = torch.randn(2, channels, 8, 8, generator=g)
        return 2.0 * torch.nn.functional.interpolate(x, size=(120, 120), mode="bilinear")

    model = tiny_model(3).train()
    batch = {"s1": coarse(2), "s2": coarse(12)}
    config = LossConfig(lmbda=10.0)
    optimizer = torch.optim.Adam(model.codec_parameters(), lr=3e-3)
    torch.manual_seed(0)
    losses = []
    for _ in range(20):
        terms = compute_losses(model(batch), batch, None, config, stage=1)
        optimizer.zero_grad()
        terms["total"].backward()
        optimizer.step()
        losses.append(float(terms["rd"].detach()))
    assert sum(losses[-3:]) / 3 < 0.92 * losses[0]
