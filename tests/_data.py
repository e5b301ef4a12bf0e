"""Where the tests find the real BigEarthNet reference data and the smoke experiment (one
definition for every test).

The data lives in the repository, ``tests/data/bigearthnet`` (see its README).  When
``$FEDRS_SHARED_DATA`` is set, it names a folder of the same layout that is used instead
(for example a larger copy); nothing requires it.

:func:`load_bench` imports a script of ``bench/`` for the tests of its helpers.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
COMMITTED_DATA = TESTS / "data" / "bigearthnet"


def data_root() -> Path:
    """``$FEDRS_SHARED_DATA`` when set (and not empty), else the committed ``tests/data``."""
    override = os.environ.get("FEDRS_SHARED_DATA")
    return Path(override) if override else COMMITTED_DATA


DATA_ROOT = data_root()
V1_SAMPLE = DATA_ROOT / "v1-sample"
V2_SAMPLE = DATA_ROOT / "v2-sample"
V2_METADATA = DATA_ROOT / "metadata" / "v2-metadata.parquet"
FACTS_JSON = DATA_ROOT / "facts.json"
SMOKE = REPO / "experiments" / "smoke.toml"


def load_bench(name: str) -> ModuleType:
    """``bench/<name>.py`` imported as the module ``fedrs_bench_<name>``."""
    spec = importlib.util.spec_from_file_location(
        f"fedrs_bench_{name}", REPO / "bench" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module
