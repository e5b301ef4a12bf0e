"""Benchmark of the native entropy coder against constriction, on the same data in the same run.

Workload (CompressAI's GaussianConditional): 64 Gaussian tables for the scales
``exp(linspace(ln 0.11, ln 256, 64))``, tail mass 1e-9, 16-bit quantised CDFs with an escape
entry; N symbols ``y = round(N(0, s))`` with ``s`` log-uniform in [0.11, 20], each coded with the
table of the smallest tabulated scale >= s (clipped into that table, so no escapes).

Measured, from numpy arrays to bytes and back (best and median of the repeats):

* fedrs: ``fedrs.coder.encode_with_indexes`` / ``decode_with_indexes`` (tables validated and
  prepared inside every call), on 1 thread and on ``--threads`` threads;
* constriction's ``AnsCoder`` with ``Categorical`` models of the same 16-bit tables: one call
  per table on the symbols grouped by table, timed end to end (grouping by a radix argsort, and
  putting the decoded symbols back in order, included) and coding calls only;
* constriction's ``AnsCoder`` with a vectorised ``QuantizedGaussian`` family (mean 0, the
  table's scale), which codes the symbols in their order.

The ratios compare fedrs with the peer's best end-to-end figure (the same task: numpy arrays
in, bytes, numpy arrays out); the ratios to the coding-only figures are printed too.

Every round trip is verified.  Sizes are compared with the ideal code length of the 16-bit
tables, sum of -log2(freq / 65536).  The last line printed is one JSON object with the figures.

    python bench/coder.py [--symbols 10000000] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from statistics import NormalDist
from typing import Any

import numpy as np

from fedrs import coder

SCALES = np.exp(np.linspace(math.log(0.11), math.log(256.0), 64))
TAIL_MASS = 1e-9


def _erfc(x: np.ndarray) -> np.ndarray:
    """Elementwise complementary error function (math.erfc; no scipy needed)."""
    return np.frompyfunc(math.erfc, 1, 1)(x).astype(np.float64)


def gaussian_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(cdfs, cdf_lengths, offsets, centers) as CompressAI's GaussianConditional.update()."""
    multiplier = -NormalDist().inv_cdf(TAIL_MASS / 2)
    center = np.ceil(SCALES * multiplier).astype(np.int64)
    lengths = 2 * center + 1
    samples = np.abs(np.arange(int(lengths.max()))[None, :] - center[:, None]).astype(np.float64)
    upper = 0.5 * _erfc(-((0.5 - samples) / SCALES[:, None]) / math.sqrt(2))
    lower = 0.5 * _erfc(-((-0.5 - samples) / SCALES[:, None]) / math.sqrt(2))
    cdfs, cdf_lengths = coder.cdf_tables(upper - lower, lengths, 2 * lower[:, 0])
    return cdfs, cdf_lengths, (-center).astype(np.int32), center


def workload(n: int, seed: int, center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    s = np.exp(rng.uniform(math.log(0.11), math.log(20.0), n))
    indexes = np.searchsorted(SCALES, s, side="left").astype(np.int32)
    y = np.rint(rng.normal(0.0, s))
    symbols = np.clip(y, -center[indexes], center[indexes]).astype(np.int32)
    return symbols, indexes


def timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, list[float]]:
    times = []
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, times


def rate(n: int, times: list[float]) -> tuple[float, float]:
    """(best, median) in Msym/s."""
    return n / min(times) / 1e6, n / statistics.median(times) / 1e6


def bench_fedrs(
    symbols: np.ndarray,
    indexes: np.ndarray,
    tables: tuple[np.ndarray, ...],
    threads: int,
    reps: int,
) -> dict[str, float]:
    stream, enc = timed(
        lambda: coder.encode_with_indexes(symbols, indexes, *tables, threads=threads), reps
    )
    decoded, dec = timed(
        lambda: coder.decode_with_indexes(stream, indexes, *tables, threads=threads), reps
    )
    if not np.array_equal(decoded, symbols):
        raise SystemExit(f"fedrs round trip failed ({threads} threads)")
    n = len(symbols)
    return {
        "encode": rate(n, enc)[0],
        "encode_median": rate(n, enc)[1],
        "decode": rate(n, dec)[0],
        "decode_median": rate(n, dec)[1],
        "bytes": float(len(stream)),
    }


