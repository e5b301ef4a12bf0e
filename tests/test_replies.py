"""No reply can crash or poison the server: hostile replies fed to ``aggregate_train``.

Each attack is a hand-made reply sent alongside one honest reply: the server survives, the
hostile reply is counted failed with a reason that names the problem, and the merged model is
the honest reply's contribution, finite.  The memory attacks are refused before anything big is
allocated (checked with ``tracemalloc`` and a guard on the table allocation), so these tests
never allocate gigabytes, even against code that would.  The pure checks of
:mod:`fedrs.strategies.replies` and the payload reader are tested directly too.
"""

from __future__ import annotations

import io
import json
import logging
import math
import struct
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from _data import SMOKE
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SType
from flwr.serverapp.exception import AggregationError
from numpy.lib import format as npy_format
from test_strategies import (
    HEAD,
    S1,
    S2,
    FakeGrid,
    f32,
    global_model,
    head,
    instructions,
    numpy_of,
    reply,
)

from fedrs.comm import UPDATE_PAYLOAD_KEY, UpdateCodecError, decode_update
from fedrs.comm import payload as payload_module
from fedrs.comm.payload import MAX_HEADER_BYTES, unpack
from fedrs.errors import InputError
from fedrs.strategies import AccountedFedAvg, RoundFailedError, build_strategy
from fedrs.strategies import replies as replies_module
from fedrs.strategies.errors import NonFiniteModelError
from fedrs.strategies.replies import (
    RejectedReply,
    as_rejection,
    check_metrics,
    decode_array,
    first_non_finite,
    read_reply,
    reply_order,
    reply_weight,
)

PEAK_BYTES = 50 << 20
"""Most memory a refused reply may make the server allocate (the attacks ask for gigabytes)."""

PARTIAL = "modality-aware"
WHOLE = "fedavg"


pytestmark = pytest.mark.usefixtures("task_identity")


