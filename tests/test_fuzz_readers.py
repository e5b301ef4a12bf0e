"""Fuzzing the archive readers with damaged copies of real BigEarthNet patches.

Every case damages one file of a small copy of the real v1 and v2 samples: bit flips,
truncation, inserted bytes, header and IFD damage (tag values, types, counts, compression
codes, IFD chains) and non-finite pixels for the GeoTIFFs; byte damage and valid JSON of the
wrong shape (deep nesting, huge numbers, wrong types, missing keys, bad encodings) for the v1
``*_labels_metadata.json`` files; byte and footer damage and well-formed tables with dropped,
retyped, null or duplicated columns for the v2 ``metadata.parquet``.  The damaged file is then
read by the low-level readers (``read_band``, ``read_json``, ``_labels_19``, ``read_parquet``,
``load_metadata``) and by ``fedrs.data.open_archive`` (every item; after a bad item, also with
``on_error="skip"``).  A case passes when each read either succeeds (shapes and dtypes right,
values finite, labels multi-hot) or raises ``CorruptPatchError`` naming the damaged file.
Any other exception, a crash of the process (GDAL, libtiff and pyarrow are C/C++ code) or a
case that outlives ``CASE_TIMEOUT_S`` fails the test, naming the case.

Cases are deterministic (``FEDRS_FUZZ_SEED``; ``FEDRS_FUZZ_CASES`` of them) and run in worker
processes, one case at a time each, so that a crash or a hang is caught and reported instead of
taking the test run down.  A failing case is replayed in this process (where a debugger or
faulthandler shows the crash) with::

    python tests/test_fuzz_readers.py --replay '<case json from the failure message>'

Longer campaigns: ``FEDRS_FUZZ_CASES=20000 FEDRS_FUZZ_SEED=7 pytest tests/test_fuzz_readers.py``
or the coverage-guided harness ``tests/fuzz/atheris_readers.py``.
"""

from __future__ import annotations

import functools
import io
import json
import os
import queue
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _data import V1_SAMPLE, V2_METADATA, V2_SAMPLE

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
RESULT = "@@fuzz-result "
READY = "@@fuzz-ready"
CASES = int(os.environ.get("FEDRS_FUZZ_CASES", "300"))
SEED = int(os.environ.get("FEDRS_FUZZ_SEED", "20240611"))
CASE_TIMEOUT_S = 30.0
WORKERS = max(1, min(2, os.cpu_count() or 1))
FORMAT_SHARE = {"tif": 0.6, "json": 0.2, "parquet": 0.2}
Mutator = Callable[[bytes, np.random.Generator], bytes]


# -- the small archives ---------------------------------------------------------------------


def build_small_archives(
    dest: Path, v1_sample: Path, v2_sample: Path, v2_metadata: Path
) -> dict[str, Path]:
    """Writable copies: v1 with one S1/S2 pair, one S2-only and one S1-only patch; all of v2.

    Deterministic (sorted names), so that a case replays on the same files.
    """
    import pandas as pd

    v1 = dest / "v1"
    s2_dir, s1_dir = v1_sample / "BigEarthNet-v1.0", v1_sample / "BigEarthNet-S1-v1.0"
    partner = {
        folder.name: json.loads(
            (folder / f"{folder.name}_labels_metadata.json").read_text(encoding="utf-8")
        ).get("corresponding_s2_patch")
        for folder in sorted(s1_dir.iterdir())
    }
    s2_names = sorted(p.name for p in s2_dir.iterdir())
    paired_s1 = next(s1 for s1, s2 in sorted(partner.items()) if s2 in s2_names)
    lone_s1 = next(s1 for s1, s2 in sorted(partner.items()) if s2 not in s2_names)
    lone_s2 = next(s2 for s2 in s2_names if s2 not in partner.values())
    for name in (partner[paired_s1], lone_s2):
        shutil.copytree(s2_dir / str(name), v1 / "BigEarthNet-v1.0" / str(name))
    for name in (paired_s1, lone_s1):
        shutil.copytree(s1_dir / name, v1 / "BigEarthNet-S1-v1.0" / name)
    v2 = dest / "v2"
    for folder in ("BigEarthNet-S2", "BigEarthNet-S1"):
        shutil.copytree(v2_sample / folder, v2 / folder)
    meta = pd.read_parquet(v2_metadata)
    names = {p.name for p in v2.glob("BigEarthNet-S*/*/*")}
    keep = meta["patch_id"].isin(names) | meta["s1_name"].isin(names)
    meta[keep].reset_index(drop=True).to_parquet(v2 / "metadata.parquet", index=False)
    for path in dest.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return {"v1": v1, "v2": v2}


