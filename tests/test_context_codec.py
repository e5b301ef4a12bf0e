"""The autoregressive context-model codec ("cheng2020-attn-ctx") and the incremental decoder of
the native coder it decodes with (tiny widths; 120x120 patches)."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fedrs import coder
from fedrs.models import CompressedPatch, JointModel, ModelConfig, build_image_codec
from fedrs.models.codecs import Cheng2020AttnContextCodec
from fedrs.models.entropy import GaussianMixtureConditional
from fedrs.models.layers import EVAL_CHUNK, MaskedConv2d

NAME = "cheng2020-attn-ctx"
SIZE = 120


def smooth(batch: int, channels: int = 12, seed: int = 0, scale: float = 4.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, SIZE, SIZE, generator=g)
    return scale * torch.nn.functional.avg_pool2d(x, 5, 1, 2) * 2.0


def tiny_codec(seed: int = 0, channels: int = 12) -> Cheng2020AttnContextCodec:
    torch.manual_seed(seed)
    codec = build_image_codec(NAME, channels, width=8, latent=8)
    assert isinstance(codec, Cheng2020AttnContextCodec)
    return codec.eval()


@pytest.fixture(scope="module")
def codec() -> Cheng2020AttnContextCodec:
    return tiny_codec()


# --- the codec --------------------------------------------------------------------------------


def test_registry_builds_the_context_codec() -> None:
    codec = build_image_codec(NAME, 5, width=8, latent=4, gmm_components=2)
    assert isinstance(codec, Cheng2020AttnContextCodec)
    assert isinstance(codec.conditional, GaussianMixtureConditional)
    assert codec.conditional.components == 2
    keys = set(codec.state_dict())
    assert {"context_prediction.weight", "context_prediction.bias"} <= keys
    assert any(k.startswith("entropy_net.") for k in keys)
    assert not any(k.endswith(".mask") for k in keys)
    hyper = codec.hyper_features(torch.zeros(1, 8, 2, 2), invariant=False)
    assert hyper.shape == (1, 8, 8, 8)  # 2M hyper features per position of y
    with pytest.raises(ValueError, match="context"):
        codec.entropy_parameters(torch.zeros(1, 8, 2, 2), invariant=True)


def test_masked_convolution_sees_only_earlier_positions() -> None:
    a = MaskedConv2d(1, 1, kernel_size=5, padding=2, mask_type="A")
    b = MaskedConv2d(1, 1, kernel_size=5, padding=2, mask_type="B")
    expected_a = torch.tensor([1] * 12 + [0] * 13, dtype=torch.float32).view(5, 5)
    assert torch.equal(a.mask[0, 0], expected_a)
    assert torch.equal(b.mask[0, 0], expected_a + torch.eye(25)[12].view(5, 5))
    with pytest.raises(ValueError):
        MaskedConv2d(1, 1, kernel_size=5, mask_type="C")


def test_forward_shapes_and_gradients_in_training() -> None:
    codec = tiny_codec().train()
    x = smooth(2)
    out = codec(x)
    assert out["x_hat"].shape == x.shape
    assert out["y_hat"].shape == out["likelihoods"]["y"].shape == (2, 8, 8, 8)
    lik = out["likelihoods"]["y"]
    assert bool(((lik > 0) & (lik <= 1)).all())
    loss = -torch.log2(lik).sum() + (out["x_hat"] - x).pow(2).mean()
    loss.backward()
    grad = codec.context_prediction.weight.grad
    assert grad is not None and bool(grad.abs().sum() > 0)
    assert bool((grad * (1 - codec.context_prediction.mask) == 0).all())


def test_round_trip_reproduces_the_encoders_latents(codec: Cheng2020AttnContextCodec) -> None:
    x = smooth(3)
    out = codec(x)
    patches = codec.compress(x)
    y_hat = codec.decompress_latents(patches)
    assert torch.equal(y_hat, out["y_hat"])
    # the encoder's quantised latents: round(y - mean) + mean with the serial means
    y, z = codec.encode_latents(x, invariant=True)
    z_hat, _ = codec.entropy_bottleneck(z)
    hyper = codec.hyper_features(z_hat, invariant=True)
    serial, params = codec.autoregress(y, hyper)
    means = codec.conditional.means(params)
    assert torch.equal(y_hat, serial)
    assert torch.equal(serial, torch.round(y - means) + means)
    decoded = codec.decompress(patches)
    assert torch.equal(decoded["x_hat"], out["x_hat"])
    # the stream is about the length the likelihoods promise
    estimate = float(-torch.log2(out["likelihoods"]["y"].detach().double()).sum()) / 8
    actual = sum(len(p.y) for p in patches)
    assert abs(actual - estimate) <= 0.03 * estimate + 24 * len(patches)
    # containers survive serialisation and a pickled copy decodes them
    restored = [CompressedPatch.from_bytes(p.to_bytes()) for p in patches]
    copy = pickle.loads(pickle.dumps(codec))
    assert torch.equal(copy.decompress_latents(restored), y_hat)


def test_bytes_do_not_depend_on_the_batch(codec: Cheng2020AttnContextCodec) -> None:
    count = 7
    x = smooth(count, seed=3)
    reference = [p.to_bytes() for p in codec.compress(x)]
    for size in (3, 1):
        pieces = [codec.compress(x[s : s + size]) for s in range(0, count, size)]
        got = [p.to_bytes() for piece in pieces for p in piece]
        assert got == reference, f"bytes differ in batches of {size}"
    patches = [CompressedPatch.from_bytes(b) for b in reference]
    whole = codec.decompress_latents(patches)
    alone = torch.cat([codec.decompress_latents(patches[i : i + 1]) for i in (0, 4, 6)])
    assert torch.equal(alone, whole[[0, 4, 6]])
    # the forward pass at evaluation: the same latents and the same parameters' bits
    pair, every = codec(x[4:6]), codec(x)
    assert torch.equal(pair["y_hat"], whole[4:6])
    assert torch.equal(pair["likelihoods"]["y"], every["likelihoods"]["y"][4:6])


def test_more_patches_than_one_piece(codec: Cheng2020AttnContextCodec) -> None:
    x = smooth(EVAL_CHUNK + 1, seed=5, scale=2.0)
    patches = codec.compress(x)
    assert patches[-1] == codec.compress(x[-1:])[0]
    assert torch.equal(codec.decompress_latents(patches), codec(x)["y_hat"])


def test_context_is_causal(codec: Cheng2020AttnContextCodec) -> None:
    g = torch.Generator().manual_seed(7)
    y_hat = torch.randn(2, 8, 8, 8, generator=g).mul(3).round()
    hyper = torch.randn(2, 16, 8, 8, generator=g)
    with torch.no_grad():
        before = codec.context_parameters(y_hat, hyper)
        changed = y_hat.clone()
        row, col = 3, 4
        changed[:, :, row, col] += 5.0
        after = codec.context_parameters(changed, hyper)
    flat = row * 8 + col
    for key in before:
        b, a = before[key].flatten(-2), after[key].flatten(-2)
        assert torch.equal(b[..., : flat + 1], a[..., : flat + 1]), key
        assert not torch.equal(b[..., flat + 1 :], a[..., flat + 1 :]), key


def test_serial_parameters_match_the_parallel_ones(codec: Cheng2020AttnContextCodec) -> None:
    # the serial pass (each position from the positions decoded before it) computes what the
    # masked convolution computes over the finished latents, up to float rounding
    x = smooth(2, seed=2)
    with torch.no_grad():
        y, z = codec.encode_latents(x, invariant=True)
        z_hat, _ = codec.entropy_bottleneck(z)
        hyper = codec.hyper_features(z_hat, invariant=True)
        y_hat, serial = codec.autoregress(y, hyper)
        parallel = codec.context_parameters(y_hat, hyper)
    for key in serial:
        assert torch.allclose(serial[key], parallel[key], atol=1e-4, rtol=1e-4), key


def test_likelihoods_come_from_the_context(codec: Cheng2020AttnContextCodec) -> None:
    x = smooth(2, seed=4)
    with torch.no_grad():
        out = codec(x)
        bits = float(-torch.log2(out["likelihoods"]["y"]).sum())
        blind = pickle.loads(pickle.dumps(codec))
        blind.context_prediction.weight.zero_()
        blind_out = blind(x)
    assert np.isfinite(bits) and bits > 0
    assert not torch.equal(out["likelihoods"]["y"], blind_out["likelihoods"]["y"])
    # the hyperprior path alone does not decide the parameters: the same z, other rates
    assert torch.equal(out["likelihoods"]["z"], blind_out["likelihoods"]["z"])


def test_damaged_streams_raise_corrupt_stream_error(codec: Cheng2020AttnContextCodec) -> None:
    x = smooth(1, seed=6)
    patch = codec.compress(x)[0]
    stranger = tiny_codec(seed=1).compress(x)[0]
    flipped = bytearray(patch.y)
    flipped[len(flipped) // 2] ^= 0x21
    damaged = [
        replace(patch, y=patch.y[:-5]),
        replace(patch, y=patch.y + b"\0"),
        replace(patch, y=bytes(flipped)),
        replace(patch, y=b""),
        replace(patch, y=stranger.y),  # a valid stream coded with other tables
        replace(patch, z=patch.z[:-2]),
    ]
    for bad in damaged:
        with pytest.raises(coder.CorruptStreamError):
            codec.decompress_latents([bad])
    # another latent size: the symbol count does not match
    other = build_image_codec(NAME, 12, width=8, latent=4).eval()
    foreign = other.compress(smooth(1, seed=6))[0]
    with pytest.raises(coder.CorruptStreamError, match="symbols"):
        codec.decompress_latents([replace(patch, y=foreign.y)])


def test_element_tables_are_each_rows_own_function() -> None:
    # built for many elements at once or for a few of them, a row's table is the same
    model = GaussianMixtureConditional(3)
    g = torch.Generator().manual_seed(1)
    hyper = torch.randn(5, model.hyper_channels(6), 3, 3, generator=g) * 2.0
    params = model.parameters_from(hyper)
    params["scales"] = params["scales"] * torch.rand(params["scales"].shape, generator=g) * 8
    cdfs, lengths, offsets = model.element_tables(params)
    assert cdfs.shape[0] == lengths.shape[0] == offsets.shape[0] == 5 * 6 * 9
    assert len(set(lengths.tolist())) > 3  # rows of many widths
    sub = {k: v[3:4, :, 2:4, 1:2] for k, v in params.items()}
    sub_cdfs, sub_lengths, sub_offsets = model.element_tables(sub)
    rows = torch.arange(5 * 6 * 9).view(5, 6, 3, 3)[3:4, 2:4, 1:2].flatten()
    assert torch.equal(sub_lengths, lengths[rows])
    assert torch.equal(sub_offsets, offsets[rows])
    for k, row in enumerate(rows.tolist()):
        n = int(lengths[row])
        assert torch.equal(sub_cdfs[k, :n], cdfs[row, :n])
    # the tables are valid and code symbols the mixture puts anywhere, escapes included
    symbols = torch.randint(-40, 40, (rows.numel(),), generator=g, dtype=torch.int32)
    stream = model.compress_steps([symbols], [(sub_cdfs, sub_lengths, sub_offsets)])
    decoder = model.step_decoder(stream, rows.numel())
    decoded = model.decompress_steps([decoder], (sub_cdfs, sub_lengths, sub_offsets))
    decoder.finish()
    assert torch.equal(decoded[0], symbols)


def test_element_tables_of_degenerate_parameters_are_valid() -> None:
    # a network gone wrong (or a hostile z stream) may give NaN or huge parameters: the tables
    # stay valid, so the coder raises its typed errors rather than anything else
    model = GaussianMixtureConditional(3)
    hyper = torch.randn(
        2, model.hyper_channels(4), 2, 2, generator=torch.Generator().manual_seed(0)
    )
    hyper[0, 0, 0, 0] = float("nan")
    hyper[1, 5, 1, 1] = float("inf")
    hyper[0, 30, 1, 0] = 1e30
    cdfs, lengths, offsets = model.element_tables(model.parameters_from(hyper))
    tables = coder.CdfTables(cdfs.numpy(), lengths.numpy(), offsets.numpy())
    assert tables.num_tables == 2 * 4 * 4


def test_joint_model_hashes_bitstreams_as_its_forward_pass() -> None:
    torch.manual_seed(0)
    config = ModelConfig(
        codecs={"s1": NAME, "s2": NAME},
        width=8,
        latent=8,
        hash_bits=16,
        embedding_dim=16,
        whitening_group=8,
    )
    model = JointModel(config).eval()
    assert all(isinstance(model.codec(m), Cheng2020AttnContextCodec) for m in ("s1", "s2"))
    batch = {"s1": smooth(3, channels=2, seed=8), "s2": smooth(3, channels=12, seed=9)}
    out = model(batch)
    compressed = model.compress(batch)
    codes = model.hash_from_bitstreams(compressed)
    assert torch.equal(codes, out["codes"])
    decoded = model.decompress(compressed)
    for modality in batch:
        assert torch.equal(decoded["y_hat"][modality], out["y_hat"][modality])
    partial = {"s1": [compressed["s1"][0], None, None], "s2": list(compressed["s2"])}
    expected = model({**batch, "has_s1": torch.tensor([True, False, False])})["codes"]
    assert torch.equal(model.hash_from_bitstreams(partial), expected)


# --- the incremental decoder --------------------------------------------------------------------


def _random_tables(rng: np.random.Generator, count: int) -> tuple[np.ndarray, ...]:
    lengths = rng.integers(1, 30, count)
    pmfs = rng.random((count, 30)) ** 3
    tails = rng.random(count) * 0.01 + 1e-6
    cdfs, cdf_lengths = coder.cdf_tables(pmfs, lengths, tails)
    offsets = rng.integers(-20, 5, count).astype(np.int32)
    return cdfs, cdf_lengths, offsets


@pytest.mark.parametrize("count", [0, 1, 1000, 20000])
def test_stream_decoder_in_calls_equals_one_decode(count: int) -> None:
    rng = np.random.default_rng(count)
    cdfs, cdf_lengths, offsets = _random_tables(rng, 40)
    indexes = rng.integers(0, 40, count).astype(np.int32)
    symbols = (offsets[indexes] + rng.integers(-3, 35, count)).astype(np.int32)
    stream = coder.encode_with_indexes(symbols, indexes, cdfs, cdf_lengths, offsets)
    whole = coder.decode_with_indexes(stream, indexes, cdfs, cdf_lengths, offsets)
    tables = coder.CdfTables(cdfs, cdf_lengths, offsets)
    decoder = coder.StreamDecoder(stream)
    assert (decoder.count, decoder.position) == (count, 0)
    parts, done = [], 0
    while done < count:
        n = int(rng.integers(1, 500))
        parts.append(decoder.decode(tables, indexes[done : done + n]))
        done = min(count, done + n)
        assert decoder.position == done
    decoder.finish()
    got = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    assert np.array_equal(got, whole) and np.array_equal(got, symbols)


def test_stream_decoder_takes_other_tables_per_call() -> None:
    # each call brings only the tables of its own symbols, as an autoregressive decoder does
    rng = np.random.default_rng(3)
    cdfs, cdf_lengths, offsets = _random_tables(rng, 24)
    symbols = (offsets + rng.integers(-2, 20, 24)).astype(np.int32)
    stream = coder.encode_with_indexes(
        symbols, np.arange(24, dtype=np.int32), cdfs, cdf_lengths, offsets
    )
    decoder = coder.StreamDecoder(stream)
    got = []
    for start in range(0, 24, 8):
        rows = slice(start, start + 8)
        step = coder.CdfTables(cdfs[rows], cdf_lengths[rows], offsets[rows])
        got.append(decoder.decode(step, np.arange(8, dtype=np.int32)))
    decoder.finish()
    assert np.array_equal(np.concatenate(got), symbols)


def test_stream_decoder_rejects_bad_streams_and_arguments() -> None:
    rng = np.random.default_rng(5)
    cdfs, cdf_lengths, offsets = _random_tables(rng, 8)
    indexes = rng.integers(0, 8, 300).astype(np.int32)
    symbols = (offsets[indexes] + rng.integers(0, 10, 300)).astype(np.int32)
    stream = coder.encode_with_indexes(symbols, indexes, cdfs, cdf_lengths, offsets)
    tables = coder.CdfTables(cdfs, cdf_lengths, offsets)
    for bad in (stream[:-1], stream + b"\0", b"", b"FR", stream[:10]):
        with pytest.raises(coder.CorruptStreamError):
            coder.StreamDecoder(bad)
    decoder = coder.StreamDecoder(stream)
    with pytest.raises(coder.CoderError) as info:  # a bad index leaves the decoder as it was
        decoder.decode(tables, np.array([0, 8], dtype=np.int32))
    assert not isinstance(info.value, coder.CorruptStreamError)
    with pytest.raises(coder.CorruptStreamError, match="holds"):
        decoder.decode(tables, np.zeros(301, dtype=np.int32))
    assert decoder.position == 0
    first = decoder.decode(tables, indexes[:100])
    with pytest.raises(coder.CorruptStreamError):
        decoder.finish()  # symbols left
    with pytest.raises(coder.CoderError):
        decoder.decode(cdfs, indexes)  # type: ignore[arg-type]
    rest = decoder.decode(tables, indexes[100:])
    decoder.finish()
    assert np.array_equal(np.concatenate([first, rest]), symbols)
    # wrong tables: the stream fails the checks, and the decoder refuses later calls
    other = coder.CdfTables(*_random_tables(np.random.default_rng(9), 8))
    wrong = coder.StreamDecoder(stream)
    with pytest.raises(coder.CorruptStreamError):
        wrong.decode(other, indexes)
    with pytest.raises(coder.CorruptStreamError, match="earlier"):
        wrong.decode(tables, indexes[:1])
    with pytest.raises(coder.CorruptStreamError, match="earlier"):
        wrong.finish()


def test_method_experiment_loads_with_the_context_codec() -> None:
    from fedrs.config import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "experiments" / "method.toml")
    assert set(config.model.codecs.values()) == {"cheng2020-attn-ctx"}
    assert config.train.no_bpp_epochs == 1 and config.federation.no_bpp_rounds == 1
    assert config.train.pcgrad and config.train.mgda and config.model.hash_bits == 64
