"""Tests of federated search (fedrs.retrieval.federated): equal to one central index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrs.container import ArchiveWriter, CompressedArchive, Record
from fedrs.errors import InputError
from fedrs.retrieval import PAD_DISTANCE, PAD_ID, ArchiveSearch
from fedrs.retrieval.federated import (
    CentralIndex,
    Hit,
    IndexParticipant,
    ParticipantError,
    SearchParticipant,
    SearchResult,
    _merge_order,
    central_search,
    federated_search,
)

LABELS = ("a", "b", "c")


def _reference(parts: list[np.ndarray], queries: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Brute force over the concatenation: sort on (distance, global position) per query."""
    db = np.concatenate(parts) if parts else np.zeros((0, queries.shape[1]), np.uint8)
    n = db.shape[0]
    dist = np.unpackbits(queries[:, None, :] ^ db[None, :, :], axis=2).sum(axis=2)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    kk = order.shape[1]
    distances = np.full((queries.shape[0], k), PAD_DISTANCE, np.int64)
    positions = np.full((queries.shape[0], k), PAD_ID, np.int64)
    distances[:, :kk] = np.take_along_axis(dist, order, axis=1)
    positions[:, :kk] = order
    assert kk == min(k, n)
    return distances, positions


def _participants(parts: list[np.ndarray]) -> list[IndexParticipant]:
    return [
        IndexParticipant(
            f"archive-{a}",
            codes,
            bits=16,
            patch_ids=[f"{a}:{i}" for i in range(len(codes))],
            model_fingerprint="m",
        )
        for a, codes in enumerate(parts)
    ]


def _check_against_reference(
    result: SearchResult, parts: list[np.ndarray], queries: np.ndarray, k: int
) -> None:
    distances, global_positions = _reference(parts, queries, k)
    assert np.array_equal(result.distances, distances)
    assert np.array_equal(result.global_positions, global_positions)
    found = global_positions >= 0
    expected_ids = np.where(
        found,
        np.char.add(np.char.add(result.archives.astype(str), ":"), result.positions.astype(str)),
        "",
    )
    got_ids = np.where(found, result.patch_ids, "").astype(str)
    assert np.array_equal(got_ids, expected_ids)
    assert (result.patch_ids[~found] == None).all()  # noqa: E711 (elementwise)


# ------------------------------------------------------------------------------------------------
# Equality with the central index


def test_many_ties_with_empty_and_small_archives() -> None:
    rng = np.random.default_rng(0)
    # 16-bit codes drawn from 6 values: most distances tie.
    alphabet = rng.integers(0, 256, (6, 2), dtype=np.uint8)
    sizes = [40, 0, 3, 25, 1, 60]
    parts = [alphabet[rng.integers(0, 6, n)] for n in sizes]
    queries = alphabet[rng.integers(0, 6, 30)]
    participants = _participants(parts)
    for k in (1, 2, 5, 20, 100, 129, 200):
        fed = federated_search(participants, queries, k)
        central = central_search(participants, queries, k)
        assert fed == central, k
        _check_against_reference(fed, parts, queries, k)
        assert fed.k == k and len(fed) == len(queries)


@settings(max_examples=80, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6),
    alphabet=st.integers(1, 8),
    n_queries=st.integers(0, 6),
    k=st.integers(1, 70),
    seed=st.integers(0, 2**32 - 1),
)
def test_federated_equals_central_property(
    sizes: list[int], alphabet: int, n_queries: int, k: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 256, (alphabet, 2), dtype=np.uint8)
    parts = [values[rng.integers(0, alphabet, n)] for n in sizes]
    queries = values[rng.integers(0, alphabet, n_queries)] ^ rng.integers(
        0, 2, (n_queries, 2), dtype=np.uint8
    )
    participants = _participants(parts)
    fed = federated_search(participants, queries, k)
    assert fed == central_search(participants, queries, k)
    _check_against_reference(fed, parts, queries, k)


def test_archive_order_breaks_ties() -> None:
    same = np.zeros((2, 2), np.uint8)
    a, b = IndexParticipant("a", same, bits=16), IndexParticipant("b", same, bits=16)
    query = np.zeros((1, 2), np.uint8)
    first = federated_search([a, b], query, 3)
    assert [(h.archive_name, h.position) for h in first[0]] == [("a", 0), ("a", 1), ("b", 0)]
    swapped = federated_search([b, a], query, 3)
    assert [(h.archive_name, h.position) for h in swapped[0]] == [("b", 0), ("b", 1), ("a", 0)]


