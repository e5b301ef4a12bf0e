"""Tests of fedrs.comm (update codecs) and of coded updates in the strategies and the apps."""

from __future__ import annotations

import json
import math
import pickle
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _client import client_context
from _data import SMOKE
from flwr.app import Array, ArrayRecord, Message, RecordDict
from test_strategies import (
    HEAD,
    LOCAL,
    S1,
    S2,
    error_reply,
    global_model,
    instructions,
    numpy_of,
    reply,
)

from fedrs.comm import (
    GLOBAL_BASE_KEY,
    GLOBAL_FINGERPRINT_KEY,
    UPDATE_PAYLOAD_KEY,
    EntropyUpdateCodec,
    MissingGlobalModelError,
    PlainUpdateCodec,
    UpdateCodecError,
    build_update_codec,
    decode_update,
    fingerprint,
    update_codec_names,
)
from fedrs.comm.payload import unpack
from fedrs.errors import InputError
from fedrs.strategies import (
    AccountedFedAvg,
    build_strategy,
    message_bytes,
)

pytestmark = pytest.mark.usefixtures("task_identity")


def model_pair(seed: int = 0, scale: float = 1e-3) -> tuple[dict[str, Any], dict[str, Any]]:
    """A reference model and an update of it (heavy-tailed differences, several sizes)."""
    rng = np.random.default_rng(seed)
    shapes = {"conv.w": (32, 16, 3, 3), "conv.b": (32,), "fc.w": (64, 80), "gain": (7,)}
    reference: dict[str, Any] = {
        k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()
    }
    values = {
        k: (v + scale * rng.standard_t(4, size=v.shape)).astype(np.float32)
        for k, v in reference.items()
    }
    return values, reference


def steps_of(payload: dict[str, Any]) -> dict[str, float]:
    blob = payload[UPDATE_PAYLOAD_KEY].tobytes()
    return {key: step for key, _, _, step, _ in unpack(blob, name=UPDATE_PAYLOAD_KEY)}


def symbols_of(payload: dict[str, Any]) -> dict[str, Any]:
    blob = payload[UPDATE_PAYLOAD_KEY].tobytes()
    return {key: symbols for key, _, _, _, symbols in unpack(blob, name=UPDATE_PAYLOAD_KEY)}


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("step", [0.1, 0.5, 2.0])
def test_uniform_round_trip_within_half_a_step(step: float) -> None:
    values, reference = model_pair()
    codec = EntropyUpdateCodec(step=step, error_feedback=False)
    sent = codec.encode(values, reference)
    assert set(sent.payload) == {UPDATE_PAYLOAD_KEY}
    received = decode_update(sent.payload, reference)
    steps = steps_of(sent.payload)
    for key, value in values.items():
        diff = value.astype(np.float64) - reference[key]
        assert steps[key] == pytest.approx(step * math.sqrt(np.mean(diff**2)), rel=1e-12)
        assert received[key].dtype == value.dtype and received[key].shape == value.shape
        error = np.abs(received[key].astype(np.float64) - value)
        # half a step, plus the float32 rounding of both sides
        assert error.max() <= steps[key] / 2 + 4 * np.spacing(np.abs(value)).max(), key
        np.testing.assert_array_equal(received[key], sent.decoded[key])
    bits = 8 * len(sent.payload[UPDATE_PAYLOAD_KEY]) / sum(v.size for v in values.values())
    assert bits < 32 / 4 if step >= 0.5 else bits < 32


def test_quantised_values_are_reconstructed_exactly() -> None:
    values, reference = model_pair(seed=3)
    codec = EntropyUpdateCodec(step=0.25, error_feedback=False)
    sent = codec.encode(values, reference)
    steps, symbols = steps_of(sent.payload), symbols_of(sent.payload)
    received = decode_update(sent.payload, reference)
    for key, value in values.items():
        diff = value.astype(np.float64) - reference[key].astype(np.float64)
        expected = np.rint(diff / steps[key]).astype(np.int32)
        np.testing.assert_array_equal(symbols[key], expected)
        rebuilt = (reference[key].astype(np.float64) + steps[key] * expected).astype(np.float32)
        np.testing.assert_array_equal(received[key], rebuilt)