@pytest.fixture(autouse=True)
def no_big_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail (instead of allocating) when a payload would make the reader build huge tables."""
    real = payload_module._cdf_arrays

    def guarded(offsets: Any, freqs: Any) -> Any:
        width = max(len(f) for f in freqs) + 1
        size = 4 * len(freqs) * width
        assert size < PEAK_BYTES, f"{len(freqs)} tables x {width} symbols: {size} bytes"
        return real(offsets, freqs)

    monkeypatch.setattr(payload_module, "_cdf_arrays", guarded)


@pytest.fixture
def peak_memory() -> Iterator[Callable[[], int]]:
    """The peak of traced memory (bytes) since the test started; ``tracemalloc`` runs."""
    tracemalloc.start()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------------------- builders


def npy_bytes(header: dict[str, Any], data: bytes, version: tuple[int, int] = (1, 0)) -> bytes:
    """``.npy`` bytes with the given header dict (which may lie) followed by ``data``."""
    buffer = io.BytesIO()
    if version == (1, 0):
        npy_format.write_array_header_1_0(buffer, header)
    else:
        npy_format.write_array_header_2_0(buffer, header)
    return buffer.getvalue() + data


def lying_array(shape: tuple[int, ...], *, declared: tuple[int, ...] = (2,)) -> Array:
    """A float32 ``declared``-shaped Array whose ``.npy`` header claims ``shape``."""
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    data = npy_bytes(header, np.ones(declared, dtype=np.float32).tobytes())
    return Array(dtype="float32", shape=declared, stype=SType.NUMPY, data=data)


def coded_blob(header: dict[str, Any] | bytes, tables: bytes = b"", stream: bytes = b"") -> bytes:
    """A payload in the layout of :mod:`fedrs.comm.payload` (valid CRC).

    ``header`` is the JSON header (a dict) or the raw bytes to compress as the header.
    """
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    head = zlib.compress(text, 9)
    body = b"FRUP" + bytes([1]) + struct.pack("<I", len(head)) + head + tables + stream
    return body + struct.pack("<I", zlib.crc32(body))


def table_bytes(n: int) -> bytes:
    """A valid table of ``n`` regular symbols: ``n + 1`` u16 frequencies summing to 2**16."""
    freqs = np.ones(n + 1, dtype="<u2")
    freqs[-1] = (1 << 16) - n
    return freqs.tobytes()


def many_tables_blob(count: int, key: str = S1) -> bytes:
    """One coded float32 (2,) tensor, ``count`` one-symbol tables and one of the widest."""
    header = {
        "keys": [[key, "<f4", [2], 1.0, 0]],
        "tables": [[0, 4096]] + [[0, 1]] * count,
        "stream": 0,
    }
    return coded_blob(header, table_bytes(4096) + table_bytes(1) * count)


def deep_json_blob(depth: int = 100_000) -> bytes:
    return coded_blob(b"[" * depth + b"]" * depth)


def huge_dtype_blob(dtype: str, key: str = S1) -> bytes:
    header = {"keys": [[key, dtype, [2], 1.0, 0]], "tables": [[0, 1]], "stream": 0}
    return coded_blob(header, table_bytes(1))


def zip_bomb_blob(size: int = 16 << 20) -> bytes:
    """A valid, empty header padded with ``size`` bytes of whitespace (compresses ~1000:1)."""
    text = b'{"keys": [], "tables": [], "stream": 0' + b" " * size + b"}"
    return coded_blob(text)


def as_record_array(blob: bytes) -> Array:
    return Array(np.frombuffer(blob, dtype=np.uint8).copy())


def honest_arrays(name: str) -> dict[str, np.ndarray]:
    if name == WHOLE:
        return {S1: f32(2, 2), S2: f32(2, 2, 2), HEAD: head(2)}
    return {S1: f32(2, 2), HEAD: head(2)}


def hostile_reply(
    instruction: Message,
    name: str,
    arrays: dict[str, Array],
    weight: float = 5,
    **metrics: Any,
) -> Message:
    """A reply holding ``arrays`` as they are, plus honest values for the other shared keys."""
    record = ArrayRecord({k: Array(v) for k, v in honest_arrays(name).items() if k != S1})
    for key, array in arrays.items():
        record[key] = array
    content = RecordDict(
        {"arrays": record, "metrics": MetricRecord({"num-examples": weight, **metrics})}
    )
    return Message(content, reply_to=instruction)


def run_round(
    name: str, make_bad: Callable[[Message], Message], **options: Any
) -> tuple[AccountedFedAvg, ArrayRecord, int]:
    """One round: an honest reply and ``make_bad``'s; returns the strategy, model, bad node."""
    strategy = build_strategy(name, **options)
    assert isinstance(strategy, AccountedFedAvg)
    good, bad = instructions(strategy, 2)
    arrays, _ = strategy.aggregate_train(1, [reply(good, honest_arrays(name), 5), make_bad(bad)])
    assert arrays is not None
    return strategy, arrays, bad.metadata.dst_node_id


def assert_only_the_honest_reply_counts(
    strategy: AccountedFedAvg, arrays: ArrayRecord, name: str, bad_node: int, reason: str
) -> None:
    stats = strategy.round_stats[1]
    assert (stats.clients_ok, stats.clients_failed) == (1, 1)
    failure = stats.failures[0]
    assert failure.node_id == bad_node
    assert reason in failure.reason, failure.reason
    out = numpy_of(arrays)
    assert all(np.isfinite(v).all() for v in out.values())
    np.testing.assert_array_equal(out[S1], [2.0, 2.0])
    np.testing.assert_array_equal(out[HEAD], head(2))
    np.testing.assert_array_equal(out[S2], [2.0, 2.0, 2.0] if name == WHOLE else [0.0, 0.0, 0.0])


# ---------------------------------------------------------------------------- attacks, end to end

ATTACKS: dict[str, tuple[Callable[[], dict[str, Array]], str]] = {
    "coded header nested 100,000 deep": (
        lambda: {UPDATE_PAYLOAD_KEY: as_record_array(deep_json_blob())},
        "nested too deeply",
    ),
    "coded dtype (2**40,)f4": (
        lambda: {UPDATE_PAYLOAD_KEY: as_record_array(huge_dtype_blob("(2**40,)f4"))},
        "unknown dtype '(2**40,)f4'",
    ),
    "coded subarray dtype (1099511627776,)f4": (
        lambda: {UPDATE_PAYLOAD_KEY: as_record_array(huge_dtype_blob("(1099511627776,)f4"))},
        "unknown dtype",
    ),
    ".npy header claims 2**40 elements": (
        lambda: {S1: lying_array((1 << 40,))},
        f"array {S1!r}: its .npy header declares float32(1099511627776,)",
    ),
    "coded update with 100,000 one-symbol tables": (
        lambda: {UPDATE_PAYLOAD_KEY: as_record_array(many_tables_blob(100_000))},
        "100001 tables for 1 coded tensors",
    ),
    "coded header zip bomb": (
        lambda: {UPDATE_PAYLOAD_KEY: as_record_array(zip_bomb_blob())},
        f"decompresses to more than {MAX_HEADER_BYTES} bytes",
    ),
}


