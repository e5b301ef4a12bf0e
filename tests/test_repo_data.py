"""The suite needs only the repository: the real BigEarthNet data lives in tests/data/bigearthnet.

A copy of ``tests/`` and ``pyproject.toml`` in a temporary folder (nothing beside it) runs the
tests that read the real samples and the full v2.0 metadata, with ``$FEDRS_SHARED_DATA`` unset.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import _data
import pandas as pd
import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
# Spelled in two pieces so that this file does not match its own search.
OUTSIDE_REFERENCES = ("../" + "shared", "shared" + "/data")
TEXT_SUFFIXES = {".py", ".md", ".txt", ".toml", ".cfg", ".ini", ".json", ".sh", ".yaml", ".yml"}
# Fast tests that read v1_sample, v2_sample and every row of v2_metadata (about 20 s together).
DATA_TESTS = (
    "tests/test_data.py",
    "tests/test_partitions.py::test_real_v2_metadata_all_partitions",
    "tests/test_partitions.py::test_cli_real_v2_sample",
    "tests/test_retrieval.py::test_random_codes_near_label_prior",
)


def _env_without_override() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FEDRS_SHARED_DATA"}
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_default_data_root_is_in_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDRS_SHARED_DATA", raising=False)
    root = _data.data_root()
    assert root == REPO / "tests" / "data" / "bigearthnet"
    assert root.is_relative_to(REPO)
    monkeypatch.setenv("FEDRS_SHARED_DATA", "/elsewhere/bigearthnet")
    assert _data.data_root() == Path("/elsewhere/bigearthnet")


def test_committed_data_is_complete() -> None:
    root = _data.COMMITTED_DATA
    v1 = root / "v1-sample"
    assert len(list((v1 / "BigEarthNet-v1.0").iterdir())) == 14
    assert len(list((v1 / "BigEarthNet-S1-v1.0").iterdir())) == 9
    v2 = root / "v2-sample"
    assert len(list(v2.glob("BigEarthNet-S2/*/*"))) == 2
    assert len(list(v2.glob("BigEarthNet-S1/*/*"))) == 3
    assert len(list(v2.glob("Reference_Maps/*/*/*_reference_map.tif"))) == 1
    assert (root / "facts.json").is_file()
    assert (root / "README.md").is_file()
    meta = pd.read_parquet(root / "metadata" / "v2-metadata.parquet", columns=["patch_id"])
    assert len(meta) == 480038


def test_no_test_or_bench_refers_outside_the_repository() -> None:
    offenders = []
    for folder in (REPO / "tests", REPO / "bench"):
        for path in folder.rglob("*"):
            if not path.is_file() or path.suffix not in TEXT_SUFFIXES:
                continue
            if "__pycache__" in path.parts:
                continue
            text = path.read_text(errors="replace")
            offenders += [
                f"{path.relative_to(REPO)}: {ref}" for ref in OUTSIDE_REFERENCES if ref in text
            ]
    assert not offenders


def test_suite_runs_from_a_copy_of_the_repository_alone(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", ".hypothesis", ".pytest_cache")
    shutil.copytree(TESTS, fresh / "tests", ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", fresh / "pyproject.toml")
    assert not (fresh.parent / "shared").exists()
    env = _env_without_override()

    resolved = subprocess.run(
        [sys.executable, "-c", "import _data; print(_data.DATA_ROOT)"],
        cwd=fresh / "tests",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    root = Path(resolved.stdout.strip())
    assert root == fresh / "tests" / "data" / "bigearthnet"
    assert (root / "metadata" / "v2-metadata.parquet").is_file()

    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *DATA_TESTS],
        cwd=fresh,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert re.search(r"\b\d+ passed\b", out), out[-4000:]
    assert not re.search(r"\b\d+ (failed|errors?|skipped)\b", out), out[-4000:]
    assert not re.search(r"^ERROR\b", out, re.MULTILINE), out[-4000:]