def test_extreme_values_escape_their_table_and_still_round_trip() -> None:
    values, reference = model_pair(seed=4)
    values["fc.w"] = values["fc.w"].copy()
    # far outside the fitted table
    values["fc.w"][0, :3] += np.array([5.0, -7.0, 40.0], dtype=np.float32)
    codec = EntropyUpdateCodec(step=0.1, error_feedback=False)
    sent = codec.encode(values, reference)
    symbols = symbols_of(sent.payload)["fc.w"]
    assert np.abs(symbols[0, :3]).min() > 50 and np.abs(symbols[1:]).max() < 5
    np.testing.assert_array_equal(
        decode_update(sent.payload, reference)["fc.w"], sent.decoded["fc.w"]
    )


def test_bit_budget_bounds_the_symbols() -> None:
    values, reference = model_pair(seed=5)
    codec = EntropyUpdateCodec(bits=4, error_feedback=False)
    sent = codec.encode(values, reference)
    for key, symbols in symbols_of(sent.payload).items():
        assert np.abs(symbols).max() == 7, key  # 2**4 - 1 levels, the largest one used
    received = decode_update(sent.payload, reference)
    steps = steps_of(sent.payload)
    for key, value in values.items():
        assert np.abs(received[key].astype(np.float64) - value).max() <= steps[key] / 2 + 1e-6


def test_stochastic_rounding_is_unbiased() -> None:
    reference = {"w": np.zeros(4000, dtype=np.float32)}
    values = {"w": np.full(4000, 0.3, dtype=np.float32)}
    values["w"][::2] = -0.3  # RMS 0.3: step = 0.3 with step=1, so levels sit at 0, +-0.3 ...
    values["w"][::4] = 0.1
    codec = EntropyUpdateCodec(step=1.0, stochastic=True, error_feedback=False)
    nearest = EntropyUpdateCodec(step=1.0, error_feedback=False)
    step = steps_of(codec.encode(values, reference).payload)["w"]
    # per element, the mean over many independent draws approaches the value
    draws = [
        decode_update(
            codec.encode(values, reference, rng=np.random.default_rng(i)).payload, reference
        )["w"]
        for i in range(400)
    ]
    error = np.mean(draws, axis=0) - values["w"]
    assert np.abs(error).max() < 0.15 * step
    assert abs(float(error.mean())) < 0.01 * step
    assert max(float(np.abs(d - values["w"]).max()) for d in draws) < step * (1 + 1e-6)
    biased = decode_update(nearest.encode(values, reference).payload, reference)["w"]
    assert np.abs(biased - values["w"]).max() > 0.3 * step  # nearest rounding is not unbiased


def test_topk_error_feedback_accumulates_the_residual() -> None:
    values, reference = model_pair(seed=6)
    codec = EntropyUpdateCodec(step=0.05, topk=0.1)
    first = codec.encode(values, reference)
    for key, value in values.items():
        sent = first.decoded[key].astype(np.float64) - reference[key]
        assert np.count_nonzero(sent) <= math.ceil(0.1 * value.size), key
        # the residual is what was not sent
        np.testing.assert_allclose(
            first.residual[key], value.astype(np.float64) - first.decoded[key], atol=1e-7
        )
    # Later rounds with no new change send what is left: the model converges to the values.
    held, residual = dict(first.decoded), first.residual
    for _ in range(40):
        later = codec.encode(held, held, residual=residual)
        held = decode_update(later.payload, held)
        residual = later.residual
    for key, value in values.items():
        np.testing.assert_allclose(held[key], value, atol=2e-5)
    without = EntropyUpdateCodec(step=0.05, topk=0.1, error_feedback=False).encode(
        values, reference
    )
    assert without.residual == {}


