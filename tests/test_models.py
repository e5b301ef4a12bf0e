"""Entropy models, codecs, hash head and the joint model (tiny widths; 120x120 patches)."""

from __future__ import annotations

import math
import pickle
from dataclasses import replace

import pydantic
import pytest
import torch
from _data import SMOKE

from fedrs.errors import InputError
from fedrs.models import (
    CompressedPatch,
    EntropyBottleneck,
    GaussianConditional,
    GaussianMixtureConditional,
    JointModel,
    ModelConfig,
    UnknownImageCodecError,
    available_codecs,
    build_image_codec,
)
from fedrs.models.entropy import quantized_cdf_table

IMAGE_CODECS = ("hyperprior", "cheng2020-attn")
SIZE = 120


def tiny_config(
    codec: str = "hyperprior", modalities: tuple[str, ...] = ("s1", "s2")
) -> ModelConfig:
    return ModelConfig(
        codecs={m: codec for m in modalities},
        width=8,
        latent=8,
        hash_bits=16,
        embedding_dim=16,
        whitening_group=8,
    )


def make_batch(batch: int = 2, seed: int = 0, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for modality, channels in (("s1", 2), ("s2", 12)):
        x = torch.randn(batch, channels, SIZE, SIZE, generator=g)
        out[modality] = scale * torch.nn.functional.avg_pool2d(x, 5, 1, 2) * 2.0
    return out


def model_for(codec: str, seed: int = 0) -> JointModel:
    torch.manual_seed(seed)
    return JointModel(tiny_config(codec))


# --- shapes -------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", IMAGE_CODECS)
@pytest.mark.parametrize("present", [("s1", "s2"), ("s1",), ("s2",)])
@pytest.mark.parametrize("training", [True, False])
def test_forward_shapes(codec: str, present: tuple[str, ...], training: bool) -> None:
    model = model_for(codec)
    model.train(training)
    full = make_batch(3)
    batch = {m: (full[m] if m in present else None) for m in ("s1", "s2")}
    out = model(batch)
    assert set(out["x_hat"]) == set(present)
    for modality in present:
        assert out["x_hat"][modality].shape == full[modality].shape
        assert out["y_hat"][modality].shape == (3, 8, 8, 8)
        assert out["likelihoods"][modality]["y"].shape == (3, 8, 8, 8)
        assert out["likelihoods"][modality]["z"].shape == (3, 8, 2, 2)
        assert out["embeddings"][modality].shape == (3, 16)
        lik = out["likelihoods"][modality]["y"]
        assert bool(((lik > 0) & (lik <= 1)).all())
    assert out["codes"].shape == (3, 16)
    assert out["logits"].shape == (3, 19)
    if training:
        assert bool((out["codes"].abs() < 1).all())
    else:
        assert set(out["codes"].unique().tolist()) <= {-1.0, 1.0}


def test_eval_latents_are_quantised_with_means() -> None:
    model = model_for("hyperprior").eval()
    batch = make_batch(2)
    codec = model.codec("s2")
    out = model({"s2": batch["s2"]})
    y, z = codec.encode_latents(batch["s2"], invariant=True)
    z_hat, _ = codec.entropy_bottleneck(z)
    means = codec.conditional.means(codec.entropy_parameters(z_hat, invariant=True))
    residual = out["y_hat"]["s2"] - means
    assert torch.allclose(residual, residual.round(), atol=1e-4)
    assert torch.equal(out["y_hat"]["s2"], torch.round(y - means) + means)


def test_missing_modality_mask_fuses_available_embeddings() -> None:
    model = model_for("hyperprior").eval()
    batch = make_batch(2)
    masked = model({**batch, "has_s1": torch.tensor([True, False])})
    alone = model({"s2": batch["s2"][1:]})
    assert torch.allclose(masked["fused"][1:], alone["fused"], atol=1e-6)
    both = model(batch)
    assert not torch.allclose(both["fused"][1:], alone["fused"], atol=1e-4)


def test_codes_do_not_depend_on_the_batch_at_eval() -> None:
    model = model_for("hyperprior").eval()
    batch = make_batch(3)
    whole = model(batch)
    single = model({m: t[2:] for m, t in batch.items()})
    assert torch.equal(whole["codes"][2:], single["codes"])
    assert torch.equal(whole["y_hat"]["s2"][2:], single["y_hat"]["s2"])


def test_codes_and_bitstreams_do_not_depend_on_the_batch_across_pieces() -> None:
    # 19 items (more than one fixed-size piece) against each item alone: a plain batched
    # convolution rounds differently for batch 1 and batch 16+ on common CPUs
    model = model_for("hyperprior").eval()
    batch = make_batch(19, seed=3, scale=4.0)
    whole = model(batch)
    alone = [model({m: t[i : i + 1] for m, t in batch.items()}) for i in range(19)]
    assert torch.equal(whole["codes"], torch.cat([a["codes"] for a in alone]))
    assert torch.equal(whole["y_hat"]["s2"], torch.cat([a["y_hat"]["s2"] for a in alone]))
    z_hat = torch.randn(19, 8, 2, 2, generator=torch.Generator().manual_seed(1)).round()
    codec = model.codec("s2")
    params = codec.entropy_parameters(z_hat, invariant=True)["scales"]
    singles = [codec.entropy_parameters(z_hat[i : i + 1], invariant=True) for i in range(19)]
    assert torch.equal(params, torch.cat([p["scales"] for p in singles]))
    streams = model.compress(batch)
    codes = model.hash_from_bitstreams({m: v[7:] for m, v in streams.items()})
    assert torch.equal(codes, whole["codes"][7:])


BATCHINGS = (200, 37, 16, 1)
"""Batch sizes the same 200 patches are compressed in (the last batch of each may be short)."""


def test_bitstreams_and_codes_of_200_patches_do_not_depend_on_the_batching() -> None:
    # every evaluation-time computation that feeds the bytes and the codes (g_a, h_a, h_s, the
    # entropy parameters, the hash head) runs on fixed-size pieces, so a patch gets the same
    # bytes and code alone and in any batch
    from fedrs.config import load_config
    from fedrs.train import build_model

    model = build_model(load_config(SMOKE)).eval()
    assert set(model.modalities) == {"s1", "s2"}
    count = 200
    batch = make_batch(count, seed=11, scale=4.0)
    reference: dict[str, list[bytes]] = {}
    reference_latents: dict[str, torch.Tensor] = {}
    reference_codes = torch.empty(0)
    # the unquantised latents compress computes (g_a's outputs, padding included): their bits,
    # not only their symbols, must agree (an untrained model's rarely sit near a rounding
    # boundary, so its bytes alone would hardly ever show a difference)
    outputs: dict[str, list[torch.Tensor]] = {m: [] for m in batch}
    hooks = [
        model.codec(m).g_a.register_forward_hook(
            lambda module, args, y, m=m: outputs[m].append(y.detach().clone())
        )
        for m in batch
    ]
    for size in BATCHINGS:
        streams: dict[str, list[bytes]] = {m: [] for m in batch}
        latents: dict[str, list[torch.Tensor]] = {m: [] for m in batch}
        codes = []
        for start in range(0, count, size):
            piece = {m: t[start : start + size] for m, t in batch.items()}
            compressed = model.compress(piece)
            for modality, patches in compressed.items():
                streams[modality] += [p.to_bytes() for p in patches]
                latents[modality].append(torch.cat(outputs[modality])[: len(patches)])
                outputs[modality].clear()
            codes.append(model.hash_from_bitstreams(compressed))
        if not reference:
            reference, reference_codes = streams, torch.cat(codes)
            reference_latents = {m: torch.cat(v) for m, v in latents.items()}
            continue
        for modality in batch:
            differ = [i for i in range(count) if streams[modality][i] != reference[modality][i]]
            assert not differ, f"{modality} bytes of patches {differ} differ in batches of {size}"
            y = torch.cat(latents[modality])
            assert torch.equal(y, reference_latents[modality]), f"{modality} y, batches of {size}"
        assert torch.equal(torch.cat(codes), reference_codes), f"codes differ in batches of {size}"
    for hook in hooks:
        hook.remove()
    # the forward pass at evaluation codes the same latents and gives the same codes
    whole = model(batch)
    assert torch.equal(whole["codes"], reference_codes)


def test_in_fixed_chunks_pads_splits_and_trims() -> None:
    from fedrs.models.layers import in_fixed_chunks

    calls: list[int] = []

    def fn(piece: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        calls.append(int(piece["a"].shape[0]))
        return {"out": {"sum": piece["a"] + piece["b"].sum(1)}}

    a = torch.arange(10.0)
    b = torch.ones(10, 3)
    result = in_fixed_chunks(fn, {"a": a, "b": b}, chunk=4)
    assert calls == [4, 4, 4]
    assert torch.equal(result["out"]["sum"], a + 3.0)
    with pytest.raises(ValueError, match="different batch sizes"):
        in_fixed_chunks(fn, {"a": a, "b": b[:3]}, chunk=4)


def test_bad_inputs_raise_typed_errors() -> None:
    model = JointModel(tiny_config(modalities=("s2",)))
    with pytest.raises(InputError, match="s1"):
        model({"s1": torch.zeros(1, 2, SIZE, SIZE)})
    with pytest.raises(InputError, match="12"):
        model({"s2": torch.zeros(1, 3, SIZE, SIZE)})
    with pytest.raises(InputError):
        model({})
    with pytest.raises(UnknownImageCodecError, match="nope"):
        build_image_codec("nope", 3)
    with pytest.raises(pydantic.ValidationError, match="codec"):
        ModelConfig(codecs={"s2": "nope"})
    with pytest.raises(pydantic.ValidationError, match="modality"):
        ModelConfig(codecs={"s3": "hyperprior"})
    with pytest.raises(pydantic.ValidationError, match="multiple of 8"):
        ModelConfig(hash_bits=12)
    with pytest.raises(pydantic.ValidationError, match="codec_init"):
        ModelConfig(codec_init="xavier")
    with pytest.raises(InputError, match="xavier"):
        build_image_codec("hyperprior", 3, init="xavier")


def _live_symbols(codec: torch.nn.Module, x: torch.Tensor) -> float:
    """Share of a new codec's latent symbols that round to non-zero (0: a dead start)."""
    codec.eval()
    with torch.no_grad():
        y, _ = codec.encode_latents(x, invariant=True)
    return float((torch.round(y) != 0).float().mean())


def test_unit_init_starts_the_hyperprior_with_live_latents() -> None:
    # default width/latent: the 4-convolution analysis of the experiments
    x = torch.randn(4, 12, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    live = {}
    for init in ("torch", "unit"):
        torch.manual_seed(0)
        live[init] = _live_symbols(build_image_codec("hyperprior", 12, init=init), x)
    assert live["torch"] < 0.05
    assert live["unit"] > 0.3
    torch.manual_seed(0)
    default = build_image_codec("hyperprior", 12)
    assert _live_symbols(default, x) == pytest.approx(live["unit"])


def test_codec_init_follows_the_model_config() -> None:
    for init, other in (("unit", "torch"), ("torch", "unit")):
        torch.manual_seed(0)
        model = JointModel(ModelConfig(codecs={"s2": "hyperprior"}, codec_init=init))
        torch.manual_seed(0)
        codec = build_image_codec("hyperprior", 12, init=init)
        torch.manual_seed(0)
        codec_other = build_image_codec("hyperprior", 12, init=other)
        weight = model.codec("s2").g_a[0].weight
        assert torch.equal(weight, codec.g_a[0].weight)
        assert not torch.equal(weight, codec_other.g_a[0].weight)


def test_cheng_codecs_keep_torch_init_unless_told() -> None:
    torch.manual_seed(0)
    default = build_image_codec("cheng2020-attn", 5, width=8, latent=4)
    torch.manual_seed(0)
    torch_init = build_image_codec("cheng2020-attn", 5, width=8, latent=4, init="torch")
    for a, b in zip(default.parameters(), torch_init.parameters(), strict=True):
        assert torch.equal(a, b)


def test_registry_lists_both_architectures() -> None:
    assert set(IMAGE_CODECS) <= set(available_codecs())
    codec = build_image_codec("cheng2020-attn", 5, width=8, latent=4)
    assert isinstance(codec.conditional, GaussianMixtureConditional)
    assert codec.conditional.components == 3
    assert isinstance(
        build_image_codec("hyperprior", 5, width=8, latent=4).conditional, GaussianConditional
    )


def test_odd_sizes_are_padded_and_cropped() -> None:
    codec = build_image_codec("hyperprior", 2, width=8, latent=8).eval()
    x = torch.randn(1, 2, 70, 33)
    out = codec(x)
    assert out["x_hat"].shape == x.shape
    assert out["y_hat"].shape[-2:] == (8, 4)


# --- state, keys, pickling ----------------------------------------------------------------


def test_state_dict_keys_and_groups() -> None:
    model = model_for("cheng2020-attn")
    keys = list(model.state_dict())
    assert all(k.startswith(("codecs.s1.", "codecs.s2.", "hash_head.")) for k in keys)
    assert not any("quantized_cdf" in k or "_medians" in k or "pedestal" in k for k in keys)
    s1_keys = model.keys_for_modalities(["s1"])
    assert any(k.startswith("codecs.s1.") for k in s1_keys)
    assert not any(k.startswith("codecs.s2.") or "encoders.s2." in k for k in s1_keys)
    assert any(k.startswith("hash_head.hash_mlp.") for k in s1_keys)
    groups = model.parameter_groups()
    assert sorted(k for g in groups.values() for k in g) == sorted(keys)
    local = model.local_state_keys()
    assert local == ["hash_head.whiten.running_mean", "hash_head.whiten.running_whitening"]
    without = model.keys_for_modalities(["s1", "s2"], include_local=False)
    assert set(without) == set(keys) - set(local)
    with pytest.raises(InputError):
        JointModel(tiny_config(modalities=("s2",))).keys_for_modalities(["s1"])


def test_encoder_parameters_are_the_analysis_transforms() -> None:
    model = model_for("hyperprior")
    ids = {id(p) for p in model.encoder_parameters()}
    named = {n for n, p in model.named_parameters() if id(p) in ids}
    assert named and all(".g_a." in n for n in named)
    assert len(named) == len([n for n, _ in model.named_parameters() if ".g_a." in n])


@pytest.mark.parametrize("codec", IMAGE_CODECS)
def test_pickle_round_trip_gives_equal_results(codec: str) -> None:
    model = model_for(codec)
    batch = make_batch(2)
    model.train()
    model(batch)  # moves the whitening statistics
    model.eval()
    before = model(batch)
    clone = pickle.loads(pickle.dumps(model))
    after = clone(batch)
    assert torch.equal(before["codes"], after["codes"])
    for modality in batch:
        assert torch.equal(before["x_hat"][modality], after["x_hat"][modality])


def test_state_dict_load_reproduces_outputs() -> None:
    source = model_for("hyperprior", seed=1)
    source.train()
    source(make_batch(2))
    source.eval()
    target = model_for("hyperprior", seed=2).eval()
    target.load_state_dict(source.state_dict())
    batch = make_batch(2, seed=3)
    assert torch.equal(source(batch)["y_hat"]["s2"], target(batch)["y_hat"]["s2"])
    assert torch.equal(source(batch)["codes"], target(batch)["codes"])


# --- entropy models -----------------------------------------------------------------------


def test_quantized_cdf_table_gives_every_symbol_a_frequency() -> None:
    pmf = torch.tensor([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1e-12, 0.3, 0.7, 1e-9]])
    cdf, lengths = quantized_cdf_table(pmf, torch.tensor([2, 4, 4]), torch.tensor([0.0, 0.0, 1e-3]))
    assert lengths.tolist() == [4, 6, 6]
    for row, n in zip(cdf, lengths.tolist(), strict=True):
        valid = row[:n]
        assert int(valid[0]) == 0 and int(valid[-1]) == 1 << 16
        assert bool((valid.diff() >= 1).all())
    freq = cdf[0, :4].diff()
    assert abs(int(freq[0]) - int(freq[1])) <= 1


def test_entropy_bottleneck_update_finds_median_and_tails() -> None:
    torch.manual_seed(0)
    eb = EntropyBottleneck(4)
    with torch.no_grad():
        eb.biases[-1].add_(torch.tensor([0.0, 3.0, -2.0, 1.0]).view(4, 1, 1))
    assert eb.update()
    assert not eb.update()
    medians = eb._medians.double().view(4, 1, 1)
    assert torch.allclose(
        eb._logits_cumulative(medians).flatten(), torch.zeros(4, dtype=torch.float64), atol=1e-6
    )
    for t in range(4):
        n = int(eb._cdf_length[t])
        row = eb._quantized_cdf[t, :n]
        assert int(row[0]) == 0 and int(row[-1]) == 1 << 16 and bool((row.diff() > 0).all())
        assert n > 10
    with torch.no_grad():
        eb.biases[0].add_(0.5)
    assert eb.update()


@pytest.mark.parametrize(
    "model",
    [
        GaussianConditional(),
        GaussianMixtureConditional(3),
    ],
)
def test_conditional_likelihoods_sum_to_one(
    model: GaussianConditional | GaussianMixtureConditional,
) -> None:
    values = torch.arange(-60, 61, dtype=torch.float32).view(1, 1, -1, 1)
    g = torch.Generator().manual_seed(0)
    channels = model.hyper_channels(1)
    hyper = torch.randn(1, channels, 1, 1, generator=g).expand(1, channels, values.shape[2], 1)
    params = model.parameters_from(hyper.abs() + 0.5)
    model.eval()
    total = model.likelihood(values + model.means(params).round(), params).sum()
    assert math.isclose(float(total), 1.0, abs_tol=1e-4)


def test_entropy_bottleneck_likelihoods_sum_to_one() -> None:
    eb = EntropyBottleneck(2).eval()
    eb.update()
    values = torch.arange(-400, 401, dtype=torch.float32).view(1, 1, -1, 1).expand(1, 2, -1, 1)
    lik = eb.likelihood(values + eb._medians.round().view(1, 2, 1, 1))
    assert torch.allclose(lik.sum(2).flatten(), torch.ones(2), atol=1e-4)


def test_compressed_patch_container_round_trip() -> None:
    patch = CompressedPatch(y=b"\x01\x02\x03", z=b"\x09", z_shape=(2, 2), image_size=(120, 120))
    data = patch.to_bytes()
    assert CompressedPatch.from_bytes(data) == patch
    assert patch.num_bytes == 4
    with pytest.raises(InputError):
        CompressedPatch.from_bytes(data[:-1])
    with pytest.raises(InputError):
        CompressedPatch.from_bytes(b"XXXX" + data[4:])


# --- bitstreams (through fedrs.coder) -----------------------------------------------------


@pytest.mark.parametrize("codec", IMAGE_CODECS)
def test_compress_decompress_reproduces_latents_and_codes(codec: str) -> None:
    model = model_for(codec).eval()
    batch = make_batch(3, scale=4.0)
    out = model(batch)
    compressed = model.compress(batch)
    assert set(compressed) == {"s1", "s2"}
    assert all(len(v) == 3 for v in compressed.values())
    decoded = model.decompress(compressed)
    for modality in batch:
        assert torch.equal(decoded["y_hat"][modality], out["y_hat"][modality])
        assert torch.equal(decoded["x_hat"][modality], out["x_hat"][modality])
    codes = model.hash_from_bitstreams(compressed)
    assert torch.equal(codes, out["codes"])
    assert set(codes.unique().tolist()) <= {-1.0, 1.0}
    # the container survives serialisation
    restored = {
        m: [CompressedPatch.from_bytes(p.to_bytes()) for p in v] for m, v in compressed.items()
    }
    assert torch.equal(model.hash_from_bitstreams(restored), out["codes"])


def test_hash_from_bitstreams_with_a_missing_modality_per_item() -> None:
    model = model_for("hyperprior").eval()
    batch = make_batch(2, scale=4.0)
    compressed = model.compress(batch)
    partial: dict[str, list[CompressedPatch | None]] = {
        "s1": [compressed["s1"][0], None],
        "s2": list(compressed["s2"]),
    }
    codes = model.hash_from_bitstreams(partial)
    expected = model({**batch, "has_s1": torch.tensor([True, False])})["codes"]
    assert torch.equal(codes, expected)
    with pytest.raises(InputError):
        model.hash_from_bitstreams({"s1": [None, None]})


def test_compress_is_independent_of_model_mode_and_decodes_in_a_fresh_copy() -> None:
    model = model_for("cheng2020-attn")
    model.train()
    batch = make_batch(2, scale=4.0)
    compressed = model.compress(batch)
    assert model.training
    clone = pickle.loads(pickle.dumps(model.state_dict()))
    fresh = model_for("cheng2020-attn", seed=5)
    fresh.load_state_dict(clone)
    decoded = fresh.decompress(compressed)
    expected = model.eval()(batch)
    for modality in batch:
        assert torch.equal(decoded["y_hat"][modality], expected["y_hat"][modality])


STREAM_OVERHEAD = 24
"""Bytes a stream may add to its payload (header, final coder state)."""


def _assert_close_to_estimate(streams: list[bytes], likelihoods: torch.Tensor) -> None:
    estimate = float(-torch.log2(likelihoods.detach().double()).sum()) / 8
    actual = sum(len(s) for s in streams)
    assert estimate > 500
    assert abs(actual - estimate) <= 0.03 * estimate + STREAM_OVERHEAD * len(streams)


def test_entropy_bottleneck_bitstream_length_matches_likelihoods() -> None:
    torch.manual_seed(0)
    eb = EntropyBottleneck(16).eval()
    eb.update()
    g = torch.Generator().manual_seed(1)
    z = eb._medians.view(1, 16, 1, 1) + 4.0 * torch.randn(4, 16, 8, 8, generator=g)
    _, likelihoods = eb(z)
    streams = eb.compress(z)
    _assert_close_to_estimate(streams, likelihoods)
    decoded = eb.decompress(streams, (8, 8))
    assert torch.equal(decoded, eb(z)[0])


@pytest.mark.parametrize("mixture", [False, True])
def test_conditional_bitstream_length_matches_likelihoods(mixture: bool) -> None:
    model = GaussianMixtureConditional(3) if mixture else GaussianConditional()
    model.eval()
    g = torch.Generator().manual_seed(2)
    hyper = torch.randn(4, model.hyper_channels(16), 8, 8, generator=g) * 3.0
    params = model.parameters_from(hyper)
    if not mixture:
        params["scales"] = params["scales"].abs() + 0.2
    if mixture:  # draw a component per element, then a value from it
        shape = params["means"].shape  # (B, K, M, h, w)
        weights = params["weights"].movedim(1, -1).reshape(-1, shape[1])
        pick = torch.multinomial(weights, 1, generator=g).view(shape[0], *shape[2:]).unsqueeze(1)
        mu = params["means"].gather(1, pick)[:, 0]
        sigma = params["scales"].gather(1, pick)[:, 0]
    else:
        mu, sigma = params["means"], params["scales"]
    y = mu + sigma * torch.randn(mu.shape, generator=g)
    y_hat, likelihoods = model(y, params)
    streams = model.compress(y, params)
    _assert_close_to_estimate(streams, likelihoods)
    assert torch.equal(model.decompress(streams, params), y_hat)


def test_out_of_table_symbols_round_trip() -> None:
    model = GaussianConditional().eval()
    params = {"scales": torch.full((1, 2, 4, 4), 0.2), "means": torch.zeros(1, 2, 4, 4)}
    y = torch.zeros(1, 2, 4, 4)
    y[0, 0, 0, 0] = 1000.0
    y[0, 1, 2, 3] = -77.0
    streams = model.compress(y, params)
    assert torch.equal(model.decompress(streams, params), y)


def test_corrupted_stream_raises_a_value_error() -> None:
    model = model_for("hyperprior").eval()
    batch = {"s2": make_batch(1, scale=4.0)["s2"]}
    (patch,) = model.compress(batch)["s2"]
    broken = bytearray(patch.y)
    broken[len(broken) // 2] ^= 0x5A
    bad = CompressedPatch(y=bytes(broken), z=patch.z, z_shape=patch.z_shape, image_size=(120, 120))
    with pytest.raises(ValueError):
        model.decompress({"s2": [bad]})
    with pytest.raises(ValueError):
        model.hash_from_bitstreams({"s2": [replace(patch, z=patch.z[:-3])]})
