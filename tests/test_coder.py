"""Tests of the native entropy coder (fedrs.coder): round trips, escapes, the stream format
against an independent pure-Python decoder, a golden stream, corrupted streams, bad tables."""

from __future__ import annotations

import bisect
import math
import os
import pickle
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrs import coder
from fedrs.coder import CdfTableError, CdfTables, CoderError, CorruptStreamError
from fedrs.errors import InputError

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "coder_golden.bin"
INT32_MIN = np.iinfo(np.int32).min
INT32_MAX = np.iinfo(np.int32).max

Tables = tuple[np.ndarray, np.ndarray, np.ndarray]


# ------------------------------------------------------------------------------------------------
# Helpers


def _erfc(x: np.ndarray) -> np.ndarray:
    """Elementwise complementary error function (math.erfc; no scipy needed)."""
    return np.frompyfunc(math.erfc, 1, 1)(x).astype(np.float64)


def gaussian_tables(scales: np.ndarray, tail_mass: float = 1e-9) -> Tables:
    """Tables built like CompressAI's GaussianConditional.update()."""

    multiplier = -NormalDist().inv_cdf(tail_mass / 2)
    center = np.ceil(scales * multiplier).astype(np.int64)
    lengths = 2 * center + 1
    width = int(lengths.max())
    samples = np.abs(np.arange(width)[None, :] - center[:, None]).astype(np.float64)
    upper = 0.5 * _erfc(-((0.5 - samples) / scales[:, None]) / np.sqrt(2))
    lower = 0.5 * _erfc(-((-0.5 - samples) / scales[:, None]) / np.sqrt(2))
    cdfs, cdf_lengths = coder.cdf_tables(upper - lower, lengths, 2 * lower[:, 0])
    return cdfs, cdf_lengths, (-center).astype(np.int32)


def tables_of(rows: list[list[int]], offsets: list[int]) -> Tables:
    """(cdfs, cdf_lengths, offsets) from CDF rows of any lengths."""
    width = max(len(r) for r in rows)
    cdfs = np.zeros((len(rows), width), np.int32)
    for t, r in enumerate(rows):
        cdfs[t, : len(r)] = r
    return cdfs, np.array([len(r) for r in rows], np.int32), np.array(offsets, np.int32)


@pytest.fixture(scope="module")
def gauss() -> Tables:
    return gaussian_tables(np.exp(np.linspace(np.log(0.11), np.log(40.0), 24)))


def sample(
    tables: Tables, n: int, seed: int, escape_rate: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Random indexes and symbols drawn from the tables' own distributions (plus escapes)."""
    cdfs, lengths, offsets = tables
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(lengths), n).astype(np.int32)
    u = rng.integers(0, 65536, n)
    # Inverse CDF per symbol: count entries <= u among the regular symbols' starts.
    rows = cdfs[idx]
    cols = np.arange(cdfs.shape[1])[None, :]
    valid = cols < (lengths[idx] - 1)[:, None]
    k = ((rows <= u[:, None]) & valid).sum(1) - 1
    k = np.minimum(k, lengths[idx] - 3)  # the escape interval maps to the last regular symbol
    sym = (offsets[idx] + k).astype(np.int64)
    esc = rng.random(n) < escape_rate
    sym[esc] = rng.integers(INT32_MIN, INT32_MAX, int(esc.sum()), endpoint=True)
    return sym.astype(np.int32), idx


def round_trip(symbols: np.ndarray, indexes: np.ndarray, tables: Tables) -> bytes:
    stream = coder.encode_with_indexes(symbols, indexes, *tables)
    decoded = coder.decode_with_indexes(stream, indexes, *tables)
    assert decoded.dtype == np.int32
    np.testing.assert_array_equal(decoded, symbols)
    return stream


def lanes(m: int) -> int:
    return 8 if m >= 1 << 15 else 4 if m >= 1 << 14 else 2 if m >= 1 << 13 else 1


