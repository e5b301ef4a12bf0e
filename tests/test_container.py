"""Tests of the ``.fedrs`` compressed-archive container (fedrs.container)."""

from __future__ import annotations

import gc
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fedrs.container.writer
from fedrs.container import (
    CONTAINER_FORMAT,
    FORMAT_VERSION,
    MAGIC,
    ArchiveWriter,
    CompressedArchive,
    ContainerError,
    ContainerExistsError,
    ContainerVersionError,
    CorruptArchiveError,
    CorruptRecordError,
    GeoReference,
    NotAContainerError,
    Record,
    RecordNotFoundError,
)
from fedrs.errors import InputError
from fedrs.retrieval import PAD_DISTANCE, ArchiveSearch, HashIndex

LABELS = ("forest", "water", "urban", "crops", "wetland", "beach", "snow", "rock", "grass")
BITS = 32


def _record(i: int, rng: np.random.Generator) -> Record:
    """A record with random streams; odd records lack S1, every third lacks a georeference."""
    pid = f"S2A_MSIL2A_20170613T101031_{i}_{i * 7 % 13}"
    streams: dict[str, dict[str, bytes]] = {
        "s2": {
            "y": f"PAYLOAD-{pid}-y|".encode() + rng.bytes(int(rng.integers(0, 300))),
            "z": rng.bytes(int(rng.integers(0, 40))),
        }
    }
    shapes = {"s2": {"y": [8, 15, 15], "z": [4, 4, 4]}}
    georef: dict[str, GeoReference] = {}
    if i % 3:
        georef["s2"] = GeoReference(
            "EPSG:32632", (10.0, 0.0, 500000.0 + 1200.5 * i, 0.0, -10.0, 6.1e6 - i), 120, 120
        )
    if i % 2 == 0:
        streams["s1"] = {"y": rng.bytes(int(rng.integers(1, 200))), "z": b""}
        shapes["s1"] = {"y": [8, 15, 15], "z": [2, 2, 2]}
        georef["s1"] = GeoReference(
            'PROJCS["WGS 84 / UTM zone 32N"]', (1, 0.5, -3, 0, -1, 2.25), 7, 9
        )
    labels = rng.integers(0, 2, len(LABELS)).astype(np.float32)
    code = rng.integers(0, 256, BITS // 8, dtype=np.uint8)
    return Record(pid, code, streams=streams, shapes=shapes, labels=labels, georef=georef)


def _write(path: Path, records: list[Record], **kwargs: object) -> Path:
    options: dict[str, object] = {
        "hash_bits": BITS,
        "model_fingerprint": "sha256:0123abcd",
        "meta": {"codec": "hyperprior", "width": 64, "lambda": 0.01},
        "label_names": LABELS,
    }
    options.update(kwargs)
    with ArchiveWriter(path, **options) as writer:  # type: ignore[arg-type]
        for record in records:
            writer.add(record)
    return path


@pytest.fixture
def records() -> list[Record]:
    rng = np.random.default_rng(7)
    return [_record(i, rng) for i in range(12)]


@pytest.fixture
def archive_path(tmp_path: Path, records: list[Record]) -> Path:
    return _write(tmp_path / "client-3.fedrs", records)


def _assert_same(got: Record, want: Record, position: int) -> None:
    assert got.patch_id == want.patch_id
    assert got.position == position
    assert got.code.dtype == np.uint8 and np.array_equal(got.code, want.code)
    assert list(got.streams) == list(want.streams)
    for modality, named in want.streams.items():
        assert list(got.streams[modality]) == list(named)
        for name, blob in named.items():
            assert type(got.streams[modality][name]) is bytes
            assert got.streams[modality][name] == blob
    assert got.shapes == want.shapes
    assert got.georef == want.georef
    assert got.labels.dtype == np.float32 and np.array_equal(got.labels, want.labels)


# ------------------------------------------------------------------------------------------------
# Round trip


def test_round_trip(archive_path: Path, records: list[Record]) -> None:
    with CompressedArchive.open(archive_path) as archive:
        assert len(archive) == len(records)
        assert archive.version == FORMAT_VERSION
        assert archive.hash_bits == BITS
        assert archive.model_fingerprint == "sha256:0123abcd"
        assert archive.meta == {"codec": "hyperprior", "width": 64, "lambda": 0.01}
        assert archive.label_names == LABELS
        assert archive.name == "client-3"
        assert set(archive.created) >= {"utc", "fedrs_version"}
        assert archive.patch_ids == tuple(r.patch_id for r in records)
        assert archive.codes.shape == (len(records), BITS // 8)
        assert np.array_equal(archive.codes, np.stack([r.code for r in records]))
        assert archive.labels.dtype == np.float32
        assert np.array_equal(archive.labels, np.stack([r.labels for r in records]))
        for i, want in enumerate(records):
            _assert_same(archive.record(i), want, i)
            _assert_same(archive.record(want.patch_id), want, i)
        _assert_same(archive.record(-1), records[-1], len(records) - 1)
        assert [r.patch_id for r in archive.iter_records()] == list(archive.patch_ids)
        assert archive.verify() == []
        assert not archive.codes.flags.writeable and not archive.labels.flags.writeable


def test_georeference_exact(tmp_path: Path) -> None:
    transform = (10.000000000000002, -1e-17, 399960.123456789, 1 / 3, -10.0, 5.1e6 + 1 / 7)
    ref = GeoReference("EPSG:32633", transform, 120, 60)
    rec = Record("p", np.zeros(4, np.uint8), georef={"s2": ref, "s1": ref.to_json()})  # type: ignore[dict-item]
    path = _write(tmp_path / "g.fedrs", [rec])
    got = CompressedArchive.open(path).record("p").georef
    assert got == {"s2": ref, "s1": ref}
    assert got["s2"].transform == transform  # bit-exact floats


def test_rasterio_like_georeference_is_converted(tmp_path: Path) -> None:
    from affine import Affine
    from rasterio.crs import CRS

    transform = Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 5200020.0)
    geo = {"crs": CRS.from_epsg(32634), "transform": transform, "width": 120, "height": 120}
    path = _write(tmp_path / "r.fedrs", [Record("p", np.zeros(4, np.uint8), georef={"s2": geo})])  # type: ignore[dict-item]
    got = CompressedArchive.open(path).record(0).georef["s2"]
    assert got.crs == "EPSG:32634"
    assert got.transform == (10.0, 0.0, 600000.0, 0.0, -10.0, 5200020.0)


def test_labels_as_names_and_unpacked_codes(tmp_path: Path) -> None:
    signs = np.where(np.arange(BITS) % 3 == 0, 1, -1).astype(np.int8)
    recs = [
        Record("a", signs, labels=["water", "forest"]),
        Record("b", signs > 0, labels=None),
        Record("c", np.zeros(BITS // 8, np.uint8), labels=[]),
        Record("d", np.zeros(BITS // 8, np.uint8), labels=np.array(["urban", "water"])),
    ]
    archive = CompressedArchive.open(_write(tmp_path / "l.fedrs", recs))
    assert archive.labels[0].tolist() == [1, 1] + [0] * (len(LABELS) - 2)
    assert not archive.labels[1:3].any()
    assert np.flatnonzero(archive.labels[3]).tolist() == [1, 2]
    assert np.array_equal(archive.codes[0], np.packbits(signs > 0))
    assert np.array_equal(archive.codes[1], archive.codes[0])


def test_default_label_names_are_bigearthnet(tmp_path: Path) -> None:
    from fedrs.data import LABELS_19

    path = tmp_path / "d.fedrs"
    with ArchiveWriter(path, hash_bits=16, model_fingerprint="m") as writer:
        writer.add(Record("p", np.ones(16, np.int8), labels=[LABELS_19[3], LABELS_19[18]]))
    archive = CompressedArchive.open(path)
    assert archive.label_names == tuple(LABELS_19)
    assert archive.labels.shape == (1, 19)
    assert np.flatnonzero(archive.labels[0]).tolist() == [3, 18]


def test_empty_archive(tmp_path: Path) -> None:
    archive = CompressedArchive.open(_write(tmp_path / "e.fedrs", []))
    assert len(archive) == 0
    assert archive.patch_ids == ()
    assert archive.codes.shape == (0, BITS // 8)
    assert archive.labels.shape == (0, len(LABELS))
    distances, positions = ArchiveSearch(archive).search(np.zeros((2, BITS // 8), np.uint8), 3)
    assert (distances == PAD_DISTANCE).all()
    assert (positions == -1).all()
    assert list(archive.iter_records()) == []
    with pytest.raises(RecordNotFoundError):
        archive.record(0)


def test_no_labels_at_all(tmp_path: Path) -> None:
    rec = Record("p", np.zeros(2, np.uint8), streams={"s1": {"y": b"x"}})
    archive = CompressedArchive.open(
        _write(tmp_path / "n.fedrs", [rec], hash_bits=16, label_names=())
    )
    assert archive.labels.shape == (1, 0)
    assert archive.record("p").streams == {"s1": {"y": b"x"}}


def test_name_from_header_and_override(tmp_path: Path, records: list[Record]) -> None:
    path = _write(tmp_path / "x.fedrs", records[:2], name="Lisbon archive")
    assert CompressedArchive.open(path).name == "Lisbon archive"
    assert CompressedArchive.open(path, name="other").name == "other"


def test_index_and_search(archive_path: Path) -> None:
    archive = CompressedArchive.open(archive_path)
    search = ArchiveSearch(archive)
    index = search.index()
    assert isinstance(index, HashIndex)
    assert np.array_equal(index.ids, np.arange(len(archive)))
    assert np.array_equal(index.packed_codes(), archive.codes)
    queries = np.random.default_rng(3).integers(0, 256, (5, BITS // 8), dtype=np.uint8)
    expected = index.search(queries, 4)
    got = search.search(queries, 4)
    assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    brute = np.unpackbits(queries[:, None, :] ^ archive.codes[None], axis=2).sum(axis=2)
    assert np.array_equal(got[0], np.sort(brute, axis=1, kind="stable")[:, :4])


def test_pickle_reopens(archive_path: Path, records: list[Record]) -> None:
    archive = CompressedArchive.open(archive_path, name="n")
    clone = pickle.loads(pickle.dumps(archive))
    assert clone.name == "n" and clone.patch_ids == archive.patch_ids
    _assert_same(clone.record(4), records[4], 4)


def test_closed_archive_keeps_arrays(archive_path: Path) -> None:
    archive = CompressedArchive.open(archive_path)
    archive.close()
    assert len(archive.codes) == len(archive)
    with pytest.raises(InputError, match="closed"):
        archive.record(0)


def test_unknown_patch_id(archive_path: Path) -> None:
    archive = CompressedArchive.open(archive_path)
    with pytest.raises(RecordNotFoundError, match="nope"):
        archive.record("nope")
    with pytest.raises(RecordNotFoundError):
        archive.record(len(archive))
    with pytest.raises(InputError):
        archive.patch_ids_at([0, len(archive)])
    assert archive.patch_ids_at(np.array([[1, 0]])).tolist() == [
        [archive.patch_ids[1], archive.patch_ids[0]]
    ]


# ------------------------------------------------------------------------------------------------
# Damaged records


def _record_start(data: bytes, patch_id: str) -> int:
    """Offset of the record of ``patch_id``: 12 bytes before its meta JSON."""
    at = data.find(b'{"patch_id": "' + patch_id.encode() + b'"')
    assert at > 0
    return at - 12


def test_corrupt_record_is_named_and_others_read(archive_path: Path, records: list[Record]) -> None:
    victim = records[3].patch_id
    data = bytearray(archive_path.read_bytes())
    at = data.find(f"PAYLOAD-{victim}".encode())
    data[at + 3] ^= 0x20
    archive_path.write_bytes(bytes(data))

    archive = CompressedArchive.open(archive_path)  # the index is intact
    with pytest.raises(CorruptRecordError, match="checksum") as info:
        archive.record(3)
    err = info.value
    assert err.record == victim and err.position == 3 and err.path == archive_path
    assert victim in str(err) and str(archive_path) in str(err)
    with pytest.raises(CorruptRecordError):
        archive.record(victim)
    for i, want in enumerate(records):
        if i != 3:
            _assert_same(archive.record(i), want, i)

    with pytest.raises(CorruptRecordError):
        list(archive.iter_records())
    good = archive.iter_records(skip_bad=True)
    assert [r.patch_id for r in good] == [r.patch_id for i, r in enumerate(records) if i != 3]
    assert [e.record for e in good.skipped] == [victim]
    assert [e.position for e in archive.verify()] == [3]
    restored = pickle.loads(pickle.dumps(err))
    assert type(restored) is CorruptRecordError and str(restored) == str(err)


def test_record_disagreeing_with_index_is_corrupt(
    archive_path: Path, records: list[Record]
) -> None:
    """A record whose CRC is valid but whose code differs from the index is still rejected."""
    data = bytearray(archive_path.read_bytes())
    start = _record_start(bytes(data), records[5].patch_id)
    rec_len, _ = struct.unpack_from("<II", data, start)
    (meta_len,) = struct.unpack_from("<I", data, start + 8)
    data[start + 12 + meta_len] ^= 0x01  # first code byte
    body = bytes(data[start + 8 : start + 4 + rec_len])
    struct.pack_into("<I", data, start + 4, zlib.crc32(body))
    archive_path.write_bytes(bytes(data))
    archive = CompressedArchive.open(archive_path)
    with pytest.raises(CorruptRecordError, match="hash code differs") as info:
        archive.record(5)
    assert info.value.record == records[5].patch_id
    _assert_same(archive.record(4), records[4], 4)


def _forge_meta(path: Path, patch_id: str, forge: Callable[[bytes], bytes]) -> None:
    """Replace a record's meta JSON, keep the record's size (trim or pad the payload's end)
    and give it a valid CRC: damage that only the structural checks can catch."""
    data = path.read_bytes()
    start = _record_start(data, patch_id)
    rec_len, _ = struct.unpack_from("<II", data, start)
    (meta_len,) = struct.unpack_from("<I", data, start + 8)
    end = start + 4 + rec_len
    meta = data[start + 12 : start + 12 + meta_len]
    rest = data[start + 12 + meta_len : end]
    forged = forge(meta)
    delta = len(forged) - len(meta)
    assert delta < len(rest), "the record is too small for this forgery"
    rest = rest[: len(rest) - delta] if delta >= 0 else rest + bytes(-delta)
    body = struct.pack("<I", len(forged)) + forged + rest
    record = struct.pack("<II", len(body) + 4, zlib.crc32(body)) + body
    assert len(record) == end - start
    path.write_bytes(data[:start] + record + data[end:])


def test_bad_record_structure_with_valid_crc(archive_path: Path, records: list[Record]) -> None:
    """A stream length in the meta that overruns the record is caught, not trusted."""
    length = len(records[2].streams["s2"]["y"])
    _forge_meta(
        archive_path,
        records[2].patch_id,
        lambda m: m.replace(f'["y", {length}]'.encode(), f'["y", {length + 9 * 10**8}]'.encode()),
    )
    archive = CompressedArchive.open(archive_path)
    with pytest.raises(CorruptRecordError, match="past the end"):
        archive.record(2)
    _assert_same(archive.record(3), records[3], 3)


@pytest.mark.parametrize(
    ("forgery", "message"),
    [
        (b"[" * 5000 + b"]" * 5000, "JSON"),
        (b'{"patch_id": "q", "streams": []}', "differs from the index"),
        (b'{"patch_id": "p", "streams": []}', "after the last stream"),
        (b'{"patch_id": "p", "streams": [["s2", [["y", -1]]]]}', "bad stream entry"),
        (b'{"patch_id": "p", "streams": [], "georef": {"s2": {"crs": "x"}}}', "lacks"),
        (b'{"patch_id": "p", "streams": [], "shapes": {"s2": {"y": [true]}}}', "bad shape"),
        (
            b'{"patch_id": "p", "streams": [], "georef": {"s2": {"crs": "E", "transform": '
            b'[1e999, 0, 0, 0, 1, 0], "width": 1, "height": 1}}}',
            "finite",
        ),
        (b"\xff\xfe", "UTF-8"),
        (b"[1, 2]", "not a JSON object"),
    ],
)
def test_forged_record_meta_is_rejected(tmp_path: Path, forgery: bytes, message: str) -> None:
    path = tmp_path / "f.fedrs"
    big = Record("p", np.zeros(2, np.uint8), streams={"s2": {"y": bytes(20000)}})
    _write(path, [big, Record("q", np.ones(2, np.uint8))], hash_bits=16)
    original = path.read_bytes()
    _forge_meta(path, "p", lambda _: forgery)
    assert path.read_bytes() != original
    archive = CompressedArchive.open(path)
    with pytest.raises(CorruptRecordError, match=message) as info:
        archive.record("p")
    assert info.value.record == "p"
    assert archive.record("q").patch_id == "q"


# ------------------------------------------------------------------------------------------------
# Damaged or foreign files


@pytest.mark.parametrize("keep", [0, 5, 9, 40, 200, -1, -8, -33, -100])
def test_truncated_file(archive_path: Path, keep: int) -> None:
    data = archive_path.read_bytes()
    archive_path.write_bytes(data[:keep] if keep >= 0 else data[: len(data) + keep])
    expected = NotAContainerError if 0 <= keep < len(MAGIC) else CorruptArchiveError
    with pytest.raises(expected, match=str(archive_path.name)):
        CompressedArchive.open(archive_path)


def test_not_a_container(tmp_path: Path) -> None:
    text = tmp_path / "notes.fedrs"
    text.write_text("hello, this is not an archive at all, but it is long enough " * 4)
    with pytest.raises(NotAContainerError, match="magic"):
        CompressedArchive.open(text)
    with pytest.raises(NotAContainerError, match="no such file"):
        CompressedArchive.open(tmp_path / "missing.fedrs")
    with pytest.raises(NotAContainerError, match="regular file"):
        CompressedArchive.open(tmp_path)


def test_faiss_index_file_is_not_a_container(tmp_path: Path) -> None:
    index = HashIndex(16)
    index.add(np.zeros((3, 2), np.uint8))
    path = index.save(tmp_path / "x.fedrs")
    with pytest.raises(NotAContainerError):
        CompressedArchive.open(path)


@pytest.mark.parametrize("version", [0, 2, 65535])
def test_version_mismatch(archive_path: Path, version: int) -> None:
    data = bytearray(archive_path.read_bytes())
    struct.pack_into("<H", data, 8, version)
    archive_path.write_bytes(bytes(data))
    with pytest.raises(ContainerVersionError) as info:
        CompressedArchive.open(archive_path)
    assert info.value.found == version and info.value.supported == FORMAT_VERSION
    assert f"written by format version {version}; this fedrs reads {FORMAT_VERSION}" in str(
        info.value
    )
    assert pickle.loads(pickle.dumps(info.value)).found == version


def test_header_names_the_container_format(archive_path: Path) -> None:
    (length,) = struct.unpack_from("<I", archive_path.read_bytes(), 12)
    header = archive_path.read_bytes()[32 : 32 + length]
    assert CONTAINER_FORMAT == "fedrs-container"
    assert b'"format": "fedrs-container"' in header or b'"format":"fedrs-container"' in header


@pytest.mark.parametrize("older", ["fedrs-archive"])
def test_older_format_name_is_read_alike(
    tmp_path: Path, records: list[Record], older: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fedrs.container.writer, "CONTAINER_FORMAT", older)
    path = _write(tmp_path / "older.fedrs", records)
    assert f'"{older}"'.encode() in path.read_bytes()[:4096]
    with CompressedArchive.open(path) as archive:
        assert len(archive) == len(records)
        for i, want in enumerate(records):
            _assert_same(archive.record(i), want, i)


@pytest.mark.parametrize("other", ["fedrs-cache", ["fedrs-container"], {"a": 1}, None])
def test_other_format_name_is_refused(
    tmp_path: Path, records: list[Record], other: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fedrs.container.writer, "CONTAINER_FORMAT", other)
    path = _write(tmp_path / "other.fedrs", records)
    with pytest.raises(CorruptArchiveError, match="not a fedrs-container header"):
        CompressedArchive.open(path)


def test_damaged_header(archive_path: Path) -> None:
    data = bytearray(archive_path.read_bytes())
    data[40] ^= 0xFF
    archive_path.write_bytes(bytes(data))
    with pytest.raises(CorruptArchiveError, match="header"):
        CompressedArchive.open(archive_path)


def test_damaged_index(archive_path: Path) -> None:
    data = bytearray(archive_path.read_bytes())
    data[-40] ^= 0x01  # inside the patch-id block of the index
    archive_path.write_bytes(bytes(data))
    with pytest.raises(CorruptArchiveError, match="index"):
        CompressedArchive.open(archive_path)


def test_huge_count_in_index_is_rejected_without_allocation(archive_path: Path) -> None:
    """A forged index (valid CRC) claiming 2**40 records must fail on the size check."""
    data = bytearray(archive_path.read_bytes())
    index_offset, index_len = struct.unpack_from("<QQ", data, len(data) - 32)
    struct.pack_into("<Q", data, index_offset, 2**40)
    struct.pack_into("<Q", data, index_offset + 16, 2**62)  # ids_length
    crc = zlib.crc32(bytes(data[index_offset : index_offset + index_len]))
    struct.pack_into("<I", data, len(data) - 16, crc)
    archive_path.write_bytes(bytes(data))
    with pytest.raises(CorruptArchiveError, match="do not fit"):
        CompressedArchive.open(archive_path)


@pytest.mark.parametrize(
    ("offset", "where"), [(20, "preamble"), (31, "preamble"), (-12, "trailer")]
)
def test_reserved_bytes_must_be_zero(archive_path: Path, offset: int, where: str) -> None:
    """The preamble's and the trailer's reserved bytes are outside every CRC: checked alone."""
    data = bytearray(archive_path.read_bytes())
    data[offset] = 1
    archive_path.write_bytes(bytes(data))
    with pytest.raises(CorruptArchiveError, match=f"reserved bytes in the {where}"):
        CompressedArchive.open(archive_path)


def test_patch_id_that_cannot_name_a_file_is_a_corrupt_record(
    tmp_path: Path, records: list[Record], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forged archive (the writer refuses such ids) whose ids traverse: each record is
    refused when read, named, and skippable; the other records read."""
    import fedrs.container.writer as container

    forged = {2: "../../../outside", 5: "/abs/x", 7: "a\x1b[2Jb"}
    for position, pid in forged.items():
        records[position].patch_id = pid
    with monkeypatch.context() as writing:
        writing.setattr(container, "name_problem", lambda name: None, raising=False)
        path = _write(tmp_path / "forged.fedrs", records)
    with CompressedArchive.open(path) as archive:  # the index is sound
        for position, pid in forged.items():
            with pytest.raises(CorruptRecordError, match="cannot name a file") as info:
                archive.record(position)
            assert info.value.record == pid and info.value.position == position
        good = archive.iter_records(skip_bad=True)
        assert [r.position for r in good] == [i for i in range(len(records)) if i not in forged]
        assert [e.record for e in good.skipped] == list(forged.values())


def test_huge_header_length_is_rejected(archive_path: Path) -> None:
    data = bytearray(archive_path.read_bytes())
    struct.pack_into("<I", data, 12, 2**32 - 1)
    archive_path.write_bytes(bytes(data))
    with pytest.raises(CorruptArchiveError, match="exceeds the file size"):
        CompressedArchive.open(archive_path)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_random_damage_never_crashes(
    tmp_path: Path, records: list[Record], flips: list[tuple[int, int]], cut: int | None
) -> None:
    """Any damage gives a typed error (per archive or per record), never anything else."""
    path = tmp_path / "fuzz.fedrs"
    if not path.exists():
        _write(path, records)
    original = path.read_bytes()
    data = bytearray(original)
    for at, mask in flips:
        data[at % len(data)] ^= mask
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    damaged = tmp_path / "damaged.fedrs"
    damaged.write_bytes(bytes(data))
    try:
        archive = CompressedArchive.open(damaged)
    except ContainerError:
        return
    with archive:
        good = archive.iter_records(skip_bad=True)
        count = 0
        for record in good:
            assert record.position is not None
            position = record.position
            _assert_same(record, records[position], position)
            count += 1
        assert count + len(good.skipped) == len(archive) == len(records)


# ------------------------------------------------------------------------------------------------
# Writing


def test_overwrite_protection(archive_path: Path, records: list[Record]) -> None:
    before = archive_path.read_bytes()
    with pytest.raises(ContainerExistsError, match="overwrite=True"):
        ArchiveWriter(archive_path, hash_bits=BITS, model_fingerprint="m", label_names=LABELS)
    assert archive_path.read_bytes() == before
    _write(archive_path, records[:2], overwrite=True)
    assert len(CompressedArchive.open(archive_path)) == 2
    assert sorted(p.name for p in archive_path.parent.iterdir()) == [archive_path.name]


def test_target_appearing_during_write_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "race.fedrs"
    writer = ArchiveWriter(path, hash_bits=16, model_fingerprint="m", label_names=LABELS)
    writer.add(Record("p", np.zeros(2, np.uint8)))
    path.write_bytes(b"someone else's file")
    with pytest.raises(ContainerExistsError):
        writer.close()
    assert path.read_bytes() == b"someone else's file"
    assert [p.name for p in tmp_path.iterdir()] == ["race.fedrs"]


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_interrupted_write_leaves_no_file(
    tmp_path: Path, records: list[Record], exc_type: type[BaseException]
) -> None:
    path = tmp_path / "partial.fedrs"
    with pytest.raises(exc_type):
        with ArchiveWriter(path, hash_bits=BITS, model_fingerprint="m", label_names=LABELS) as w:
            w.add(records[0])
            w.add(records[1])
            raise exc_type("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_the_old_file(
    archive_path: Path, records: list[Record]
) -> None:
    before = archive_path.read_bytes()
    with pytest.raises(RuntimeError):
        with ArchiveWriter(
            archive_path, hash_bits=BITS, model_fingerprint="m", label_names=LABELS, overwrite=True
        ) as writer:
            writer.add(records[0])
            raise RuntimeError("boom")
    assert archive_path.read_bytes() == before
    assert [p.name for p in archive_path.parent.iterdir()] == [archive_path.name]


def test_unclosed_writer_discards_its_temporary(tmp_path: Path) -> None:
    writer = ArchiveWriter(
        tmp_path / "lost.fedrs", hash_bits=16, model_fingerprint="m", label_names=LABELS
    )
    writer.add(Record("p", np.zeros(2, np.uint8)))
    assert len(list(tmp_path.iterdir())) == 1  # the temporary file
    del writer
    gc.collect()
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_bad_records_and_stays_usable(tmp_path: Path) -> None:
    path = tmp_path / "v.fedrs"
    with ArchiveWriter(path, hash_bits=16, model_fingerprint="m", label_names=LABELS) as writer:
        writer.add(Record("ok", np.zeros(2, np.uint8)))
        bad = [
            (Record("ok", np.zeros(2, np.uint8)), "duplicate"),
            (Record("", np.zeros(2, np.uint8)), "patch_id"),
            (Record("a\x00b", np.zeros(2, np.uint8)), "patch_id"),
            (Record("../../etc/x", np.zeros(2, np.uint8)), "cannot name a file"),
            (Record("/abs/x", np.zeros(2, np.uint8)), "cannot name a file"),
            (Record(".hidden", np.zeros(2, np.uint8)), "cannot name a file"),
            (Record("c", np.zeros(3, np.uint8)), "16-bit"),
            (Record("c", np.zeros((1, 2), np.uint8)), "1-D"),
            (Record("c", np.zeros(2, np.uint8), streams={"s2": {"y": "text"}}), "bytes"),  # type: ignore[dict-item]
            (Record("c", np.zeros(2, np.uint8), streams={"s2": b"x"}), "mapping"),  # type: ignore[dict-item]
            (Record("c", np.zeros(2, np.uint8), shapes={"s2": {"y": [1, -2]}}), "non-negative"),
            (Record("c", np.zeros(2, np.uint8), labels=["nope"]), "unknown class"),
            (Record("c", np.zeros(2, np.uint8), labels="forest"), "single string"),
            (Record("c", np.zeros(2, np.uint8), labels=np.full(len(LABELS), 0.5)), "0 or 1"),
            (Record("c", np.zeros(2, np.uint8), labels=np.ones(3)), "multi-hot"),
            (
                Record("c", np.zeros(2, np.uint8), georef={"s2": {"crs": "EPSG:1", "width": 1}}),  # type: ignore[dict-item]
                "lacks",
            ),
            (
                Record(
                    "c",
                    np.zeros(2, np.uint8),
                    georef={"s2": GeoReference("EPSG:1", (1, 0, 0, 0, float("nan"), 0), 1, 1)},
                ),
                "finite",
            ),
            (
                Record(
                    "c",
                    np.zeros(2, np.uint8),
                    georef={"s2": GeoReference("EPSG:1", (1, 0, 0, 0, 1, 0, 5), 1, 1)},  # type: ignore[arg-type]
                ),
                "6 finite",
            ),
        ]
        for record, message in bad:
            with pytest.raises(InputError, match=message):
                writer.add(record)
        assert writer.add(Record("last", np.zeros(2, np.uint8))) == 1
    assert CompressedArchive.open(path).patch_ids == ("ok", "last")


def test_writer_argument_checks(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="multiple of 8"):
        ArchiveWriter(tmp_path / "a.fedrs", hash_bits=12, model_fingerprint="m", label_names=LABELS)
    with pytest.raises(InputError, match="model_fingerprint"):
        ArchiveWriter(tmp_path / "a.fedrs", hash_bits=16, model_fingerprint="", label_names=LABELS)
    with pytest.raises(InputError, match="JSON"):
        ArchiveWriter(
            tmp_path / "a.fedrs", hash_bits=16, model_fingerprint="m", meta={"x": object()}
        )
    with pytest.raises(InputError, match="does not exist"):
        ArchiveWriter(
            tmp_path / "no" / "a.fedrs", hash_bits=16, model_fingerprint="m", label_names=LABELS
        )
    with pytest.raises(InputError, match="duplicate"):
        ArchiveWriter(
            tmp_path / "a.fedrs", hash_bits=16, model_fingerprint="m", label_names=["a", "a"]
        )
    assert list(tmp_path.iterdir()) == []
    writer = ArchiveWriter(
        tmp_path / "a.fedrs", hash_bits=16, model_fingerprint="m", label_names=LABELS
    )
    writer.close()
    with pytest.raises(InputError, match="closed"):
        writer.add(Record("p", np.zeros(2, np.uint8)))


def test_errors_are_input_errors() -> None:
    for cls in (
        ContainerError,
        NotAContainerError,
        CorruptArchiveError,
        ContainerExistsError,
        ContainerVersionError,
        CorruptRecordError,
        RecordNotFoundError,
    ):
        assert issubclass(cls, InputError) and issubclass(cls, ValueError)
    err = CorruptArchiveError("/x/y.fedrs", "bad")
    assert str(pickle.loads(pickle.dumps(err))) == str(err) == "/x/y.fedrs: bad"