def test_padding_when_k_exceeds_all_records() -> None:
    parts = [np.array([[1, 2]], np.uint8), np.zeros((0, 2), np.uint8), np.array([[1, 3]], np.uint8)]
    participants = _participants(parts)
    result = federated_search(participants, np.array([[1, 2]], np.uint8), 4)
    assert result == central_search(participants, np.array([[1, 2]], np.uint8), 4)
    assert result.distances.tolist() == [[0, 1, PAD_DISTANCE, PAD_DISTANCE]]
    assert result.archives.tolist() == [[0, 2, -1, -1]]
    assert result.positions.tolist() == [[0, 0, -1, -1]]
    assert result.patch_ids.tolist() == [["0:0", "2:0", None, None]]
    assert result[0] == [Hit(0, "archive-0", "0:0", 0, 0), Hit(2, "archive-2", "2:0", 1, 0)]


def test_all_archives_empty_and_no_queries() -> None:
    participants = _participants([np.zeros((0, 2), np.uint8)] * 2)
    result = federated_search(participants, np.zeros((2, 16), np.int8), 3)
    assert result == central_search(participants, np.zeros((2, 16), np.int8), 3)
    assert (result.archives == -1).all() and result[1] == []
    none = federated_search(
        _participants([np.ones((4, 2), np.uint8)]), np.zeros((0, 2), np.uint8), 5
    )
    assert none.distances.shape == (0, 5) and none.to_lists() == []


def test_merge_fallback_for_huge_archives_agrees() -> None:
    """The three-key lexsort used when the single key could overflow gives the same order."""
    rng = np.random.default_rng(5)
    dist = rng.integers(0, 4, (20, 30)).astype(np.int64)
    gpos = rng.permutation(600)[:600].reshape(20, 30).astype(np.int64)
    gpos[:, -3:] = -1
    dist[:, -3:] = PAD_DISTANCE
    for k in (1, 7, 27, 40):
        fast = _merge_order(dist, gpos, k, bits=16, total=600)
        slow = _merge_order(dist, gpos, k, bits=2**62, total=600)
        kk = min(k, 27)
        assert np.array_equal(fast[:, :kk], slow[:, :kk])


# ------------------------------------------------------------------------------------------------
# With archives on disk


def _write_archive(path: Path, codes: np.ndarray, prefix: str, fingerprint: str = "m") -> Path:
    with ArchiveWriter(path, hash_bits=16, model_fingerprint=fingerprint, label_names=LABELS) as w:
        for i, code in enumerate(codes):
            w.add(Record(f"{prefix}-{i}", code, streams={"s2": {"y": bytes([i % 256])}}))
    return path