def parse_header(stream: bytes) -> tuple[int, list[tuple[int, int]], int]:
    """Independent parser of the documented header: (count, [(words, escape bytes)], size)."""
    assert stream[:2] == b"FR"
    assert stream[2] == coder.FORMAT_VERSION
    pos = 3

    def varint() -> int:
        nonlocal pos
        value, shift = 0, 0
        while True:
            b = stream[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value

    count = varint()
    chunks = 0 if count == 0 else max(1, count >> 21)
    table = [(varint(), varint()) for _ in range(chunks)]
    return count, table, pos


class _Bits:
    """Least-significant-bit-first reader of the escape bytes."""

    def __init__(self, data: bytes) -> None:
        self.value = int.from_bytes(data, "little")
        self.pos = 0

    def read(self, n: int) -> int:
        out = (self.value >> self.pos) & ((1 << n) - 1)
        self.pos += n
        return out


def reference_decode(
    stream: bytes, indexes: np.ndarray, cdfs: np.ndarray, lengths: np.ndarray, offsets: np.ndarray
) -> list[int]:
    """Pure-Python decoder written from the format documentation only."""
    count, table, pos = parse_header(stream)
    assert count == len(indexes)
    assert zlib.crc32(stream[:-4]) == int.from_bytes(stream[-4:], "little")
    out: list[int] = []
    chunks = len(table)
    for c, (num_words, num_esc) in enumerate(table):
        lo, hi = c * count // chunks, (c + 1) * count // chunks
        k = lanes(hi - lo)
        words = struct.unpack_from(f"<{num_words}I", stream, pos)
        pos += 4 * num_words
        reader = _Bits(stream[pos : pos + num_esc])
        pos += num_esc
        x = [words[2 * j] | words[2 * j + 1] << 32 for j in range(k)]
        wp = 2 * k
        bits = reader.read

        for i in range(hi - lo):
            t = int(indexes[lo + i])
            n = int(lengths[t]) - 2
            cdf = [int(v) for v in cdfs[t, : n + 2]]
            j = i % k
            slot = x[j] & 0xFFFF
            s = bisect.bisect_right(cdf, slot) - 1
            x[j] = (cdf[s + 1] - cdf[s]) * (x[j] >> 16) + slot - cdf[s]
            if x[j] < 1 << 31:
                x[j] = (x[j] << 32) | words[wp]
                wp += 1
            if s < n:
                out.append(int(offsets[t]) + s)
                continue
            nibbles = bits(4)
            if nibbles == 15:
                out.append(int(offsets[t]) + bits(16))
                continue
            raw = bits(4 * nibbles)
            v = -(raw + 1) // 2 if raw & 1 else n + raw // 2
            out.append(int(offsets[t]) + v)
        assert all(v == 1 << 31 for v in x)
        assert wp == num_words
        assert reader.pos <= 8 * num_esc < reader.pos + 8
    assert pos + 4 == len(stream)
    return out


# ------------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("n", [0, 1, 2, 7, 8, 1000, 8191, 8192, 16384, 32767, 32768, 100_003])
def test_round_trip_sizes(gauss: Tables, n: int) -> None:
    symbols, indexes = sample(gauss, n, seed=n)
    stream = round_trip(symbols, indexes, gauss)
    count, table, _ = parse_header(stream)
    assert count == n
    assert len(table) == (0 if n == 0 else 1)


def test_empty_input_is_a_tiny_valid_stream(gauss: Tables) -> None:
    empty = np.zeros(0, np.int32)
    stream = coder.encode_with_indexes(empty, empty, *gauss)
    assert stream[:3] == b"FR\x01"
    assert len(stream) == 8  # magic, version, count 0, CRC
    assert coder.decode_with_indexes(stream, empty, *gauss).shape == (0,)
    assert coder.stream_symbol_count(stream) == 0


def test_one_symbol(gauss: Tables) -> None:
    for value in (0, 3, -1, INT32_MAX, INT32_MIN):
        round_trip(np.array([value], np.int32), np.array([5], np.int32), gauss)


def test_escapes_any_int32_both_signs(gauss: Tables) -> None:
    rng = np.random.default_rng(1)
    extremes = [INT32_MIN, INT32_MIN + 1, -(2**30), -1000, -41, 41, 1000, 2**30, INT32_MAX - 1]
    values = np.array([*extremes, INT32_MAX], np.int64)
    values = np.concatenate([values, rng.integers(INT32_MIN, INT32_MAX, 5000, endpoint=True)])
    symbols = values.astype(np.int32)
    indexes = rng.integers(0, len(gauss[1]), len(symbols)).astype(np.int32)
    stream = round_trip(symbols, indexes, gauss)
    count, table, _ = parse_header(stream)
    assert count == len(symbols) and table[0][1] > 0  # escape bytes present


def test_escapes_mixed_with_regular_symbols_in_all_lanes(gauss: Tables) -> None:
    symbols, indexes = sample(gauss, 70_000, seed=3, escape_rate=0.02)
    stream = round_trip(symbols, indexes, gauss)
    assert reference_decode(stream, indexes, *gauss) == symbols.tolist()


def test_escape_just_outside_the_table_is_cheap(gauss: Tables) -> None:
    _, lengths, offsets = gauss
    t = 3
    n = int(lengths[t]) - 2
    edge = np.array([offsets[t] + n] * 64, np.int32)  # first value past the table
    far = np.array([offsets[t] + n + 10**6] * 64, np.int32)
    idx = np.full(64, t, np.int32)
    near_size = len(round_trip(edge, idx, gauss))
    far_size = len(round_trip(far, idx, gauss))
    assert near_size < far_size


def test_offsets_at_the_ends_of_int32() -> None:
    tables = tables_of(
        [[0, 100, 65000, 65536], [0, 40000, 65535, 65536], [0, 30000, 65536]],
        [INT32_MAX - 1, INT32_MIN, INT32_MAX],
    )
    symbols = np.array(
        [INT32_MAX - 1, INT32_MAX, INT32_MIN, INT32_MIN + 1, INT32_MAX, 0, -5], np.int32
    )
    indexes = np.array([0, 0, 1, 1, 2, 2, 0], np.int32)
    stream = round_trip(symbols, indexes, tables)
    assert reference_decode(stream, indexes, *tables) == symbols.tolist()


def test_offset_plus_length_beyond_int32_is_rejected() -> None:
    tables = tables_of([[0, 100, 65000, 65536]], [INT32_MAX])
    with pytest.raises(CdfTableError, match="int32"):
        coder.encode_with_indexes(np.zeros(1, np.int32), np.zeros(1, np.int32), *tables)


def test_zero_frequency_symbols_are_escaped() -> None:
    tables = tables_of([[0, 30000, 30000, 30000, 65000, 65000, 65536]], [-2])
    symbols = np.array([-2, -1, 0, 1, 2, 3, -3, 99, -1, 0], np.int32)
    indexes = np.zeros(len(symbols), np.int32)
    stream = round_trip(symbols, indexes, tables)
    assert reference_decode(stream, indexes, *tables) == symbols.tolist()


def test_table_with_only_the_escape_symbol() -> None:
    tables = tables_of([[0, 65536], [0, 1, 65536]], [7, 0])
    symbols = np.array([7, 8, INT32_MIN, 0, 0, 5], np.int32)
    indexes = np.array([0, 0, 0, 1, 0, 1], np.int32)
    round_trip(symbols, indexes, tables)


def test_decode_keeps_the_shape_of_indexes(gauss: Tables) -> None:
    symbols, indexes = sample(gauss, 240, seed=9)
    stream = coder.encode_with_indexes(symbols.reshape(4, 6, 10), indexes.reshape(4, 6, 10), *gauss)
    decoded = coder.decode_with_indexes(stream, indexes.reshape(4, 6, 10), *gauss)
    assert decoded.shape == (4, 6, 10)
    np.testing.assert_array_equal(decoded.reshape(-1), symbols)


def test_other_integer_dtypes_are_converted(gauss: Tables) -> None:
    symbols, indexes = sample(gauss, 500, seed=4)
    wide = [a.astype(np.int64) for a in gauss]
    stream = coder.encode_with_indexes(symbols.astype(np.int64), indexes.astype(np.uint16), *wide)
    assert stream == coder.encode_with_indexes(symbols, indexes, *gauss)
    assert coder.decode_with_indexes(
        bytearray(stream), indexes.astype(np.int64), *wide
    ).tolist() == (symbols.tolist())


def test_prepared_tables_match_and_pickle(gauss: Tables) -> None:
    symbols, indexes = sample(gauss, 20_000, seed=5, escape_rate=0.01)
    tables = CdfTables(*gauss)
    assert tables.num_tables == len(gauss[1])
    stream = tables.encode(symbols, indexes)
    assert stream == coder.encode_with_indexes(symbols, indexes, *gauss)
    clone = pickle.loads(pickle.dumps(tables))
    np.testing.assert_array_equal(clone.decode(stream, indexes), symbols)
    np.testing.assert_array_equal(tables.decode(stream, indexes), symbols)


def test_ten_million_symbols_in_chunks_and_threads() -> None:
    scales = np.exp(np.linspace(np.log(0.11), np.log(256), 64))
    tables = gaussian_tables(scales)
    rng = np.random.default_rng(10)
    n = 10_000_000
    s = np.exp(rng.uniform(np.log(0.11), np.log(20), n))
    indexes = np.searchsorted(scales, s).astype(np.int32)
    half = -tables[2][indexes]
    symbols = np.clip(np.rint(rng.normal(0, s)), -half, half).astype(np.int32)
    stream = coder.encode_with_indexes(symbols, indexes, *tables)
    count, table, header = parse_header(stream)
    assert count == n and len(table) == 4  # n >> 21 == 4 chunks
    assert header + sum(4 * w + e for w, e in table) + 4 == len(stream)
    assert zlib.crc32(stream[:-4]) == int.from_bytes(stream[-4:], "little")
    assert coder.encode_with_indexes(symbols, indexes, *tables, threads=2) == stream
    np.testing.assert_array_equal(coder.decode_with_indexes(stream, indexes, *tables), symbols)
    np.testing.assert_array_equal(
        coder.decode_with_indexes(stream, indexes, *tables, threads=2), symbols
    )
    # Size: within 0.01 % (plus the header and CRC) of the ideal code length of the tables.
    cdfs, _, offsets = tables
    k = symbols.astype(np.int64) - offsets[indexes]
    freq = cdfs[indexes, k + 1] - cdfs[indexes, k]
    ideal_bytes = -np.log2(freq / 65536.0).sum() / 8
    assert len(stream) - header - 4 <= ideal_bytes * 1.0001


@settings(max_examples=150, deadline=None)
@given(
    pmfs=st.lists(
        st.lists(st.floats(0.0, 1.0, width=32), min_size=1, max_size=40), min_size=1, max_size=5
    ),
    tails=st.lists(st.floats(2.0**-20, 1.0, width=32), min_size=5, max_size=5),
    offsets=st.lists(st.integers(-(2**31), 2**31 - 100), min_size=5, max_size=5),
    data=st.data(),
)
def test_round_trip_property(
    pmfs: list[list[float]],
    tails: list[float],
    offsets: list[int],
    data: st.DataObject,
) -> None:
    num = len(pmfs)
    width = max(len(p) for p in pmfs)
    rows = np.zeros((num, width), np.float32)
    for t, p in enumerate(pmfs):
        rows[t, : len(p)] = p
        if sum(p) < 1e-3:
            rows[t, 0] = 1.0
    lengths = np.array([len(p) for p in pmfs], np.int32)
    cdfs, cdf_lengths = coder.cdf_tables(rows, lengths, np.array(tails[:num], np.float32))
    offs = np.array(offsets[:num], np.int32)
    n = data.draw(st.integers(0, 300))
    indexes = np.array(
        data.draw(st.lists(st.integers(0, num - 1), min_size=n, max_size=n)), np.int32
    )
    near = st.integers(-45, 45)
    anywhere = st.integers(-(2**31), 2**31 - 1)
    picks = data.draw(st.lists(st.tuples(st.booleans(), near, anywhere), min_size=n, max_size=n))
    symbols = np.array(
        [
            anywhere_value if far else min(max(int(offs[t]) + delta, -(2**31)), 2**31 - 1)
            for t, (far, delta, anywhere_value) in zip(indexes, picks, strict=True)
        ],
        np.int64,
    ).astype(np.int32)
    tables = (cdfs, cdf_lengths, offs)
    stream = round_trip(symbols, indexes, tables)
    assert reference_decode(stream, indexes, *tables) == symbols.tolist()


# ------------------------------------------------------------------------------------------------
# Golden stream: integer-only inputs, so they are the same on every platform


def splitmix(seed: int, n: int) -> np.ndarray:
    """n pseudo-random uint64 values (splitmix64 of seed * 2**32 + i), numpy-version proof."""
    with np.errstate(over="ignore"):
        x = np.uint64(seed) * np.uint64(2**32) + np.arange(n, dtype=np.uint64)
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def golden_inputs() -> tuple[np.ndarray, np.ndarray, Tables]:
    """The deterministic inputs of tests/data/coder_golden.bin."""
    rows: list[list[int]] = []
    offsets: list[int] = []
    for t, (half, decay) in enumerate([(1, 3), (3, 2), (8, 1), (20, 1), (60, 1)]):
        weights = [max(1, 4096 >> min(30, decay * abs(k))) for k in range(-half, half + 1)]
        weights.append(1)  # escape
        total = sum(weights)
        freqs = [max(1, w * 65536 // total) for w in weights]
        freqs[half] += 65536 - sum(freqs)
        rows.append([0, *np.cumsum(freqs).tolist()])
        offsets.append(-half + t)
    rows.append([0, 30000, 30000, 30000, 65000, 65000, 65536])  # zero frequencies
    offsets.append(-2)
    rows.append([0, 65536])  # escape only
    offsets.append(INT32_MAX)
    tables = tables_of(rows, offsets)
    n = 33_000  # 8 lanes
    r = splitmix(2024, 3 * n)
    indexes = (r[:n] % np.uint64(len(rows))).astype(np.int32)
    cdfs, lengths, offs = tables
    u = (r[n : 2 * n] % np.uint64(65536)).astype(np.int64)
    k = np.array(
        [
            np.searchsorted(cdfs[t, : lengths[t] - 1], v, side="right") - 1
            for t, v in zip(indexes, u, strict=True)
        ]
    )
    symbols = offs[indexes].astype(np.int64) + np.minimum(k, lengths[indexes] - 3)
    far = r[2 * n :]
    escape = (far % np.uint64(64)) == 0
    values = (far >> np.uint64(32)).astype(np.int64) - 2**31
    symbols = np.where(escape, values, symbols)
    symbols[:4] = [INT32_MIN, INT32_MAX, 0, -1]
    return symbols.astype(np.int32), indexes, tables


def test_golden_stream() -> None:
    symbols, indexes, tables = golden_inputs()
    stream = coder.encode_with_indexes(symbols, indexes, *tables)
    if os.environ.get("FEDRS_REGEN_GOLDEN") == "1":
        GOLDEN.write_bytes(stream)
    golden = GOLDEN.read_bytes()
    assert stream == golden, "encoder output changed: the stream format or coder is not stable"
    np.testing.assert_array_equal(coder.decode_with_indexes(golden, indexes, *tables), symbols)
    assert reference_decode(golden, indexes, *tables) == symbols.tolist()


# ------------------------------------------------------------------------------------------------
# Damaged streams and mismatched arguments


@pytest.fixture(scope="module")
def small() -> tuple[bytes, np.ndarray, Tables]:
    tables = gaussian_tables(np.array([0.3, 1.0, 4.0, 15.0]))
    symbols, indexes = sample(tables, 300, seed=11, escape_rate=0.03)
    stream = round_trip(symbols, indexes, tables)
    return stream, indexes, tables


def test_every_truncation_is_rejected(
    small: tuple[bytes, np.ndarray, Tables],
) -> None:
    stream, indexes, tables = small
    for size in range(len(stream)):
        with pytest.raises(CorruptStreamError):
            coder.decode_with_indexes(stream[:size], indexes, *tables)


def test_extended_streams_are_rejected(
    small: tuple[bytes, np.ndarray, Tables],
) -> None:
    stream, indexes, tables = small
    for tail in (b"\x00", b"\x01", b"\x00" * 4, stream[-8:], stream):
        with pytest.raises(CorruptStreamError):
            coder.decode_with_indexes(stream + tail, indexes, *tables)
        with pytest.raises(CorruptStreamError):
            coder.decode_with_indexes(tail + stream, indexes, *tables)


def _flipped(data: bytes, bits: Iterable[int]) -> bytes:
    """``data`` with each of ``bits`` inverted in turn (bit ``b`` is bit ``b % 8`` of byte
    ``b // 8``)."""
    damaged = bytearray(data)
    for bit in bits:
        damaged[bit // 8] ^= 1 << (bit % 8)
    return bytes(damaged)


def test_every_single_bit_flip_is_rejected(
    small: tuple[bytes, np.ndarray, Tables],
) -> None:
    # CRC-32 detects every single-bit error (and the header fields are checked before it).
    stream, indexes, tables = small
    for bit in range(8 * len(stream)):
        with pytest.raises(CorruptStreamError):
            coder.decode_with_indexes(_flipped(stream, [bit]), indexes, *tables)


def test_random_multi_bit_flips_are_rejected(
    small: tuple[bytes, np.ndarray, Tables],
) -> None:
    # CRC-32 (IEEE) detects every error of up to 4 bits in a message shorter than 2974 bits
    # (Koopman's tables); more flips pass it with probability 2**-32 per trial, and then the
    # decoder's own checks (next test) still stand.
    stream, indexes, tables = small
    assert 8 * len(stream) < 2974
    rng = np.random.default_rng(12)
    for _ in range(3000):
        bits = rng.choice(8 * len(stream), size=int(rng.integers(2, 12)), replace=False)
        with pytest.raises(CorruptStreamError):
            coder.decode_with_indexes(_flipped(stream, bits), indexes, *tables)


def test_corruption_behind_a_valid_crc_is_caught_or_decodes_canonically(
    small: tuple[bytes, np.ndarray, Tables],
) -> None:
    # With the CRC recomputed only the decoder's own checks stand: every lane must end in its
    # initial state, every word and escape bit be used, every field be canonical.  Damaged rANS
    # words are then (all but certainly) rejected; a damaged escape value may remain a valid
    # escape of another value.  Whatever decodes is a valid stream of other symbols and must
    # re-encode to exactly the same bytes.
    stream, indexes, tables = small
    _, table, header = parse_header(stream)
    words_end = header + 4 * table[0][0]
    rng = np.random.default_rng(13)
    outcomes = {"words": [0, 0], "escapes": [0, 0]}  # [rejected, accepted]
    for trial in range(3000):
        region = "words" if trial % 2 else "escapes"
        lo, hi = (header, words_end) if region == "words" else (words_end, len(stream) - 4)
        bits = [int(rng.integers(8 * lo, 8 * hi)) for _ in range(int(rng.integers(1, 4)))]
        damaged = _flipped(stream[:-4], bits)
        candidate = damaged + zlib.crc32(damaged).to_bytes(4, "little")
        try:
            decoded = coder.decode_with_indexes(candidate, indexes, *tables)
        except CorruptStreamError:
            outcomes[region][0] += 1
            continue
        outcomes[region][1] += 1
        assert coder.encode_with_indexes(decoded, indexes, *tables) == candidate
    assert outcomes["words"][1] == 0
    assert outcomes["escapes"][0] > 0


def test_wrong_symbol_count_is_rejected(gauss: Tables) -> None:
    symbols, indexes = sample(gauss, 1000, seed=14)
    stream = coder.encode_with_indexes(symbols, indexes, *gauss)
    for n in (0, 999, 1001):
        with pytest.raises(CorruptStreamError, match="holds 1000 symbols"):
            coder.decode_with_indexes(stream, np.zeros(n, np.int32), *gauss)


def test_wrong_tables_or_indexes_are_rejected(gauss: Tables) -> None:
    symbols, indexes = sample(gauss, 5000, seed=15)
    stream = coder.encode_with_indexes(symbols, indexes, *gauss)
    other = gaussian_tables(np.exp(np.linspace(np.log(0.2), np.log(30.0), 24)))
    with pytest.raises(CorruptStreamError):
        coder.decode_with_indexes(stream, indexes, *other)
    shifted = (indexes + 1) % len(gauss[1])
    with pytest.raises(CorruptStreamError):
        coder.decode_with_indexes(stream, shifted.astype(np.int32), *gauss)


def test_not_a_stream(gauss: Tables) -> None:
    idx = np.zeros(3, np.int32)
    for junk in (b"", b"FR", b"PK\x03\x04" + b"\x00" * 20, b"FR\x02\x03" + b"\x00" * 8):
        with pytest.raises(CorruptStreamError):
            coder.decode_with_indexes(junk, idx, *gauss)
    with pytest.raises(CoderError, match="bytes"):
        coder.decode_with_indexes("FR", idx, *gauss)  # type: ignore[arg-type]


def test_errors_are_typed_value_errors(gauss: Tables) -> None:
    with pytest.raises(CorruptStreamError) as info:
        coder.decode_with_indexes(b"junk", np.zeros(1, np.int32), *gauss)
    assert isinstance(info.value, ValueError) and isinstance(info.value, InputError)


def test_bad_arguments(gauss: Tables) -> None:
    sym = np.zeros(4, np.int32)
    idx = np.zeros(4, np.int32)
    with pytest.raises(CoderError, match="numpy"):
        coder.encode_with_indexes([0, 0], idx, *gauss)  # type: ignore[arg-type]
    with pytest.raises(CoderError, match="integer dtype"):
        coder.encode_with_indexes(sym.astype(np.float32), idx, *gauss)
    with pytest.raises(CoderError, match="outside int32"):
        coder.encode_with_indexes(np.array([2**40], np.int64), idx[:1], *gauss)
    with pytest.raises(CoderError, match="entries but indexes"):
        coder.encode_with_indexes(sym, idx[:3], *gauss)
    for bad in (-1, len(gauss[1])):
        with pytest.raises(CoderError, match="not a table index"):
            coder.encode_with_indexes(sym, np.array([0, 0, bad, 0], np.int32), *gauss)
    stream = coder.encode_with_indexes(sym, idx, *gauss)
    with pytest.raises(CoderError, match="not a table index"):
        coder.decode_with_indexes(stream, np.array([0, 0, 0, 99], np.int32), *gauss)
    with pytest.raises(CoderError, match="threads"):
        coder.encode_with_indexes(sym, idx, *gauss, threads=0)


# ------------------------------------------------------------------------------------------------
# Malformed tables


@pytest.mark.parametrize(
    ("rows", "lengths", "match"),
    [
        ([[0, 100, 50, 65536]], None, "decreases"),
        ([[0, 100, 200, 65535]], None, "65536"),
        ([[1, 100, 200, 65536]], None, "start at 0"),
        ([[0, 100, 65536, 65536]], None, "escape"),
        ([[0, 65536, 0, 0]], [1], "outside"),
        ([[0, 65536, 0, 0]], [5], "outside"),
        ([[0, 65536, 0, 0]], [-3], "outside"),
        ([[0, 100, 70000, 65536]], None, "decreases"),
        ([[0, -5, 100, 65536]], None, "decreases"),
    ],
)
def test_malformed_tables(rows: list[list[int]], lengths: list[int] | None, match: str) -> None:
    cdfs, cdf_lengths, offsets = tables_of(rows, [0] * len(rows))
    if lengths is not None:
        cdf_lengths = np.array(lengths, np.int32)
    sym = np.zeros(2, np.int32)
    with pytest.raises(CdfTableError, match=match):
        coder.encode_with_indexes(sym, sym, cdfs, cdf_lengths, offsets)
    with pytest.raises(CdfTableError, match=match):
        coder.decode_with_indexes(b"FR\x01\x00" + b"\x00" * 4, sym[:0], cdfs, cdf_lengths, offsets)
    with pytest.raises(CdfTableError, match=match):
        CdfTables(cdfs, cdf_lengths, offsets)


def test_table_longer_than_the_coder_allows() -> None:
    n = 65536  # 65536 regular symbols cannot all have a non-zero frequency
    cdfs = np.concatenate([np.arange(n + 1), [65536]]).astype(np.int32)[None, :]
    with pytest.raises(CdfTableError, match="outside"):
        CdfTables(cdfs, np.array([n + 2], np.int32), np.zeros(1, np.int32))


def test_table_shapes() -> None:
    cdfs, lengths, offsets = tables_of([[0, 100, 65536]], [0])
    with pytest.raises(CoderError, match="2-D"):
        CdfTables(cdfs[0], lengths, offsets)
    with pytest.raises(CdfTableError, match="rows"):
        CdfTables(cdfs, np.array([3, 3], np.int32), offsets)
    with pytest.raises(CdfTableError, match="rows"):
        CdfTables(cdfs, lengths, np.zeros(2, np.int32))


# ------------------------------------------------------------------------------------------------
# pmf -> quantised CDF


def compressai_pmf_to_quantized_cdf(pmf: list[float], precision: int) -> list[int] | None:
    """CompressAI's pmf_to_quantized_cdf (cpp_exts/ops/ops.cpp), transcribed literally; None
    where it refuses the pmf (no probability left after rounding)."""
    scale = np.float32(1 << precision)
    # float32 product, then std::round (halves away from zero; exact in float64 here).
    cdf = [0] + [int(np.floor(float(np.float32(p) * scale) + 0.5)) for p in pmf]
    total = sum(cdf)
    if total == 0:
        return None
    cdf = [((1 << precision) * c) // total for c in cdf]
    for i in range(1, len(cdf)):
        cdf[i] += cdf[i - 1]
    cdf[-1] = 1 << precision
    for i in range(len(cdf) - 1):
        if cdf[i] == cdf[i + 1]:
            best_freq, best_steal = 2**63, -1
            for j in range(len(cdf) - 1):
                freq = cdf[j + 1] - cdf[j]
                if 1 < freq < best_freq:
                    best_freq, best_steal = freq, j
            if best_steal < i:
                for j in range(best_steal + 1, i + 1):
                    cdf[j] -= 1
            else:
                for j in range(i + 1, best_steal + 1):
                    cdf[j] += 1
    return cdf


@settings(max_examples=200, deadline=None)
@given(
    pmf=st.lists(
        st.one_of(st.floats(0.0, 1.0, width=32), st.just(0.0), st.floats(0.0, 2.0**-14, width=32)),
        min_size=1,
        max_size=60,
    ),
    precision=st.sampled_from([8, 12, 16]),
)
def test_pmf_to_quantized_cdf_matches_compressai(pmf: list[float], precision: int) -> None:
    expected = compressai_pmf_to_quantized_cdf(pmf, precision)
    if expected is None or len(pmf) > 1 << precision:
        with pytest.raises(CoderError):
            coder.pmf_to_quantized_cdf(np.array(pmf, np.float32), precision)
        return
    got = coder.pmf_to_quantized_cdf(np.array(pmf, np.float32), precision)
    assert got.tolist() == expected
    assert (np.diff(got) >= 1).all()


def test_pmf_to_quantized_cdf_gaussian_tails() -> None:
    tables = gaussian_tables(np.array([0.11, 1.0, 256.0]))
    cdfs, lengths, _ = tables
    for t in range(3):
        row = cdfs[t, : lengths[t]]
        assert row[0] == 0 and row[-1] == 65536
        assert (np.diff(row) >= 1).all()
    assert lengths.tolist()[0] == 2 * 1 + 1 + 2  # scale 0.11: symbols -1, 0, 1 and the escape


def test_pmf_to_quantized_cdf_batch_equals_rows() -> None:
    rng = np.random.default_rng(16)
    pmfs = rng.random((20, 50)).astype(np.float32) ** 6
    lengths = rng.integers(1, 51, 20)
    batch = coder.pmf_to_quantized_cdf(pmfs, lengths=lengths)
    assert batch.shape == (20, 51)
    for b in range(20):
        row = coder.pmf_to_quantized_cdf(pmfs[b, : lengths[b]])
        assert batch[b, : lengths[b] + 1].tolist() == row.tolist()
        assert not batch[b, lengths[b] + 1 :].any()


def test_cdf_tables_convention() -> None:
    pmfs = np.array([[0.25, 0.5, 0.25, 0.0], [0.1, 0.2, 0.3, 0.3]], np.float32)
    cdfs, lengths = coder.cdf_tables(pmfs, np.array([3, 4]), np.array([1e-3, 0.1]))
    assert lengths.tolist() == [5, 6]
    assert cdfs.shape == (2, 6)
    assert (
        cdfs[0, :5].tolist()
        == coder.pmf_to_quantized_cdf(np.array([0.25, 0.5, 0.25, 1e-3], np.float32)).tolist()
    )
    assert (
        cdfs[1].tolist()
        == coder.pmf_to_quantized_cdf(np.array([0.1, 0.2, 0.3, 0.3, 0.1], np.float32)).tolist()
    )


@pytest.mark.parametrize(
    ("pmf", "precision", "match"),
    [
        ([0.5, -0.1], 16, "negative"),
        ([0.5, float("nan")], 16, "negative or not finite"),
        ([0.5, float("inf")], 16, "not finite"),
        ([0.0, 0.0], 16, "no non-zero"),
        ([1e-9, 1e-9], 16, "no non-zero"),
        ([0.1] * 5, 2, "more than"),
        ([0.5], 0, "precision"),
        ([0.5], 17, "precision"),
        ([], 16, "empty|outside"),
    ],
)
def test_pmf_to_quantized_cdf_errors(pmf: list[float], precision: int, match: str) -> None:
    with pytest.raises(CoderError, match=match):
        coder.pmf_to_quantized_cdf(np.array(pmf, np.float32), precision)


# ------------------------------------------------------------------------------------------------
# Incremental decoding


def _decode_in_calls(
    stream: bytes, indexes: np.ndarray, tables: Tables, sizes: list[int]
) -> np.ndarray:
    """The stream through a StreamDecoder, in calls of the given sizes (repeated) and finish()."""
    decoder = coder.StreamDecoder(stream)
    prepared = CdfTables(*tables)
    parts, done, call = [], 0, 0
    while done < len(indexes):
        n = sizes[call % len(sizes)]
        parts.append(decoder.decode(prepared, indexes[done : done + n]))
        done, call = done + n, call + 1
    decoder.finish()
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def test_stream_decoder_in_all_lanes_and_with_escapes(gauss: Tables) -> None:
    for n in (5, 9000, 20000, 40000):  # 1, 2, 4 and 8 lanes
        symbols, indexes = sample(gauss, n, seed=n, escape_rate=0.02)
        stream = coder.encode_with_indexes(symbols, indexes, *gauss)
        got = _decode_in_calls(stream, indexes, gauss, [1, 7, 333])
        assert np.array_equal(got, symbols)


def test_stream_decoder_accepts_exactly_what_decode_accepts(
    small: tuple[bytes, np.ndarray, Tables],
) -> None:
    # damage behind a recomputed CRC: the incremental decoder runs the same checks
    stream, indexes, tables = small
    rng = np.random.default_rng(21)
    for _ in range(400):
        damaged = _flipped(stream[:-4], [int(rng.integers(8 * 3, 8 * (len(stream) - 4)))])
        candidate = damaged + zlib.crc32(damaged).to_bytes(4, "little")
        try:
            whole = coder.decode_with_indexes(candidate, indexes, *tables)
        except CorruptStreamError:
            with pytest.raises(CorruptStreamError):
                _decode_in_calls(candidate, indexes, tables, [13])
            continue
        assert np.array_equal(_decode_in_calls(candidate, indexes, tables, [13]), whole)
