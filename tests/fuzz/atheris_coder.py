"""Fuzz target of fedrs.coder's Python face with atheris (complements native/coder/fuzz/).

Decodes arbitrary bytes (as they are, and with a recomputed CRC so the payload checks are
reached) and round-trips arbitrary symbols through ``fedrs.coder``.  Any exception other than
the coder's own ``CoderError`` is a crash.  Run it against the sanitizer build to catch memory
errors in the extension (see native/coder/README.md)::

    FEDRS_DEBUG_BUILD=1 .venv/bin/python setup.py build_ext --inplace
    LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)" \\
        ASAN_OPTIONS=detect_leaks=0 .venv/bin/python tests/fuzz/atheris_coder.py -runs=100000
"""

from __future__ import annotations

import sys
import zlib

import atheris
import numpy as np

with atheris.instrument_imports():
    from fedrs import coder

CDFS, CDF_LENGTHS = coder.cdf_tables(
    np.array([[0.05, 0.9, 0.05, 0, 0, 0], [0.1, 0.2, 0.4, 0.2, 0.05, 0.05]], np.float32),
    np.array([3, 6]),
    np.array([1e-4, 1e-2]),
)
CDFS = np.vstack([CDFS, np.array([[0, 65536, 0, 0, 0, 0, 0, 0]], np.int32)])
CDF_LENGTHS = np.append(CDF_LENGTHS, 2).astype(np.int32)
OFFSETS = np.array([-1, -3, 2**31 - 1], np.int32)
TABLES = (CDFS, CDF_LENGTHS, OFFSETS)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 2)
    if mode == 2:
        count = fdp.ConsumeIntInRange(0, 64)
        idx = np.array(fdp.ConsumeIntListInRange(count, 0, len(OFFSETS) - 1), np.int32)
        sym = np.array(fdp.ConsumeIntListInRange(len(idx), -(2**31), 2**31 - 1), np.int32)
        idx = idx[: len(sym)]
        stream = coder.encode_with_indexes(sym, idx, *TABLES)
        if not np.array_equal(coder.decode_with_indexes(stream, idx, *TABLES), sym):
            raise RuntimeError("round trip failed")
        return
    seed = fdp.ConsumeIntInRange(0, 255)
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    if mode == 1 and len(stream) >= 4:
        stream = stream[:-4] + zlib.crc32(stream[:-4]).to_bytes(4, "little")
    try:
        count = min(coder.stream_symbol_count(stream), 4096)
    except coder.CoderError:
        count = 0
    idx = (np.arange(count) * (seed | 1) % len(OFFSETS)).astype(np.int32)
    try:
        decoded = coder.decode_with_indexes(stream, idx, *TABLES)
    except coder.CoderError:
        return
    if coder.encode_with_indexes(decoded, idx, *TABLES) != stream:
        raise RuntimeError("a decoded stream does not re-encode to itself")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