def test_federated_over_compressed_archives(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    alphabet = rng.integers(0, 256, (5, 2), dtype=np.uint8)
    parts = [alphabet[rng.integers(0, 5, n)] for n in (17, 0, 4, 33)]
    archives = [
        ArchiveSearch(
            CompressedArchive.open(_write_archive(tmp_path / f"c{a}.fedrs", codes, f"c{a}"))
        )
        for a, codes in enumerate(parts)
    ]
    in_memory = IndexParticipant("mem", rng.integers(0, 256, (9, 2), dtype=np.uint8), bits=16)
    mixed: list[Any] = [*archives, in_memory]
    queries = alphabet[rng.integers(0, 5, 12)]
    fed = federated_search(mixed, queries, 10)
    assert fed == central_search(mixed, queries, 10)
    assert fed.archive_names == ("c0", "c1", "c2", "c3", "mem")
    for hit in fed[3]:
        if hit.archive < 4:
            assert hit.patch_id == f"c{hit.archive}-{hit.position}"
            record = archives[hit.archive].archive.record(hit.patch_id)
            assert record.streams["s2"]["y"] == bytes([hit.position % 256])
    assert isinstance(archives[0], SearchParticipant)


# ------------------------------------------------------------------------------------------------
# What each participant sees and answers


class _Spy:
    """A participant that records what it is asked; optionally answers badly."""

    def __init__(self, name: str, codes: np.ndarray, answer: str = "ok") -> None:
        self._inner = IndexParticipant(name, codes, bits=16)
        self.name = name
        self.hash_bits = 16
        self.model_fingerprint: str | None = None
        self.answer = answer
        self.asked: list[int] = []
        self.named: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._inner)

    def search(self, query_codes: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.asked.append(k)
        d, p = self._inner.search(query_codes, k)
        if self.answer == "shape":
            return d[:, :-1], p[:, :-1]
        if self.answer == "range":
            return d, p + len(self)
        if self.answer == "distance":
            return d + 99, p
        if self.answer == "unsorted":
            return d[:, ::-1], p[:, ::-1]
        if self.answer == "repeated":
            return d[:, [0, 0, 1]], p[:, [0, 0, 1]]
        return d, p

    def patch_ids_at(self, positions: Any) -> np.ndarray:
        self.named.append(np.asarray(positions))
        return self._inner.patch_ids_at(positions)


def test_participants_answer_only_their_top_k() -> None:
    rng = np.random.default_rng(2)
    spies = [
        _Spy(f"s{i}", rng.integers(0, 256, (n, 2), dtype=np.uint8))
        for i, n in enumerate((50, 3, 0, 20))
    ]
    result = federated_search(spies, rng.integers(0, 256, (4, 2), dtype=np.uint8), 8)
    assert [s.asked for s in spies] == [[8], [3], [], [8]]
    for a, spy in enumerate(spies):
        named = np.concatenate(spy.named) if spy.named else np.zeros(0, np.int64)
        assert sorted(named.tolist()) == sorted(result.positions[result.archives == a].tolist())
    assert not isinstance(spies[0], CentralIndex)
    with pytest.raises(ParticipantError, match="does not share"):
        central_search(spies, np.zeros((1, 2), np.uint8), 3)  # type: ignore[arg-type]


@pytest.mark.parametrize("answer", ["shape", "range", "distance", "unsorted", "repeated"])
def test_malformed_answers_name_the_participant(answer: str) -> None:
    good = _Spy("good", np.zeros((5, 2), np.uint8))
    bad = _Spy("bad-archive", np.ones((5, 2), np.uint8), answer=answer)
    with pytest.raises(ParticipantError, match="bad-archive"):
        federated_search([good, bad], np.zeros((2, 2), np.uint8), 3)


def test_input_checks(tmp_path: Path) -> None:
    a = IndexParticipant("a", np.zeros((3, 2), np.uint8))
    wide = IndexParticipant("wide", np.zeros((3, 4), np.uint8))
    with pytest.raises(InputError, match="no archive"):
        federated_search([], np.zeros((1, 2), np.uint8), 1)
    with pytest.raises(ParticipantError, match="code lengths"):
        federated_search([a, wide], np.zeros((1, 2), np.uint8), 1)
    with pytest.raises(ParticipantError, match="not a search participant"):
        federated_search([a, "b"], np.zeros((1, 2), np.uint8), 1)  # type: ignore[list-item]
    with pytest.raises(InputError, match="k"):
        federated_search([a], np.zeros((1, 2), np.uint8), 0)
    with pytest.raises(InputError, match="16-bit"):
        federated_search([a], np.zeros((1, 4), np.uint8), 1)
    with pytest.raises(InputError, match="16-bit"):
        central_search([a], np.zeros((1, 4), np.uint8), 1)
    with pytest.raises(InputError, match="patch ids"):
        IndexParticipant("x", np.zeros((3, 2), np.uint8), patch_ids=["p"])
    m1 = ArchiveSearch(
        CompressedArchive.open(
            _write_archive(tmp_path / "m1.fedrs", np.zeros((2, 2), np.uint8), "x", "model-1")
        )
    )
    m2 = ArchiveSearch(
        CompressedArchive.open(
            _write_archive(tmp_path / "m2.fedrs", np.zeros((2, 2), np.uint8), "y", "model-2")
        )
    )
    with pytest.raises(ParticipantError, match="different models"):
        federated_search([m1, m2], np.zeros((1, 2), np.uint8), 1)
    # An in-memory participant of unknown model joins either.
    assert len(federated_search([m1, a], np.zeros((1, 2), np.uint8), 5)[0]) == 5


def test_result_access() -> None:
    parts = [np.array([[0, 0], [0, 1]], np.uint8), np.array([[0, 3]], np.uint8)]
    result = federated_search(_participants(parts), np.array([[0, 0], [0, 3]], np.uint8), 2)
    assert result[-1] == result[1]
    assert [h.patch_id for h in result[1]] == ["1:0", "0:1"]
    assert result.to_lists() == [result[0], result[1]]
    assert result.offsets.tolist() == [0, 2, 3]
    with pytest.raises(IndexError):
        result[2]
    assert result != federated_search(_participants(parts), np.array([[0, 0], [0, 0]], np.uint8), 2)