def bench_constriction_categorical(
    symbols: np.ndarray, indexes: np.ndarray, tables: tuple[np.ndarray, ...], reps: int
) -> dict[str, float]:
    """Categorical models of the 16-bit tables (built once, untimed).  constriction codes an
    array of symbols with one model per call, so the symbols are grouped by table: "coding" times
    the coder calls on pre-grouped arrays only; "end to end" also times the grouping (and, for
    decoding, putting the symbols back in order) that the indexed workload needs."""
    import constriction

    cdfs, lengths, offsets = tables
    num = len(cdfs)
    models = [
        constriction.stream.model.Categorical(
            np.diff(cdfs[t, : lengths[t]]).astype(np.float64) / 65536.0, perfect=False
        )
        for t in range(num)
    ]
    small_index = indexes.astype(np.uint8) if num <= 256 else indexes  # radix-sortable

    def group() -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(small_index, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(indexes, minlength=num))])
        return order, bounds

    def encode_grouped(grouped: np.ndarray, bounds: np.ndarray) -> np.ndarray:
        ans = constriction.stream.stack.AnsCoder()
        for t in range(num - 1, -1, -1):
            if bounds[t + 1] > bounds[t]:
                part = grouped[bounds[t] : bounds[t + 1]] - offsets[t]
                ans.encode_reverse(part, models[t])
        return ans.get_compressed()

    def decode_grouped(compressed: np.ndarray, bounds: np.ndarray) -> list[np.ndarray]:
        ans = constriction.stream.stack.AnsCoder(compressed)
        return [
            ans.decode(models[t], int(bounds[t + 1] - bounds[t])) + offsets[t]
            for t in range(num)
            if bounds[t + 1] > bounds[t]
        ]

    def encode_end_to_end() -> np.ndarray:
        order, bounds = group()
        return encode_grouped(symbols[order], bounds)

    def decode_end_to_end() -> np.ndarray:
        order, bounds = group()
        out = np.empty(len(indexes), np.int32)
        out[order] = np.concatenate(decode_grouped(compressed, bounds))
        return out

    order, bounds = group()
    grouped = symbols[order]
    compressed, enc = timed(lambda: encode_grouped(grouped, bounds), reps)
    parts, dec = timed(lambda: decode_grouped(compressed, bounds), reps)
    if not np.array_equal(np.concatenate(parts), grouped):
        raise SystemExit("constriction categorical round trip failed")
    compressed_e2e, enc_e2e = timed(encode_end_to_end, reps)
    decoded, dec_e2e = timed(decode_end_to_end, reps)
    if not np.array_equal(decoded, symbols) or not np.array_equal(compressed_e2e, compressed):
        raise SystemExit("constriction categorical end-to-end round trip failed")
    n = len(symbols)
    return {
        "encode": rate(n, enc)[0],
        "decode": rate(n, dec)[0],
        "encode_e2e": rate(n, enc_e2e)[0],
        "decode_e2e": rate(n, dec_e2e)[0],
        "bytes": float(compressed.nbytes),
    }