@pytest.mark.parametrize("name", [PARTIAL, WHOLE])
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_hostile_reply_is_failed_and_the_round_goes_on(
    attack: str, name: str, peak_memory: Callable[[], int]
) -> None:
    make_arrays, reason = ATTACKS[attack]
    strategy, arrays, bad_node = run_round(
        name, lambda bad: hostile_reply(bad, name, make_arrays())
    )
    assert_only_the_honest_reply_counts(strategy, arrays, name, bad_node, reason)
    assert peak_memory() < PEAK_BYTES


@pytest.mark.parametrize("weight", [1e308, 1e30])
def test_a_weight_above_max_weight_is_failed(weight: float) -> None:
    strategy, arrays, bad_node = run_round(
        PARTIAL,
        lambda bad: reply(bad, {S1: f32(1e30, 1e30), HEAD: head(1e30)}, weight),
        max_weight=1000,
    )
    assert_only_the_honest_reply_counts(
        strategy, arrays, PARTIAL, bad_node, "exceeds max_weight 1000"
    )
    assert f"{weight:g}" in strategy.round_stats[1].failures[0].reason


def test_max_weight_is_checked_and_optional() -> None:
    strategy = build_strategy(PARTIAL)
    assert isinstance(strategy, AccountedFedAvg) and strategy.max_weight is None
    for bad in (0, -1.0, math.inf, math.nan, True, "10"):
        with pytest.raises(InputError, match="max_weight"):
            build_strategy(PARTIAL, max_weight=bad)
    strategy = build_strategy(WHOLE, max_weight=10)
    assert isinstance(strategy, AccountedFedAvg) and strategy.max_weight == 10.0


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({"loss": math.nan}, "metric 'loss' is not a finite number"),
        ({"loss": [1.0, math.inf]}, "metric 'loss' is not a finite number"),
    ],
)
def test_non_finite_metrics_are_failed(metrics: dict[str, Any], reason: str) -> None:
    strategy, arrays, bad_node = run_round(
        PARTIAL, lambda bad: reply(bad, {S1: f32(9, 9), HEAD: head(9)}, 5, **metrics)
    )
    assert_only_the_honest_reply_counts(strategy, arrays, PARTIAL, bad_node, reason)


@pytest.mark.parametrize(
    ("metrics", "weight"), [({}, 10**400), ({"client-id": 10**400}, 5)], ids=["weight", "id"]
)
def test_numbers_no_float_can_hold_fail_the_reply(metrics: dict[str, Any], weight: int) -> None:
    """(Flower cannot even serialise them: whatever raises, only that reply fails.)"""
    strategy, arrays, bad_node = run_round(
        PARTIAL, lambda bad: reply(bad, {S1: f32(9, 9), HEAD: head(9)}, weight, **metrics)
    )
    assert_only_the_honest_reply_counts(strategy, arrays, PARTIAL, bad_node, "")