def test_integer_raw_and_unreferenced_keys_travel_unchanged() -> None:
    values, reference = model_pair(seed=7)
    values |= {
        "bn.num_batches_tracked": np.array(12, dtype=np.int64),
        "eb._quantized_cdf": np.arange(12, dtype=np.float32).reshape(3, 4),
        "new.w": np.ones(3, dtype=np.float32),
        "half.w": np.ones(5, dtype=np.float64),
    }
    reference |= {
        "bn.num_batches_tracked": np.array(5, dtype=np.int64),
        "eb._quantized_cdf": np.zeros((3, 4), dtype=np.float32),
        "half.w": np.ones(5, dtype=np.float32),  # another dtype: sent plain
    }
    sent = EntropyUpdateCodec(step=1.0).encode(values, reference)
    plain = {"bn.num_batches_tracked", "eb._quantized_cdf", "new.w", "half.w"}
    assert set(sent.payload) == plain | {UPDATE_PAYLOAD_KEY}
    received = decode_update(sent.payload, reference)
    assert set(received) == set(values)
    for key in plain:
        assert received[key].dtype == values[key].dtype
        np.testing.assert_array_equal(received[key], values[key])


def test_unchanged_tensors_cost_no_symbols() -> None:
    values, reference = model_pair(seed=8)
    values["conv.w"] = reference["conv.w"].copy()
    sent = EntropyUpdateCodec().encode(values, reference)
    assert symbols_of(sent.payload)["conv.w"] is None
    np.testing.assert_array_equal(
        decode_update(sent.payload, reference)["conv.w"], values["conv.w"]
    )


def test_plain_codec_is_the_identity() -> None:
    values, reference = model_pair()
    sent = PlainUpdateCodec().encode(values, reference)
    assert sent.payload.keys() == values.keys() and sent.residual == {}
    for key in values:
        assert sent.payload[key] is values[key]
    received = decode_update(sent.payload, {})
    assert received.keys() == values.keys()
    for key in values:
        np.testing.assert_array_equal(received[key], values[key])


def test_registry_and_options() -> None:
    assert update_codec_names() == ["entropy", "none"]
    assert isinstance(build_update_codec("entropy", step=0.2), EntropyUpdateCodec)
    with pytest.raises(InputError, match="unknown update codec 'zip'"):
        build_update_codec("zip")
    with pytest.raises(InputError, match="no option 'quality'"):
        build_update_codec("entropy", quality=3)
    bad: list[tuple[dict[str, Any], str]] = [
        ({"step": 0}, "step"),
        ({"bits": 1}, "bits"),
        ({"topk": 1.5}, "topk"),
        ({"stochastic": "yes"}, "stochastic"),
        ({"raw_keys": ["("]}, "raw_keys"),
    ]
    for options, message in bad:
        with pytest.raises(InputError, match=message):
            build_update_codec("entropy", **options)


# ---------------------------------------------------------------------------- damaged payloads


def coded_payload() -> tuple[dict[str, Any], dict[str, Any]]:
    values, reference = model_pair(seed=9)
    return EntropyUpdateCodec(step=0.5).encode(values, reference).payload, reference


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def rewritten_header(blob: bytes, edit: Any) -> bytes:
    """The payload with its JSON header edited by ``edit`` (checksum recomputed)."""
    (length,) = struct.unpack("<I", blob[5:9])
    header = json.loads(zlib.decompress(blob[9 : 9 + length]))
    edit(header)
    head = zlib.compress(json.dumps(header).encode())
    return with_crc(blob[:5] + struct.pack("<I", len(head)) + head + blob[9 + length : -4])


def _set_shape(header: dict[str, Any]) -> None:
    header["keys"][0][2] = [3, 3]


def _set_table(header: dict[str, Any]) -> None:
    header["keys"][1][4] = 99


