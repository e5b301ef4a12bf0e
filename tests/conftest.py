"""Fixtures: the real BigEarthNet samples in tests/data/bigearthnet (or ``$FEDRS_SHARED_DATA``)."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from _data import DATA_ROOT

# One thread per test process: two threads on two busy cores run many small ops far slower.
torch.set_num_threads(1)


def _data(*parts: str) -> Path:
    path = DATA_ROOT.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: the BigEarthNet reference data is expected in tests/data/bigearthnet "
            "(or at $FEDRS_SHARED_DATA when that is set)"
        )
    return path


@pytest.fixture(scope="session")
def v1_sample() -> Path:
    return _data("v1-sample")


@pytest.fixture(scope="session")
def v2_sample() -> Path:
    return _data("v2-sample")


@pytest.fixture(scope="session")
def v2_metadata() -> Path:
    return _data("metadata", "v2-metadata.parquet")


@pytest.fixture(scope="session")
def facts_json() -> Path:
    return _data("facts.json")


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


@pytest.fixture
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower reads the sender's identity when a message is built; a ServerApp run sets it."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)


@pytest.fixture
def default_signals() -> Iterator[None]:
    """SIGINT and SIGTERM handled as in a foreground terminal for the test, then restored.

    A shell starting a command in the background without job control ignores SIGINT for it,
    and every child inherits the ignore; tests that send a signal get the defaults (a child
    started meanwhile gets them too: a handler resets to the default at ``exec``)."""
    old = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        for signum, handler in old.items():
            if handler is not None:
                signal.signal(signum, handler)