def fuzz_targets(roots: dict[str, Path]) -> dict[str, list[tuple[str, str]]]:
    """(layout, path relative to its root) of every file a case may damage, by format."""
    targets: dict[str, list[tuple[str, str]]] = {fmt: [] for fmt in FORMAT_SHARE}
    suffix = {".tif": "tif", ".json": "json", ".parquet": "parquet"}
    for layout, root in sorted(roots.items()):
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix in suffix:
                targets[suffix[path.suffix]].append((layout, str(path.relative_to(root))))
    return targets


def make_cases(roots: dict[str, Path], count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` deterministic cases: which file, which mutation, which seed."""
    rng = np.random.default_rng(seed)
    targets = fuzz_targets(roots)
    formats = list(FORMAT_SHARE)
    shares = np.array([FORMAT_SHARE[f] for f in formats])
    cases = []
    for case_id in range(count):
        fmt = formats[int(rng.choice(len(formats), p=shares / shares.sum()))]
        layout, rel = targets[fmt][int(rng.integers(len(targets[fmt])))]
        kinds = sorted(MUTATORS[fmt])
        cases.append(
            {
                "id": case_id,
                "format": fmt,
                "layout": layout,
                "file": rel,
                "kind": kinds[int(rng.integers(len(kinds)))],
                "seed": int(rng.integers(2**32)),
            }
        )
    return cases


# -- mutations --------------------------------------------------------------------------------

INTERESTING = (
    0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 19, 20, 31, 32, 33, 59, 60, 61, 63, 64, 119, 120, 121,
    127, 128, 255, 256, 4095, 32767, 32768, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1,
)  # fmt: skip
# TIFF tags that decide how the pixels are read (width, height, bits, compression, strips...).
KEY_TAGS = (256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 317, 339, 42113)
COMPRESSIONS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 32773, 32946, 34712, 34887, 34925, 50000, 65535)


def _pick(rng: np.random.Generator, values: tuple[Any, ...] | list[Any]) -> Any:
    return values[int(rng.integers(len(values)))]


def _interesting(rng: np.random.Generator, size: int) -> int:
    near = (size - 1, size, size + 1, size // 2)
    return int(_pick(rng, INTERESTING + near)) & 0xFFFFFFFF


def flip_bits(
    data: bytes, rng: np.random.Generator, start: int = 0, end: int | None = None
) -> bytes:
    end = len(data) if end is None else min(end, len(data))
    if end <= start:
        return data
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 17))):
        pos = int(rng.integers(start, end))
        out[pos] ^= 1 << int(rng.integers(8))
    return bytes(out)


def truncate(data: bytes, rng: np.random.Generator) -> bytes:
    if rng.random() < 0.5:
        return data[: int(rng.integers(0, min(len(data), 1024) + 1))]
    return data[: int(rng.integers(0, len(data) + 1))]


def insert_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    pos = int(rng.integers(len(data) + 1))
    junk = rng.integers(0, 256, size=int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    return data[:pos] + junk + data[pos:]


def random_range(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    start = int(rng.integers(len(out) + 1))
    stop = min(len(out), start + int(rng.integers(1, 256)))
    out[start:stop] = rng.integers(0, 256, size=stop - start, dtype=np.uint8).tobytes()
    return bytes(out)


def _tiff_entries(data: bytes) -> tuple[str, int, list[int]] | None:
    """Byte order, first-IFD offset and the offsets of its 12-byte entries (classic TIFF)."""
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or len(data) < 8:
        return None
    (ifd,) = struct.unpack(order + "I", data[4:8])
    if ifd + 2 > len(data):
        return None
    (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
    entries = [ifd + 2 + 12 * i for i in range(count) if ifd + 14 + 12 * i <= len(data)]
    return order, ifd, entries


def _tiff_entry(data: bytes, rng: np.random.Generator) -> tuple[str, int, int] | None:
    """Byte order, offset and tag of one entry, key tags twice as likely."""
    parsed = _tiff_entries(data)
    if parsed is None or not parsed[2]:
        return None
    order, _, entries = parsed
    tags = [struct.unpack(order + "H", data[e : e + 2])[0] for e in entries]
    weights = np.array([2.0 if t in KEY_TAGS else 1.0 for t in tags])
    k = int(rng.choice(len(entries), p=weights / weights.sum()))
    return order, entries[k], tags[k]


def _with_entry_value(data: bytes, order: str, entry: int, value: int) -> bytes:
    out = bytearray(data)
    (kind,) = struct.unpack(order + "H", data[entry + 2 : entry + 4])
    if kind == 3:  # SHORT values sit in the first two bytes of the value field
        out[entry + 8 : entry + 12] = struct.pack(order + "HH", value & 0xFFFF, 0)
    else:
        out[entry + 8 : entry + 12] = struct.pack(order + "I", value & 0xFFFFFFFF)
    return bytes(out)


def _on_an_entry(
    damage: Callable[[bytes, np.random.Generator, str, int], bytes],
) -> Callable[[bytes, np.random.Generator], bytes]:
    """A mutator applying ``damage(data, rng, order, entry)`` to one entry of the first IFD
    (:func:`_tiff_entry`), or flipping bits where there is none."""

    @functools.wraps(damage)
    def mutate(data: bytes, rng: np.random.Generator) -> bytes:
        found = _tiff_entry(data, rng)
        if found is None:
            return flip_bits(data, rng)
        order, entry, _ = found
        return damage(data, rng, order, entry)

    return mutate


@_on_an_entry
def tiff_value(data: bytes, rng: np.random.Generator, order: str, entry: int) -> bytes:
    return _with_entry_value(data, order, entry, _interesting(rng, len(data)))


def tiff_compression(data: bytes, rng: np.random.Generator) -> bytes:
    parsed = _tiff_entries(data)
    if parsed is None:
        return flip_bits(data, rng)
    order, _, entries = parsed
    for entry in entries:
        if struct.unpack(order + "H", data[entry : entry + 2])[0] == 259:
            return _with_entry_value(data, order, entry, int(_pick(rng, COMPRESSIONS)))
    return flip_bits(data, rng)


@_on_an_entry
def tiff_type_or_count(data: bytes, rng: np.random.Generator, order: str, entry: int) -> bytes:
    out = bytearray(data)
    if rng.random() < 0.5:
        out[entry + 2 : entry + 4] = struct.pack(order + "H", int(rng.integers(0, 20)))
    else:
        out[entry + 4 : entry + 8] = struct.pack(order + "I", _interesting(rng, len(data)))
    return bytes(out)


@_on_an_entry
def tiff_tag(data: bytes, rng: np.random.Generator, order: str, entry: int) -> bytes:
    """Rename a tag: duplicates, unknown tags, entries out of order."""
    tag = int(_pick(rng, (*KEY_TAGS, 0, 254, 322, 323, 324, 325, 330, 34735, 65535)))
    out = bytearray(data)
    out[entry : entry + 2] = struct.pack(order + "H", tag)
    return bytes(out)


def tiff_ifd_chain(data: bytes, rng: np.random.Generator) -> bytes:
    """Damage the IFD chain: first offset, entry count, next-IFD offset (loops included)."""
    parsed = _tiff_entries(data)
    if parsed is None:
        return flip_bits(data, rng, 0, 8)
    order, ifd, entries = parsed
    out = bytearray(data)
    choice = int(rng.integers(3))
    if choice == 0:
        out[4:8] = struct.pack(order + "I", _interesting(rng, len(data)))
    elif choice == 1:
        out[ifd : ifd + 2] = struct.pack(order + "H", _interesting(rng, len(entries)) & 0xFFFF)
    else:
        nxt = ifd + 2 + 12 * len(entries)
        target = int(_pick(rng, (ifd, 8, 0xFFFFFFFF, len(data) - 2, nxt)))
        out[nxt : nxt + 4] = struct.pack(order + "I", target & 0xFFFFFFFF)
    return bytes(out)


def tiff_header(data: bytes, rng: np.random.Generator) -> bytes:
    parsed = _tiff_entries(data)
    end = parsed[2][-1] + 16 if parsed and parsed[2] else 64
    return flip_bits(data, rng, 0, end)


def _pixel_start(data: bytes) -> int:
    """Offset of the first strip of pixels (StripOffsets), or the middle of the file."""
    parsed = _tiff_entries(data)
    if parsed is not None:
        order, _, entries = parsed
        for entry in entries:
            tag, _, count, value = struct.unpack(order + "HHII", data[entry : entry + 12])
            if tag == 273:
                if count > 1 and value + 4 <= len(data):
                    (value,) = struct.unpack(order + "I", data[value : value + 4])
                if 8 <= value < len(data):
                    return int(value)
    return len(data) // 2


def tiff_pixels(data: bytes, rng: np.random.Generator) -> bytes:
    """Overwrite pixel words with NaN, infinities or extreme values (4-byte aligned)."""
    start = _pixel_start(data)
    words = (
        struct.pack("<f", float("nan")),
        struct.pack("<f", float("inf")),
        struct.pack("<f", float("-inf")),
        struct.pack("<f", 3.4e38),
        b"\xff\xff\xff\xff",
        b"\x00\x00\x80\xff",
    )
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 8))):
        pos = start + (int(rng.integers(0, max(1, (len(out) - start) // 4))) * 4)
        out[pos : pos + 4] = _pick(rng, words)
    return bytes(out[: len(data)])


def _json_doc(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return {}


JSON_VALUES: tuple[Any, ...] = (
    None, True, 0, -1, 1.5, 1e308, float("nan"), "", "x", "Pastures", "Not a class",
    "Mixed forest", [], {}, [None], [1, 2], [["Pastures"]], {"labels": []}, ["Pastures"] * 50,
    "\u00fc" * 300, ["Broad-leaved forest", 7], ["Sea and ocean", None],
)  # fmt: skip


def json_value(data: bytes, rng: np.random.Generator) -> bytes:
    """Well-formed JSON of the wrong shape: a value replaced by another type."""
    doc = _json_doc(data)
    value = _pick(rng, JSON_VALUES)
    where = int(rng.integers(4))
    if where == 0:
        doc = value
    elif isinstance(doc, dict):
        key = _pick(rng, ("labels", "corresponding_s2_patch", "labels", "coordinates"))
        if where == 1:
            doc[key] = value
        elif where == 2 and isinstance(doc.get("labels"), list) and doc["labels"]:
            doc["labels"][int(rng.integers(len(doc["labels"])))] = value
        else:
            doc.pop(key, None)
    return json.dumps(doc).encode()


def json_deep(data: bytes, rng: np.random.Generator) -> bytes:
    """Deep nesting, in the labels or as the whole document."""
    depth = int(_pick(rng, (50, 2_000, 200_000)))
    bracket = _pick(rng, ("[", '{"a":'))
    close = "]" if bracket == "[" else "}"
    nested = bracket * depth + "1" + close * depth
    if rng.random() < 0.5:
        return nested.encode()
    text = data.decode("utf-8", errors="replace")
    return text.replace('"labels": [', '"labels": [' + nested + ", ", 1).encode()


def json_number(data: bytes, rng: np.random.Generator) -> bytes:
    """Numbers Python's json refuses or turns into infinities."""
    number = _pick(rng, ("1" * 5000, "-" + "9" * 4400, "1e999999", "-1e999999", "NaN", "Infinity"))
    text = data.decode("utf-8", errors="replace")
    key = _pick(rng, ('"labels": ', '"corresponding_s2_patch": ', '"ulx": '))
    if key in text and rng.random() < 0.7:
        head, tail = text.split(key, 1)
        return (head + key + number + ", " + '"_": ' + tail).encode()
    return number.encode()


def json_encoding(data: bytes, rng: np.random.Generator) -> bytes:
    """Byte-order marks, UTF-16, invalid UTF-8, NUL bytes and lone surrogates."""
    choice = int(rng.integers(5))
    if choice == 0:
        return b"\xef\xbb\xbf" + data
    if choice == 1:
        return data.decode("utf-8").encode("utf-16")
    if choice == 2:
        pos = int(rng.integers(len(data) + 1))
        return data[:pos] + _pick(rng, (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00")) + data[pos:]
    if choice == 3:
        return data.replace(b'"labels": ["', b'"labels": ["\\ud800', 1)
    return data.replace(b"forest", b"for\x00est")


def parquet_footer(data: bytes, rng: np.random.Generator) -> bytes:
    """Damage the Thrift footer, its length field or the magic bytes."""
    choice = int(rng.integers(3))
    if choice == 0:
        return flip_bits(data, rng, max(0, len(data) - 2048))
    out = bytearray(data)
    if choice == 1 and len(out) >= 8:
        out[-8:-4] = struct.pack("<I", _interesting(rng, len(data)))
    else:
        pos = _pick(rng, (0, 1, 2, 3, len(out) - 1, len(out) - 4))
        if 0 <= pos < len(out):
            out[pos] ^= 0xFF
    return bytes(out)


def _arrow_column(name: str, rows: int, rng: np.random.Generator, original: Any) -> Any:
    """A column of ``rows`` values of a type the reader does not expect."""
    import pyarrow as pa

    choice = int(rng.integers(14))
    if choice == 0:
        return pa.nulls(rows)
    if choice == 1:
        return pa.array(rng.integers(-5, 5, size=rows))
    if choice == 2:
        return pa.array(rng.random(rows))
    if choice == 3:
        return pa.array(["Pastures"] * rows)
    if choice == 4:
        return pa.array([[1, 2]] * rows)
    if choice == 5:
        return pa.array([[["Pastures"]]] * rows)
    if choice == 6:
        return pa.array([{"a": 1}] * rows)
    if choice == 7:
        return pa.array([True, None] * (rows // 2) + [None] * (rows % 2), type=pa.bool_())
    if choice == 8:
        return pa.array([b"\xff\xfe"] * rows, type=pa.binary())
    if choice == 9:
        return pa.array(["", None] * (rows // 2) + [""] * (rows % 2), type=pa.string())
    if choice == 10:
        return pa.array([["Pastures", None]] * rows)
    if choice == 11:
        return pa.array([[]] * rows, type=pa.list_(pa.string()))
    if choice == 12:
        return pa.array([None] * rows, type=original.type)
    return pa.array([0] * rows, type=pa.timestamp("ms"))


def parquet_table(data: bytes, rng: np.random.Generator) -> bytes:
    """A well-formed parquet file whose table is wrong: columns dropped, retyped, nulled,
    rows emptied or duplicated, extra flag columns of odd types."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    columns = ["patch_id", "labels", "s1_name", "split", "country", *table.column_names]
    name = str(_pick(rng, columns))
    choice = int(rng.integers(6))
    if choice == 0 and name in table.column_names:
        table = table.drop_columns([name])
    elif choice == 1 and name in table.column_names:
        index = table.column_names.index(name)
        column = _arrow_column(name, table.num_rows, rng, table.column(name))
        table = table.set_column(index, name, column)
    elif choice == 2:
        flag = str(_pick(rng, ("has_s1", "has_s2", "season", "split")))
        column = _arrow_column(flag, table.num_rows, rng, pa.array([True] * table.num_rows))
        if flag in table.column_names:
            table = table.set_column(table.column_names.index(flag), flag, column)
        else:
            table = table.append_column(flag, column)
    elif choice == 3:
        table = table.slice(0, int(rng.integers(0, table.num_rows + 1)))
    elif choice == 4:
        table = pa.concat_tables([table, table])
    else:
        table = table.rename_columns([c.upper() for c in table.column_names])
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def parquet_bad_utf8(data: bytes, rng: np.random.Generator) -> bytes:
    """Invalid UTF-8 inside one string value (the table rewritten uncompressed, so that the
    value's bytes are in the file as they are, in a plain or a dictionary page)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="none", use_dictionary=bool(rng.integers(2)))
    out = bytearray(sink.getvalue())
    strings = []
    for column in table.itercolumns():
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            column = pc.list_flatten(column)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            strings += [v for v in column.to_pylist() if v]
    if not strings:
        return bytes(out)
    value = str(_pick(rng, strings)).encode()
    start = out.find(value)
    if start >= 0:
        out[start + int(rng.integers(len(value)))] = int(_pick(rng, (0xFF, 0xC3, 0x80, 0xED)))
    return bytes(out)


def stacked(fmt: str) -> Mutator:
    """Two to four mutations of format ``fmt`` one after the other (damage on damage)."""

    def mutate(data: bytes, rng: np.random.Generator) -> bytes:
        kinds = sorted(k for k in MUTATORS[fmt] if k != "stack")
        for _ in range(int(rng.integers(2, 5))):
            kind = kinds[int(rng.integers(len(kinds)))]
            try:
                data = MUTATORS[fmt][kind](data, rng)
            except Exception:  # a structural mutation needs a readable input: skip it
                continue
        return data

    return mutate


MUTATORS: dict[str, dict[str, Mutator]] = {
    "tif": {
        "flip": flip_bits,
        "truncate": truncate,
        "insert": insert_bytes,
        "range": random_range,
        "header": tiff_header,
        "ifd_value": tiff_value,
        "ifd_type_count": tiff_type_or_count,
        "ifd_tag": tiff_tag,
        "ifd_chain": tiff_ifd_chain,
        "compression": tiff_compression,
        "pixels": tiff_pixels,
        "stack": stacked("tif"),
    },
    "json": {
        "flip": flip_bits,
        "truncate": truncate,
        "insert": insert_bytes,
        "value": json_value,
        "deep": json_deep,
        "number": json_number,
        "encoding": json_encoding,
        "stack": stacked("json"),
    },
    "parquet": {
        "flip": flip_bits,
        "truncate": truncate,
        "range": random_range,
        "footer": parquet_footer,
        "table": parquet_table,
        "table2": parquet_table,
        "utf8": parquet_bad_utf8,
        "stack": stacked("parquet"),
    },
}


# -- one case (in a worker) -------------------------------------------------------------------


class InvalidRead(Exception):
    """A read that succeeded but returned something malformed."""


def _check_band(band: np.ndarray, size: int, dtype: str) -> None:
    if band.shape != (size, size) or str(band.dtype) != dtype:
        raise InvalidRead(f"band of shape {band.shape} {band.dtype}, not {size}x{size} {dtype}")
    if not np.isfinite(band).all():
        raise InvalidRead("band with non-finite values")


def _check_item(item: dict[str, Any]) -> None:
    import torch

    if not isinstance(item["patch_id"], str):
        raise InvalidRead(f"patch_id {item['patch_id']!r} is not a string")
    for key, shape in (("s2", (12, 120, 120)), ("s1", (2, 120, 120))):
        value = item[key]
        if value is None:
            continue
        if not isinstance(value, torch.Tensor) or value.dtype != torch.float32:
            raise InvalidRead(f"{key} is {type(value).__name__} {getattr(value, 'dtype', '')}")
        if tuple(value.shape) != shape:
            raise InvalidRead(f"{key} of shape {tuple(value.shape)}")
        if not bool(torch.isfinite(value).all()):
            raise InvalidRead(f"{key} with non-finite values")
    if item["s1"] is None and item["s2"] is None:
        raise InvalidRead("an item with neither modality")
    labels = item["labels"]
    if tuple(labels.shape) != (19,) or labels.dtype != torch.float32:
        raise InvalidRead(f"labels of shape {tuple(labels.shape)} {labels.dtype}")
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise InvalidRead("labels are not multi-hot")


def _read_archive(root: Path) -> None:
    """Open ``root`` and read every item; after a bad item, check that skip mode copes too."""
    from fedrs.data import CorruptPatchError, open_archive

    archive = open_archive(root)
    try:
        for index in range(len(archive)):
            _check_item(archive[index])
    except CorruptPatchError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tolerant = open_archive(root, on_error="skip")
        if not tolerant.skipped:
            raise InvalidRead("on_error='skip' skipped nothing after a bad item") from None
        for index in range(len(tolerant)):
            _check_item(tolerant[index])
        raise


def _stages(root: Path, path: Path, fmt: str) -> list[tuple[str, Callable[[], object]]]:
    from fedrs.data.archive import _labels_19
    from fedrs.data.facts import PATCH_SIZE, S2_PIXELS_PER_SIDE, S2_RESOLUTION_M
    from fedrs.data.geotiff import read_band, read_json
    from fedrs.data.metadata import load_metadata, read_parquet

    if fmt == "tif":
        band = path.stem.rsplit("_", 1)[1]
        if band in S2_RESOLUTION_M:
            size, dtype = S2_PIXELS_PER_SIDE[S2_RESOLUTION_M[band]], "uint16"
        else:
            size, dtype = PATCH_SIZE, "float32"
        return [
            (
                "read_band",
                lambda: _check_band(read_band(path, size=size, dtype=dtype), size, dtype),
            ),
            ("open_archive", lambda: _read_archive(root)),
        ]
    if fmt == "json":
        return [
            ("read_json", lambda: read_json(path)),
            ("labels_19", lambda: _labels_19(path)),
            ("open_archive", lambda: _read_archive(root)),
        ]
    return [
        ("read_parquet", lambda: read_parquet(path)),
        ("load_metadata", lambda: load_metadata(path)),
        ("open_archive", lambda: _read_archive(root)),
    ]


def run_case(roots: dict[str, Path], spec: dict[str, Any]) -> dict[str, Any]:
    """Damage the case's file, read it every way, restore it; the outcome as a dict."""
    if spec["kind"] == "_abort":  # the harness' own check: a crash must be reported
        os.abort()
    if spec["kind"] == "_hang":  # ... and so must a hang
        time.sleep(3600)
    from fedrs.data import CorruptPatchError

    root = roots[spec["layout"]]
    path = root / spec["file"]
    original = path.read_bytes()
    damaged = MUTATORS[spec["format"]][spec["kind"]](original, np.random.default_rng(spec["seed"]))
    outcomes: dict[str, str] = {}
    try:
        path.write_bytes(damaged)
        for stage, call in _stages(root, path, spec["format"]):
            try:
                call()
                outcomes[stage] = "ok"
            except CorruptPatchError as exc:
                if exc.path.resolve() != path.resolve():
                    return {
                        "status": "wrong-file",
                        "stage": stage,
                        "error": f"CorruptPatchError names {exc.path}, not {path}: {exc}",
                    }
                outcomes[stage] = "corrupt"
            except Exception as exc:
                return {
                    "status": "error",
                    "stage": stage,
                    "error": f"{type(exc).__name__}: {str(exc)[:500]}",
                    "traceback": traceback.format_exc()[-3000:],
                }
    finally:
        path.write_bytes(original)
    # The archive reads the file the way the low-level reader does: a file the reader refuses
    # must make the archive refuse too (an S1 file's labels count only for an S1-only patch).
    first = next(iter(outcomes))
    if outcomes[first] == "corrupt" and outcomes["open_archive"] != "corrupt":
        return {
            "status": "inconsistent",
            "stage": "open_archive",
            "error": f"{first} refused the file but open_archive read it: {outcomes}",
        }
    if spec["format"] == "tif" and len(set(outcomes.values())) > 1:
        return {"status": "inconsistent", "stage": "open_archive", "error": str(outcomes)}
    corrupt = "corrupt" in outcomes.values()
    return {"status": "corrupt" if corrupt else "ok", "outcomes": outcomes}


def worker_main(roots_json: str, *, preload: bool = True) -> None:
    """Answer cases read from stdin, one JSON line each, on stdout (see ``Worker``).

    ``preload`` imports the readers (and torch) before the first case, outside its time bound.
    """
    import faulthandler

    faulthandler.enable()
    if preload:
        import torch

        import fedrs.data  # noqa: F401

        torch.set_num_threads(1)
    roots = {k: Path(v) for k, v in json.loads(roots_json).items()}
    print(READY, flush=True)
    for line in sys.stdin:
        spec = json.loads(line)
        result = run_case(roots, spec)
        print(RESULT + json.dumps({"id": spec["id"], **result}), flush=True)


# -- the harness (in the test process) --------------------------------------------------------


class Worker:
    """A worker process with its own copy of the archives; restarted after a crash or a hang."""

    def __init__(self, pristine: dict[str, Path], workdir: Path, *, preload: bool = True) -> None:
        self.preload = preload
        self.pristine = pristine
        self.workdir = workdir
        self.log = workdir.with_suffix(".log")
        self.process: subprocess.Popen[bytes] | None = None
        self.buffer = b""

    def start(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
        roots = {}
        for layout, source in self.pristine.items():
            roots[layout] = str(shutil.copytree(source, self.workdir / layout))
        env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(HERE), "--worker", json.dumps(roots)]
                + ([] if self.preload else ["--no-preload"]),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=REPO,
                env=env,
            )
        self.buffer = b""
        line = self._read_line(time.monotonic() + 300)
        if line != READY:
            raise RuntimeError(f"fuzz worker did not start ({line!r}); see {self.log}")

    def _read_line(self, deadline: float) -> str | None:
        """The next line the worker prints; None at EOF; TimeoutError past ``deadline``."""
        assert self.process is not None and self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode(errors="replace")

    def run(self, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
        if self.process is None or self.process.poll() is not None:
            self.start()
        assert self.process is not None and self.process.stdin is not None
        try:
            self.process.stdin.write((json.dumps(spec) + "\n").encode())
            self.process.stdin.flush()
            deadline = time.monotonic() + timeout
            while True:
                line = self._read_line(deadline)
                if line is None or line.startswith(RESULT):
                    break
        except TimeoutError:
            self.stop()
            return {"id": spec["id"], "status": "hang", "error": f"no answer in {timeout:g} s"}
        except BrokenPipeError:
            line = None
        if line is None:
            code = self.process.wait()
            self.process = None
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            return {"id": spec["id"], "status": "crash", "error": how, "traceback": tail}
        result: dict[str, Any] = json.loads(line[len(RESULT) :])
        return result

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process = None


def run_cases(
    pristine: dict[str, Path],
    scratch: Path,
    cases: list[dict[str, Any]],
    *,
    workers: int = WORKERS,
    timeout: float = CASE_TIMEOUT_S,
    preload: bool = True,
) -> list[dict[str, Any]]:
    """Every case on a pool of worker processes; the results in case order."""
    todo: queue.Queue[dict[str, Any]] = queue.Queue()
    for case in cases:
        todo.put(case)
    results: dict[int, dict[str, Any]] = {}
    problems: list[BaseException] = []

    def serve(k: int) -> None:
        worker = Worker(pristine, scratch / f"worker-{k}", preload=preload)
        try:
            while True:
                try:
                    case = todo.get_nowait()
                except queue.Empty:
                    return
                results[case["id"]] = worker.run(case, float(case.get("timeout_s", timeout)))
        except BaseException as exc:  # reported by the caller
            problems.append(exc)
        finally:
            worker.stop()

    threads = [threading.Thread(target=serve, args=(k,)) for k in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if problems:
        raise problems[0]
    return [results[c["id"]] for c in cases]


def describe(case: dict[str, Any], result: dict[str, Any]) -> str:
    lines = [
        f"case {json.dumps(case)}",
        f"  {result['status']} in {result.get('stage', '?')}: {result.get('error', '')}",
    ]
    if result.get("traceback"):
        lines += ["    " + line for line in str(result["traceback"]).splitlines()[-12:]]
    return "\n".join(lines)


# -- tests ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(
    tmp_path_factory: pytest.TempPathFactory, v1_sample: Path, v2_sample: Path, v2_metadata: Path
) -> dict[str, Path]:
    return build_small_archives(
        tmp_path_factory.mktemp("fuzz-archives"), v1_sample, v2_sample, v2_metadata
    )


def test_small_archives_read_cleanly(pristine: dict[str, Path]) -> None:
    """The undamaged copies read without error: every failure below is due to the damage."""
    for fmt, targets in fuzz_targets(pristine).items():
        assert targets, fmt
    for root in pristine.values():
        _read_archive(root)
    from fedrs.data import open_archive

    assert len(open_archive(pristine["v1"])) == 3
    assert len(open_archive(pristine["v2"])) >= 3


def test_mutations_are_deterministic_and_damaging(pristine: dict[str, Path]) -> None:
    cases = make_cases(pristine, 60, SEED)
    assert cases == make_cases(pristine, 60, SEED)
    assert {c["format"] for c in cases} == set(FORMAT_SHARE)
    changed = 0
    for case in cases:
        data = (pristine[case["layout"]] / case["file"]).read_bytes()
        mutate = MUTATORS[case["format"]][case["kind"]]
        first = mutate(data, np.random.default_rng(case["seed"]))
        assert first == mutate(data, np.random.default_rng(case["seed"]))
        changed += first != data
    assert changed >= 55


def test_harness_reports_crashes_and_hangs(pristine: dict[str, Path], tmp_path: Path) -> None:
    cases = [
        {"id": 0, "format": "tif", "layout": "v1", "file": "", "kind": "_abort", "seed": 0},
        {"id": 1, "format": "tif", "layout": "v1", "file": "", "kind": "_hang", "seed": 0}
        | {"timeout_s": 3.0},
        make_cases(pristine, 1, SEED)[0] | {"id": 2},
    ]
    results = run_cases(pristine, tmp_path, cases, workers=1, preload=False)
    assert [r["status"] for r in results[:2]] == ["crash", "hang"]
    assert "SIGABRT" in results[0]["error"]
    assert "no answer in 3 s" in results[1]["error"]
    # The worker came back after both, and the next case ran its readers.
    assert results[2]["status"] in ("ok", "corrupt"), results[2]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_damaged_files_raise_corrupt_patch_error(pristine: dict[str, Path], tmp_path: Path) -> None:
    cases = make_cases(pristine, CASES, SEED)
    results = run_cases(pristine, tmp_path, cases)
    failures = [
        describe(case, result)
        for case, result in zip(cases, results, strict=True)
        if result["status"] not in ("ok", "corrupt")
    ]
    tally = Counter((c["format"], r["status"]) for c, r in zip(cases, results, strict=True))
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(
        failures[:20]
    )
    # The damage has to bite: each format sees refused files, and harmless damage reads.
    for fmt in FORMAT_SHARE:
        assert tally[(fmt, "corrupt")] > 0, (fmt, tally)
    assert sum(n for (_, status), n in tally.items() if status == "ok") > 0, tally


def _replay(spec: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        roots = build_small_archives(Path(tmp), V1_SAMPLE, V2_SAMPLE, V2_METADATA)
        print(json.dumps(run_case(roots, spec), indent=2))


def _main(argv: list[str]) -> None:
    if len(argv) in (2, 3) and argv[0] == "--worker":
        worker_main(argv[1], preload="--no-preload" not in argv[2:])
    elif len(argv) == 2 and argv[0] == "--replay":
        _replay(json.loads(argv[1]))
    else:
        raise SystemExit(
            f"usage: {HERE.name} --worker ROOTS_JSON [--no-preload] | --replay CASE_JSON"
        )


if __name__ == "__main__":
    _main(sys.argv[1:])