DAMAGES: dict[str, tuple[Any, str, str]] = {
    "truncated": (lambda b: b[: len(b) // 2], UPDATE_PAYLOAD_KEY, "checksum"),
    "very short": (lambda b: b[:7], UPDATE_PAYLOAD_KEY, "truncated"),
    "empty": (lambda b: b"", UPDATE_PAYLOAD_KEY, "truncated"),
    "flipped byte": (
        lambda b: b[:100] + bytes([b[100] ^ 0x40]) + b[101:],
        UPDATE_PAYLOAD_KEY,
        "checksum",
    ),
    "bad magic": (lambda b: with_crc(b"XXXX" + b[4:-4]), UPDATE_PAYLOAD_KEY, "magic"),
    "stream cut, checksum redone": (lambda b: with_crc(b[:-40]), UPDATE_PAYLOAD_KEY, "stream"),
    "stream altered, checksum redone": (
        lambda b: with_crc(b[:-12] + bytes(8)),
        UPDATE_PAYLOAD_KEY,
        "stream",
    ),
    "shape differs from the reference": (
        lambda b: rewritten_header(b, _set_shape),
        "conv.w",
        re.escape("reference model has float32(32, 16, 3, 3)"),
    ),
    "table out of range": (lambda b: rewritten_header(b, _set_table), "conv.b", "table 99"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGES))
def test_damaged_payload_raises_a_typed_error_naming_the_key(kind: str) -> None:
    damage, key, reason = DAMAGES[kind]
    payload, reference = coded_payload()
    blob = damage(payload[UPDATE_PAYLOAD_KEY].tobytes())
    damaged = {UPDATE_PAYLOAD_KEY: np.frombuffer(blob, dtype=np.uint8)}
    with pytest.raises(UpdateCodecError, match=reason) as info:
        decode_update(damaged, reference)
    assert isinstance(info.value, InputError)
    assert info.value.key == key and repr(key) in str(info.value)


def test_payload_against_a_model_without_the_key_is_refused() -> None:
    payload, reference = coded_payload()
    del reference["fc.w"]
    with pytest.raises(UpdateCodecError, match="not in the reference model") as info:
        decode_update(payload, reference)
    assert info.value.key == "fc.w"


def test_payload_of_another_dtype_is_refused() -> None:
    payload, reference = coded_payload()
    wrong = {UPDATE_PAYLOAD_KEY: payload[UPDATE_PAYLOAD_KEY].astype(np.int16)}
    with pytest.raises(UpdateCodecError, match="1-D uint8"):
        decode_update(wrong, reference)


# ---------------------------------------------------------------------------- strategies


def coded_reply(
    instruction: Message,
    arrays: dict[str, np.ndarray],
    weight: float,
    codec: EntropyUpdateCodec,
    **metrics: float,
) -> Message:
    """A reply whose arrays are coded against the shared model the instruction carries."""
    received = numpy_of(instruction.content.array_records["arrays"])
    sent = codec.encode(arrays, received)
    return reply(instruction, sent.payload, weight, **metrics)


def trained(offset: float, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(int(offset * 100))
    base = numpy_of(global_model())
    return {
        k: (base[k] + offset + 0.1 * rng.normal(size=base[k].shape)).astype(np.float32)
        for k in keys
    }


@pytest.mark.parametrize("name", ["modality-aware", "fedavg", "fedprox"])
def test_aggregate_of_coded_replies_equals_aggregate_of_decoded_replies(name: str) -> None:
    codec = EntropyUpdateCodec(step=0.5, broadcast=False)
    partial = name == "modality-aware"
    keys = [(S1, HEAD), (S2, HEAD), (S1, S2, HEAD)] if partial else [(S1, S2, HEAD)] * 3
    updates = [trained(0.5 * (i + 1), k) for i, k in enumerate(keys)]
    weights = [100, 300, 100]

    coded = build_strategy(name, update_codec=codec, min_train_nodes=3)
    assert isinstance(coded, AccountedFedAvg)
    messages = instructions(coded, 3)
    replies = [
        coded_reply(m, u, w, codec, loss=float(i))
        for i, (m, u, w) in enumerate(zip(messages, updates, weights, strict=True))
    ]
    arrays, metrics = coded.aggregate_train(1, replies)

    plain = build_strategy(name, min_train_nodes=3)
    assert isinstance(plain, AccountedFedAvg)
    plain_messages = instructions(plain, 3)
    reference = numpy_of(global_model())
    decoded_replies = [
        reply(
            m,
            decode_update(numpy_of(r.content.array_records["arrays"]), reference),
            w,
            loss=float(i),
        )
        for i, (m, r, w) in enumerate(zip(plain_messages, replies, weights, strict=True))
    ]
    expected, expected_metrics = plain.aggregate_train(1, decoded_replies)

    assert arrays is not None and expected is not None and metrics is not None
    assert list(arrays.keys()) == list(expected.keys())
    for key in expected.keys():
        np.testing.assert_array_equal(arrays[key].numpy(), expected[key].numpy())
    assert dict(metrics) == dict(expected_metrics or {})
    # and the codec's error is small: within half the largest step of the plain average
    truth = plain.aggregate_train(
        1,
        [reply(m, u, w) for m, u, w in zip(instructions(plain, 3), updates, weights, strict=True)],
    )[0]
    assert truth is not None
    steps = [steps_of(numpy_of(r.content.array_records["arrays"])) for r in replies]
    for key in (S1, S2, HEAD):
        bound = max(s[key] for s in steps if key in s) / 2
        error = np.abs(arrays[key].numpy().astype(np.float64) - truth[key].numpy())
        assert 0 < error.max() <= bound + 1e-6, key
    stats = coded.round_stats[1]
    assert (stats.clients_ok, stats.clients_failed) == (3, 0)
    assert stats.bytes_up == sum(message_bytes(r) for r in replies)


def test_damaged_coded_reply_is_a_failed_reply() -> None:
    codec = EntropyUpdateCodec(broadcast=False)
    strategy = build_strategy("modality-aware", update_codec=codec)
    assert isinstance(strategy, AccountedFedAvg)
    good, bad = instructions(strategy, 2)
    broken = coded_reply(bad, trained(1.0, (S1, HEAD)), 10, codec)
    record = broken.content.array_records["arrays"]
    blob = record[UPDATE_PAYLOAD_KEY].numpy()
    record[UPDATE_PAYLOAD_KEY] = Array(blob[: len(blob) - 9].copy())
    arrays, _ = strategy.aggregate_train(
        1, [coded_reply(good, trained(2.0, (S1, HEAD)), 10, codec), broken]
    )
    assert arrays is not None
    stats = strategy.round_stats[1]
    assert (stats.clients_ok, stats.clients_failed) == (1, 1)
    assert "coded update cannot be decoded" in stats.failures[0].reason
    assert UPDATE_PAYLOAD_KEY in stats.failures[0].reason


def test_message_bytes_measure_the_messages_flower_sends() -> None:
    strategy = build_strategy("modality-aware")
    assert isinstance(strategy, AccountedFedAvg)
    a, b = instructions(strategy, 2)
    rng = np.random.default_rng(0)
    big = {S1: rng.normal(size=4000).astype(np.float32)}
    small = reply(a, {S1: big[S1][:2]}, 1)
    large = reply(b, big, 1)
    # at least the array data, and more by a bounded per-object overhead
    assert message_bytes(large) - message_bytes(small) >= (4000 - 2) * 4
    assert message_bytes(large) < 4000 * 4 + 4096
    sent = strategy.round_stats[1].bytes_down
    assert sent == message_bytes(a) + message_bytes(b)
    assert sent > 2 * sum(v.nbytes for k, v in numpy_of(global_model()).items() if k not in LOCAL)


# ---------------------------------------------------------------------------- coded broadcast


def client_round(msg: Message, state: RecordDict, codec: EntropyUpdateCodec, node: int) -> Message:
    """A client: rebuild the global model, change it a little, reply coded."""
    from fedrs.clients.app import receive_global

    cfg = dict(msg.content.config_records["config"])
    received = receive_global(msg.content.array_records["arrays"], cfg, state)
    keys = (S1, HEAD) if node % 2 else (S2, HEAD)
    server_round = cfg["server-round"]
    assert isinstance(server_round, int)
    rng = np.random.default_rng(node + 10 * server_round)
    update = {
        k: (received[k] + rng.normal(size=received[k].shape)).astype(np.float32) for k in keys
    }
    return reply(msg, codec.encode(update, received).payload, node)


def test_coded_broadcast_rebuilds_the_servers_model_exactly() -> None:
    from fedrs.clients.app import receive_global
    from fedrs.comm import MissingGlobalModelError

    codec = EntropyUpdateCodec(step=0.5)
    strategy = build_strategy("modality-aware", update_codec=codec, min_train_nodes=3)
    assert isinstance(strategy, AccountedFedAvg)
    states = {node: RecordDict() for node in (1, 2, 3)}
    arrays = global_model()

    # round 1: full model for everyone; node 3 fails
    messages = instructions(strategy, 3, arrays, server_round=1)
    assert all(UPDATE_PAYLOAD_KEY not in m.content["arrays"] for m in messages)
    assert all(GLOBAL_FINGERPRINT_KEY in m.content["config"] for m in messages)
    replies = [
        client_round(m, states[m.metadata.dst_node_id], codec, m.metadata.dst_node_id)
        for m in messages[:2]
    ]
    replies.append(error_reply(messages[2]))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    full_bytes = strategy.round_stats[1].bytes_down / 3

    # round 2: nodes 1 and 2 get the coded difference, node 3 the full model
    messages = instructions(strategy, 3, arrays, server_round=2)
    coded = {m.metadata.dst_node_id: UPDATE_PAYLOAD_KEY in m.content["arrays"] for m in messages}
    assert coded == {1: True, 2: True, 3: False}
    shared = {k: v for k, v in numpy_of(arrays).items() if k not in LOCAL}
    for msg in messages:
        node = msg.metadata.dst_node_id
        cfg = dict(msg.content.config_records["config"])
        rebuilt = receive_global(msg.content.array_records["arrays"], cfg, states[node])
        assert fingerprint(rebuilt) == fingerprint(shared) == cfg[GLOBAL_FINGERPRINT_KEY]
        if coded[node]:
            assert cfg[GLOBAL_BASE_KEY] != cfg[GLOBAL_FINGERPRINT_KEY]
            assert message_bytes(msg) < full_bytes
    # a node that lost its state cannot use a coded difference: a clear error
    coded_msg = next(m for m in messages if coded[m.metadata.dst_node_id])
    with pytest.raises(MissingGlobalModelError, match="full model next round"):
        receive_global(
            coded_msg.content.array_records["arrays"],
            dict(coded_msg.content.config_records["config"]),
            RecordDict(),
        )


def test_coded_global_model_stays_close_to_the_average() -> None:
    codec = EntropyUpdateCodec(step=0.5)
    coded = build_strategy("modality-aware", update_codec=codec)
    plain = build_strategy("modality-aware")
    results = []
    for strategy in (coded, plain):
        assert isinstance(strategy, AccountedFedAvg)
        a, b = instructions(strategy, 2)
        arrays, _ = strategy.aggregate_train(
            1, [reply(a, trained(1.0, (S1, HEAD)), 1), reply(b, trained(3.0, (S2, HEAD)), 1)]
        )
        assert arrays is not None
        results.append(numpy_of(arrays))
    for key in (S1, S2, HEAD):
        delta = results[1][key] - numpy_of(global_model())[key]
        step = 0.5 * math.sqrt(float(np.mean(delta.astype(np.float64) ** 2)))
        assert np.abs(results[0][key] - results[1][key]).max() <= step / 2 + 1e-6
    for key in LOCAL:
        np.testing.assert_array_equal(results[0][key], results[1][key])


# ---------------------------------------------------------------------------- the apps


@pytest.fixture(scope="module")
def smoke_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fedrs-cache")


@pytest.mark.slow
def test_client_app_rounds_with_coded_updates_in_process(
    monkeypatch: pytest.MonkeyPatch, smoke_cache: Path
) -> None:
    """ClientApp + strategy without Ray: coded replies, coded broadcast, residual in state."""
    from fedrs.clients.app import RESIDUAL_STATE_KEY, train
    from fedrs.settings import RunSettings
    from fedrs.train import build_model

    monkeypatch.setenv("FEDRS_CACHE_DIR", str(smoke_cache))
    settings = RunSettings(
        config_path=str(SMOKE),
        overrides={"federation.update_codec": "entropy", "federation.codec.step": 0.5},
    )
    config = settings.experiment()
    strategy = build_strategy(
        "modality-aware", update_codec=config.federation.build_update_codec(), min_train_nodes=3
    )
    assert isinstance(strategy, AccountedFedAvg)
    arrays = ArrayRecord(build_model(config).state_dict())
    contexts = {node: client_context(node - 1, 3, node_id=node) for node in (1, 2, 3)}
    for server_round in (1, 2):
        messages = instructions(strategy, 3, arrays, server_round=server_round)
        replies = [train(m, contexts[m.metadata.dst_node_id], settings) for m in messages]
        for r in replies:
            carried = numpy_of(r.content.array_records["arrays"])
            blob = carried.pop(UPDATE_PAYLOAD_KEY).tobytes()
            floats = sum(math.prod(s) for _, _, s, _, _ in unpack(blob, name="x"))
            floats += sum(v.size for v in carried.values())
            assert message_bytes(r) < 4 * floats / 4  # 4x fewer bytes than float32
        arrays_out, _ = strategy.aggregate_train(server_round, replies)
        assert arrays_out is not None
        arrays = arrays_out
        assert strategy.round_stats[server_round].clients_ok == 3
    assert all(RESIDUAL_STATE_KEY in c.state.array_records for c in contexts.values())
    first, second = strategy.round_stats[1], strategy.round_stats[2]
    assert second.bytes_down < first.bytes_down / 3  # difference vs the full model
    for value in numpy_of(arrays).values():
        assert np.isfinite(value).all()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_simulation_with_entropy_coded_updates_sends_fewer_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smoke_cache: Path
) -> None:
    """``fedrs simulate --update-codec entropy`` vs ``none`` on the smoke setup."""
    from fedrs.cli import main as cli

    monkeypatch.setenv("FEDRS_CACHE_DIR", str(smoke_cache))
    summaries = {}
    for codec, rounds in (("none", "1"), ("entropy", "2")):
        out = tmp_path / codec
        args = ["simulate", "--config", str(SMOKE), "--out", str(out), "--rounds", rounds]
        assert cli([*args, "--update-codec", codec]) == 0
        summaries[codec] = json.loads((out / "summary.json").read_text())
    plain, coded = summaries["none"], summaries["entropy"]
    assert coded["config"]["federation"]["update_codec"] == "entropy"
    assert coded["clients_failed"] == 0 and coded["clients_ok"] == 2 * 3
    # same first round (same seeds, same clients): 4x fewer bytes up
    up_plain = plain["history"][0]["comm/bytes_up"]
    up_coded = coded["history"][0]["comm/bytes_up"]
    assert 0 < up_coded < up_plain / 4
    # round 2 broadcast: differences instead of the model
    down = [h["comm/bytes_down"] for h in coded["history"]]
    assert down[1] < down[0] / 2
    assert down[0] == pytest.approx(plain["history"][0]["comm/bytes_down"], rel=0.01)
    assert 0.0 <= coded["map@20"] <= 1.0

    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=coded["tracking_uri"])
    history = client.get_metric_history(coded["mlflow_run_id"], "comm/bytes_up")
    assert sorted(p.step for p in history) == [1, 2]
    assert sum(p.value for p in history) == coded["bytes_up"]


def test_simulate_refuses_an_unknown_codec(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fedrs.cli import main as cli

    args = ["simulate", "--config", str(SMOKE), "--out", str(tmp_path / "x")]
    assert cli([*args, "--update-codec", "zip"]) == 2
    assert "unknown update codec 'zip'" in capsys.readouterr().err


def test_config_and_cli_options_reach_the_strategy() -> None:
    from fedrs.cli.simulate import experiment_overrides
    from fedrs.config import load_config
    from fedrs.server_strategy import strategy_for

    overrides = experiment_overrides(
        update_codec="entropy", codec_step=0.75, sets=["federation.codec.topk=0.5"]
    )
    config = load_config(SMOKE, overrides)
    strategy = strategy_for(config, 3)
    codec = strategy.update_codec
    assert isinstance(codec, EntropyUpdateCodec)
    assert (codec.step, codec.topk, codec.codes_broadcast) == (0.75, 0.5, True)
    assert isinstance(strategy_for(load_config(SMOKE), 3).update_codec, PlainUpdateCodec)
    with pytest.raises(InputError, match=r"federation\.codec\.topk"):
        load_config(SMOKE, {"federation.codec.topk": 2.0})


@pytest.mark.parametrize("error", [UpdateCodecError, MissingGlobalModelError])
def test_keyed_errors_survive_pickling(error: type[Exception]) -> None:
    """A client's error crosses processes (Ray actors) whole: its class, key and reason."""
    copy = pickle.loads(pickle.dumps(error("global-base", "no such model")))
    assert type(copy) is error
    assert (copy.key, copy.reason, str(copy)) == (
        "global-base",
        "no such model",
        str(error("global-base", "no such model")),
    )