@pytest.mark.parametrize(
    "error", [MemoryError("simulated"), RecursionError("simulated"), ZeroDivisionError("x")]
)
def test_any_exception_while_reading_a_reply_fails_that_reply_only(
    error: Exception, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = replies_module.decode_array

    def fragile(key: str, array: Array, reference: Array) -> np.ndarray:
        value = real(key, array, reference)
        if key == S1 and value[0] == 13:
            raise error
        return value

    monkeypatch.setattr(replies_module, "decode_array", fragile)
    flower_log = logging.getLogger("flwr")
    flower_log.addHandler(caplog.handler)
    try:
        strategy, arrays, bad_node = run_round(
            PARTIAL, lambda bad: reply(bad, {S1: f32(13, 13), HEAD: head(13)}, 5)
        )
    finally:
        flower_log.removeHandler(caplog.handler)
    reason = f"reply cannot be read: {type(error).__name__}: {error}"
    assert_only_the_honest_reply_counts(strategy, arrays, PARTIAL, bad_node, reason)
    assert "Traceback" in strategy.round_stats[1].failures[0].detail
    assert any(
        f"node {bad_node}" in r.getMessage() and type(error).__name__ in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_a_non_finite_merge_is_never_adopted() -> None:
    """Float64 sums overflow only with absurd weights (no max_weight): the round fails loudly."""
    strategy = AccountedFedAvg(min_train_nodes=2)
    good, bad = instructions(strategy, 2)
    honest = {S1: f32(2, 2), S2: f32(2, 2, 2), HEAD: head(2)}
    with pytest.raises(NonFiniteModelError, match=rf"round 1: .*{S1!r}") as info:
        strategy.aggregate_train(1, [reply(good, honest, 5), reply(bad, honest, 1e308)])
    assert isinstance(info.value, RoundFailedError) and isinstance(info.value, AggregationError)
    assert info.value.key == S1 and info.value.server_round == 1


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflowing sums
def test_a_run_stops_before_evaluating_a_non_finite_model() -> None:
    """Flower's loop raises out of ``aggregate_train``: the bad model is never evaluated (the
    server app evaluates, then checkpoints), so the last good checkpoint stays."""
    strategy = AccountedFedAvg(min_train_nodes=2, fraction_evaluate=0.0)
    rounds: list[int] = []

    def client(msg: Message) -> Message:
        received = numpy_of(msg.content.array_records["arrays"])
        server_round = int(msg.content.config_records["config"]["server-round"])
        weight = 1e308 if server_round == 2 else 5.0
        return reply(msg, {k: v + 1 for k, v in received.items()}, weight)

    def evaluate(server_round: int, arrays: ArrayRecord) -> None:
        assert all(np.isfinite(v).all() for v in numpy_of(arrays).values())
        rounds.append(server_round)

    grid = FakeGrid([1, 2], client)
    with pytest.raises(NonFiniteModelError, match="round 2"):
        strategy.start(grid, global_model(), num_rounds=3, timeout=10, evaluate_fn=evaluate)
    assert rounds == [0, 1]


def test_strategy_for_bounds_the_weight() -> None:
    from fedrs.config import load_config
    from fedrs.server_strategy import strategy_for

    config = load_config(SMOKE)
    assert config.federation.max_weight is None
    assert strategy_for(config, 3).max_weight is None  # fedrs.validation's call
    assert strategy_for(config, 3, max_weight=1234).max_weight == 1234
    configured = load_config(SMOKE, {"federation.max_weight": 50})
    assert strategy_for(configured, 3, max_weight=1234).max_weight == 50
    with pytest.raises(InputError, match="max_weight"):
        load_config(SMOKE, {"federation.max_weight": 0})


# ---------------------------------------------------------------------------- pure functions


def reference(shape: tuple[int, ...] = (2,)) -> Array:
    return Array(np.zeros(shape, dtype=np.float32))


def test_decode_array_refuses_a_lying_npy_header_before_allocating(
    peak_memory: Callable[[], int],
) -> None:
    array = lying_array((1 << 40,))
    tracemalloc.reset_peak()
    with pytest.raises(RejectedReply, match=r"'k': its \.npy header declares") as info:
        decode_array("k", array, reference())
    assert "1099511627776" in info.value.reason
    assert peak_memory() < PEAK_BYTES


@pytest.mark.parametrize(
    ("header", "data", "reason"),
    [
        ({"descr": "<f8", "fortran_order": False, "shape": (2,)}, bytes(16), "float64"),
        ({"descr": "|O", "fortran_order": False, "shape": (2,)}, bytes(16), "object"),
        ({"descr": "<f4", "fortran_order": False, "shape": (2,)}, bytes(4), "bytes, its .npy"),
        ({"descr": "<f4", "fortran_order": False, "shape": (2,)}, bytes(12), "bytes, its .npy"),
        ({"descr": ">f4", "fortran_order": False, "shape": (2,)}, bytes(8), ">f4"),
    ],
)
def test_decode_array_checks_the_header_against_the_reference(
    header: dict[str, Any], data: bytes, reason: str
) -> None:
    array = Array(dtype="float32", shape=(2,), stype=SType.NUMPY, data=npy_bytes(header, data))
    with pytest.raises(RejectedReply, match=r"'k'") as info:
        decode_array("k", array, reference())
    assert reason in info.value.reason


@pytest.mark.parametrize(
    "data", [b"", b"\x93NUMPY", b"garbage" * 10, b"\x93NUMPY\x03\x00" + bytes(20)]
)
def test_decode_array_refuses_bytes_that_are_not_npy(data: bytes) -> None:
    array = Array(dtype="float32", shape=(2,), stype=SType.NUMPY, data=data)
    with pytest.raises(RejectedReply, match="'k'"):
        decode_array("k", array, reference())


def test_decode_array_reads_honest_arrays_in_either_order() -> None:
    value = np.arange(6, dtype=np.float32).reshape(2, 3)
    for sent in (value, np.asfortranarray(value)):
        decoded = decode_array("k", Array(sent), reference((2, 3)))
        np.testing.assert_array_equal(decoded, value)
        assert decoded.flags.writeable and decoded.flags.c_contiguous
    version_2 = npy_bytes(
        {"descr": "<f4", "fortran_order": False, "shape": (2, 3)}, value.tobytes(), (2, 0)
    )
    array = Array(dtype="float32", shape=(2, 3), stype=SType.NUMPY, data=version_2)
    np.testing.assert_array_equal(decode_array("k", array, reference((2, 3))), value)
    scalar = Array(np.array(5, dtype=np.int64))
    assert decode_array("n", scalar, Array(np.array(0, dtype=np.int64))) == 5


def test_reply_weight_bounds() -> None:
    metrics = MetricRecord({"num-examples": 10.0})
    assert reply_weight(metrics, "num-examples") == 10.0
    assert reply_weight(metrics, "num-examples", max_weight=10) == 10.0
    with pytest.raises(RejectedReply, match=r"= 10 exceeds max_weight 9"):
        reply_weight(metrics, "num-examples", max_weight=9)
    for value in (0, -1.0, math.inf, math.nan, 10**400):
        with pytest.raises(RejectedReply, match="positive finite"):
            reply_weight(MetricRecord({"num-examples": value}), "num-examples")
    with pytest.raises(RejectedReply, match="not a number"):
        reply_weight(MetricRecord({"num-examples": [1.0, 2.0]}), "num-examples")


def test_check_metrics_and_reply_order_survive_absurd_numbers() -> None:
    check_metrics(MetricRecord({"loss": 1.0, "list": [1.0, 2.5], "n": 3}))
    with pytest.raises(RejectedReply, match="'big'"):
        check_metrics(MetricRecord({"big": 10**5000}))
    strategy = build_strategy(PARTIAL)
    assert isinstance(strategy, AccountedFedAvg)
    first, second = instructions(strategy, 2)
    absurd = reply(second, {S1: f32(1, 1)}, 1, **{"client-id": 10**400})
    assert reply_order(absurd) == (math.inf, second.metadata.dst_node_id)
    ordered = reply(first, {S1: f32(1, 1)}, 1, **{"client-id": 7})
    assert reply_order(ordered) == (7.0, first.metadata.dst_node_id)


def test_as_rejection_names_the_exception() -> None:
    rejected = RejectedReply("reason", "detail")
    assert as_rejection(rejected) is rejected
    try:
        raise MemoryError("Unable to allocate 4.00 TiB\nfor an array")
    except MemoryError as exc:
        converted = as_rejection(exc)
    assert converted.reason == (
        "reply cannot be read: MemoryError: Unable to allocate 4.00 TiB for an array"
    )
    assert "Traceback" in converted.detail
    assert len(as_rejection(ValueError("x" * 10_000)).reason) <= 300


def test_first_non_finite() -> None:
    assert first_non_finite({"a": np.ones(3), "n": np.array(5)}) is None
    values = {"a": np.ones(3), "b": np.array([1.0, np.inf]), "c": np.array([np.nan])}
    assert first_non_finite(values) == "b"
    assert first_non_finite({"h": np.array([np.inf], dtype=np.float16)}) == "h"


def test_read_reply_returns_the_checked_reply() -> None:
    strategy = build_strategy(PARTIAL, local_keys=["running_"])
    assert isinstance(strategy, AccountedFedAvg)
    instruction = instructions(strategy, 2)[0]
    msg = reply(instruction, {S1: f32(1, 2), "hash_head.bn.running_mean": f32(5, 5)}, 3, loss=0.5)
    model = global_model()
    checked = read_reply(
        msg,
        model,
        numpy_of(model),
        local_keys=strategy.local_keys,
        weighted_by_key="num-examples",
        arrayrecord_key="arrays",
        requires_all_shared_keys=False,
        max_weight=3,
    )
    assert checked.node_id == instruction.metadata.dst_node_id and checked.weight == 3.0
    assert list(checked.arrays) == [S1] and checked.metrics["loss"] == 0.5
    np.testing.assert_array_equal(checked.arrays[S1], [1.0, 2.0])


# ---------------------------------------------------------------------------- payload reader


def codec_reference() -> dict[str, np.ndarray]:
    return {S1: np.zeros(2, dtype=np.float32)}


def decode(blob: bytes) -> dict[str, np.ndarray]:
    payload = {UPDATE_PAYLOAD_KEY: np.frombuffer(blob, dtype=np.uint8)}
    return decode_update(payload, codec_reference())


def test_deeply_nested_header_is_a_codec_error() -> None:
    with pytest.raises(UpdateCodecError, match="nested too deeply") as info:
        unpack(deep_json_blob(), name="p")
    assert info.value.key == "p"


@pytest.mark.parametrize("dtype", ["(2**40,)f4", "(1099511627776,)f4", "f16"])
def test_only_plain_float_dtypes_are_decoded(dtype: str) -> None:
    with pytest.raises(UpdateCodecError, match=r"dtype|floating point") as info:
        unpack(huge_dtype_blob(dtype), name="p")
    assert info.value.key == S1


@pytest.mark.parametrize("dtype", [["f4"], {"names": ["a"], "formats": ["f4"]}, 4])
def test_a_dtype_that_is_not_a_string_is_refused(dtype: Any) -> None:
    header = {"keys": [[S1, dtype, [2], 1.0, 0]], "tables": [[0, 1]], "stream": 0}
    with pytest.raises(UpdateCodecError, match="dtype must be a string"):
        unpack(coded_blob(header, table_bytes(1)), name="p")


def test_more_tables_than_coded_tensors_are_refused_before_they_are_read(
    peak_memory: Callable[[], int],
) -> None:
    blob = many_tables_blob(100_000)
    tracemalloc.reset_peak()
    with pytest.raises(UpdateCodecError, match="100001 tables for 1 coded tensors"):
        unpack(blob, name="p")
    assert peak_memory() < PEAK_BYTES
    with pytest.raises(UpdateCodecError, match="100001 tables for 1 coded tensors"):
        decode(many_tables_blob(100_000))


def test_a_table_no_tensor_uses_is_refused() -> None:
    header = {
        "keys": [[S1, "<f4", [2], 1.0, 1], ["b", "<f4", [2], 1.0, 1]],
        "tables": [[0, 1], [0, 1]],
        "stream": 0,
    }
    with pytest.raises(UpdateCodecError, match="table 0 is used by no tensor"):
        unpack(coded_blob(header, table_bytes(1) * 2), name="p")


def test_zip_bomb_header_is_refused_without_inflating_it(
    peak_memory: Callable[[], int],
) -> None:
    blob = zip_bomb_blob(16 << 20)
    assert len(blob) < 64 << 10
    tracemalloc.reset_peak()
    with pytest.raises(UpdateCodecError, match="decompresses to more than"):
        unpack(blob, name="p")
    assert peak_memory() < 8 << 20  # the header would be 16 MB


def test_headers_up_to_the_cap_are_read_and_truncated_ones_refused() -> None:
    empty = b'{"keys": [], "tables": [], "stream": 0}'
    assert unpack(coded_blob(empty + b" " * (MAX_HEADER_BYTES - len(empty))), name="p") == []
    with pytest.raises(UpdateCodecError, match="more than"):
        unpack(coded_blob(empty + b" " * (MAX_HEADER_BYTES - len(empty) + 1)), name="p")
    head = zlib.compress(empty)[:-6]
    body = b"FRUP\x01" + struct.pack("<I", len(head)) + head
    with pytest.raises(UpdateCodecError, match="incomplete"):
        unpack(body + struct.pack("<I", zlib.crc32(body)), name="p")
