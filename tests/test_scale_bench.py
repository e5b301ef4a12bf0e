"""The pure helpers of ``bench/scale.py``: spread rows, a round's parts, ratios, folder bytes."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from _data import load_bench


@pytest.fixture(scope="module")
def scale() -> ModuleType:
    return load_bench("scale")


def test_spread_rows_cover_the_archive_and_offsets_are_disjoint(scale: ModuleType) -> None:
    rows = [scale.spread_rows(2000, 512, offset) for offset in range(3)]
    for found in rows:
        assert len(found) == 512 and len(set(found.tolist())) == 512
        assert found.min() >= 0 and found.max() < 2000
        assert found.max() - found.min() > 1500  # spread, not the first rows
    assert not set(rows[0].tolist()) & set(rows[1].tolist())
    assert not set(rows[1].tolist()) & set(rows[2].tolist())
    np.testing.assert_array_equal(scale.spread_rows(100, 512), np.arange(100))


def test_round_parts_add_up(scale: ModuleType) -> None:
    parts = scale.round_parts([100.0, 80.0], [40.0, 50.0], [30.0, 25.0])
    assert parts == [
        {"round_s": 100.0, "train_s": 40.0, "eval_s": 30.0, "rest_s": 30.0},
        {"round_s": 80.0, "train_s": 50.0, "eval_s": 25.0, "rest_s": 5.0},
    ]
    with pytest.raises(ValueError):
        scale.round_parts([1.0], [1.0, 2.0], [1.0])


def test_ratio(scale: ModuleType) -> None:
    assert scale.ratio(2.0, 5.0) == 2.5
    assert scale.ratio(None, 5.0) is None
    assert scale.ratio(0, 5.0) is None


def test_tree_bytes(scale: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"123")
    (tmp_path / "y.bin").write_bytes(b"45")
    (tmp_path / "link").symlink_to(tmp_path / "y.bin")
    assert scale.tree_bytes(tmp_path) == 5