def bench_constriction_gaussian(
    symbols: np.ndarray, indexes: np.ndarray, center: np.ndarray, reps: int
) -> dict[str, float]:
    import constriction

    bound = int(center[indexes].max())
    family = constriction.stream.model.QuantizedGaussian(-bound, bound)
    means = np.zeros(len(symbols), np.float64)
    stds = SCALES[indexes].astype(np.float64)

    def encode() -> np.ndarray:
        ans = constriction.stream.stack.AnsCoder()
        ans.encode_reverse(symbols, family, means, stds)
        return ans.get_compressed()

    def decode() -> np.ndarray:
        ans = constriction.stream.stack.AnsCoder(compressed)
        return ans.decode(family, means, stds)

    compressed, enc = timed(encode, reps)
    decoded, dec = timed(decode, reps)
    if not np.array_equal(decoded, symbols):
        raise SystemExit("constriction Gaussian round trip failed")
    n = len(symbols)
    return {
        "encode": rate(n, enc)[0],
        "decode": rate(n, dec)[0],
        "bytes": float(compressed.nbytes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peer-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="second fedrs measurement")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cdfs, cdf_lengths, offsets, center = gaussian_tables()
    tables = (cdfs, cdf_lengths, offsets)
    symbols, indexes = workload(args.symbols, args.seed, center)
    k = symbols.astype(np.int64) - offsets[indexes]
    freq = cdfs[indexes, k + 1] - cdfs[indexes, k]
    ideal = float(-np.log2(freq / 65536.0).sum() / 8)
    n = len(symbols)
    load_before = os.getloadavg()[0]

    one = bench_fedrs(symbols, indexes, tables, 1, args.repeats)
    many = bench_fedrs(symbols, indexes, tables, args.threads, args.repeats)
    cat = bench_constriction_categorical(symbols, indexes, tables, args.peer_repeats)
    gauss = bench_constriction_gaussian(symbols, indexes, center, args.peer_repeats)
    load_after = os.getloadavg()[0]

    header_bytes = len(coder.encode_with_indexes(symbols[:0], indexes[:0], *tables))
    overhead = (one["bytes"] - ideal) / ideal * 100
    # The peer's best figures for the same task (numpy arrays in original order, to bytes and
    # back); the coding-only figures of grouped symbols are reported beside them.
    peer_enc = max(cat["encode_e2e"], gauss["encode"])
    peer_dec = max(cat["decode_e2e"], gauss["decode"])
    print(f"workload: {n} symbols, 64 Gaussian tables, ideal {ideal:,.0f} bytes")
    print(f"load average: {load_before:.2f} before, {load_after:.2f} after (2 cores)")
    print(f"{'coder':46s} {'encode':>9s} {'decode':>9s} {'bytes':>11s} {'vs ideal':>9s}")
    rows = [
        ("fedrs, 1 thread, best", one["encode"], one["decode"], one["bytes"]),
        ("fedrs, 1 thread, median", one["encode_median"], one["decode_median"], one["bytes"]),
        (f"fedrs, {args.threads} threads, best", many["encode"], many["decode"], many["bytes"]),
        (
            "constriction Categorical, end to end",
            cat["encode_e2e"],
            cat["decode_e2e"],
            cat["bytes"],
        ),
        ("constriction Categorical, coding calls only", cat["encode"], cat["decode"], cat["bytes"]),
        ("constriction QuantizedGaussian", gauss["encode"], gauss["decode"], gauss["bytes"]),
    ]
    for name, enc, dec, size in rows:
        print(
            f"{name:46s} {enc:9.1f} {dec:9.1f} {size:11,.0f} {(size - ideal) / ideal * 100:+8.4f}%"
        )
    print("(Msym/s; symbols of the indexed workload in their order unless said otherwise)")
    print(
        f"fedrs 1 thread / constriction end to end: encode x{one['encode'] / peer_enc:.1f}, "
        f"decode x{one['decode'] / peer_dec:.1f}; / coding calls only: encode "
        f"x{one['encode'] / cat['encode']:.1f}, decode x{one['decode'] / cat['decode']:.1f}; "
        f"size {overhead:+.4f} % vs ideal (incl. {header_bytes} bytes of header and CRC)"
    )
    figures = {
        "symbols": n,
        "threads": 1,
        "encode_msym_s": round(one["encode"], 1),
        "decode_msym_s": round(one["decode"], 1),
        "encode_msym_s_median": round(one["encode_median"], 1),
        "decode_msym_s_median": round(one["decode_median"], 1),
        f"encode_msym_s_{args.threads}_threads": round(many["encode"], 1),
        f"decode_msym_s_{args.threads}_threads": round(many["decode"], 1),
        "constriction_categorical_encode_msym_s": round(cat["encode_e2e"], 2),
        "constriction_categorical_decode_msym_s": round(cat["decode_e2e"], 2),
        "constriction_categorical_coding_only_encode_msym_s": round(cat["encode"], 2),
        "constriction_categorical_coding_only_decode_msym_s": round(cat["decode"], 2),
        "constriction_gaussian_encode_msym_s": round(gauss["encode"], 2),
        "constriction_gaussian_decode_msym_s": round(gauss["decode"], 2),
        "encode_ratio": round(one["encode"] / peer_enc, 2),
        "decode_ratio": round(one["decode"] / peer_dec, 2),
        f"encode_ratio_{args.threads}_threads": round(many["encode"] / peer_enc, 2),
        f"decode_ratio_{args.threads}_threads": round(many["decode"] / peer_dec, 2),
        "encode_ratio_vs_coding_only": round(one["encode"] / cat["encode"], 2),
        "decode_ratio_vs_coding_only": round(one["decode"] / cat["decode"], 2),
        "bytes": int(one["bytes"]),
        "ideal_bytes": round(ideal, 1),
        "size_overhead_pct": round(overhead, 5),
        "constriction_categorical_overhead_pct": round((cat["bytes"] - ideal) / ideal * 100, 5),
        "constriction_gaussian_overhead_pct": round((gauss["bytes"] - ideal) / ideal * 100, 5),
        "round_trips_verified": True,
        "load_average": [round(load_before, 2), round(load_after, 2)],
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
