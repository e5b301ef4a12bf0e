"""Shared fixtures: the real BigEarthNet samples beside the repository (../shared/data)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

# One thread per test process: two threads on two busy cores run many small ops far slower.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(
    os.environ.get("FEDRS_SHARED_DATA", REPO.parent / "shared" / "data" / "bigearthnet")
)


def _shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: the BigEarthNet reference data is expected beside the repository "
            "(../shared/data/bigearthnet) or at $FEDRS_SHARED_DATA"
        )
    return path


@pytest.fixture(scope="session")
def v1_sample() -> Path:
    return _shared("v1-sample")


@pytest.fixture(scope="session")
def v2_sample() -> Path:
    return _shared("v2-sample")


@pytest.fixture(scope="session")
def v2_metadata() -> Path:
    return _shared("metadata", "v2-metadata.parquet")


@pytest.fixture(scope="session")
def facts_json() -> Path:
    return _shared("facts.json")


@pytest.fixture
def v1_copy(tmp_path: Path, v1_sample: Path) -> Path:
    """A writable copy of the v1 sample."""
    return Path(shutil.copytree(v1_sample, tmp_path / "v1"))


@pytest.fixture
def v2_copy(tmp_path: Path, v2_sample: Path, v2_metadata: Path) -> Path:
    """A writable copy of the v2 sample with its rows of the official metadata."""
    import pandas as pd

    root = Path(shutil.copytree(v2_sample, tmp_path / "v2"))
    meta = pd.read_parquet(v2_metadata)
    names = {p.name for p in root.glob("BigEarthNet-S*/*/*")}
    keep = meta["patch_id"].isin(names) | meta["s1_name"].isin(names)
    meta[keep].to_parquet(root / "metadata.parquet", index=False)
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fedrs cache folder per test module (synthetic archives built once per module)."""
    return tmp_path_factory.mktemp("fedrs-cache")


@pytest.fixture
def cache_env(monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> Path:
    """``$FEDRS_CACHE_DIR`` pointing at :func:`cache_dir` (modules opt in with ``usefixtures``)."""
    monkeypatch.setenv("FEDRS_CACHE_DIR", str(cache_dir))
    return cache_dir
