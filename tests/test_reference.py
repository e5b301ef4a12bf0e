"""Centralized reference figures (fedrs.reference) and their place in `fedrs simulate`'s output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _data import SMOKE

from fedrs.config import load_config
from fedrs.reference import read_reference, reference_key, reference_path, write_reference


@pytest.fixture(autouse=True)
def own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """References are written under ``$FEDRS_CACHE_DIR``: one folder a test."""
    monkeypatch.setenv("FEDRS_CACHE_DIR", str(tmp_path / "cache"))


SUMMARY = {
    "map@20": 0.9,
    "map@20_min_k_r": 0.8,
    "map@20_random": 0.5,
    "bpp": {"s1": 0.2, "s2": 0.4},
    "psnr": {"s1": 26.0, "s2": 25.0},
    "epochs": 3,
    "history": [{"round": 1}],
}


def test_one_reference_per_archive_and_recipe() -> None:
    config = load_config(SMOKE)
    key = reference_key(config)
    # the partition, the strategy and where things run do not change the reference ...
    for override in (
        {"federation.strategy": "fedavg"},
        {"partition.name": "iid"},
        {"train.device": "cpu"},
        {"data.cache_dir": "/elsewhere"},
    ):
        assert reference_key(load_config(SMOKE, override)) == key, override
    # ... what the centralized figures depend on does, the rounds included (epochs a stage)
    for override in (
        {"seed": 1},
        {"train.batch_size": 3},
        {"data.patches": 150},
        {"model.hash_bits": 32},
        {"federation.rounds": 5},
        {"data.max_queries": 7},
    ):
        assert reference_key(load_config(SMOKE, override)) != key, override


def test_reference_round_trip_and_hostile_files(tmp_path: Path) -> None:
    config = load_config(SMOKE)
    assert read_reference(config) is None
    path = write_reference(config, SUMMARY, tmp_path / "central")
    assert path == reference_path(config)
    reference = read_reference(config)
    assert reference is not None
    assert reference["run"] == str((tmp_path / "central").resolve())
    figures = reference["figures"]
    assert figures["map@20"] == 0.9 and figures["bpp"] == {"s1": 0.2, "s2": 0.4}
    assert "history" not in figures
    assert read_reference(load_config(SMOKE, {"seed": 1})) is None
    record = json.loads(path.read_text())
    for bad in (
        "not json",
        json.dumps([1, 2]),
        json.dumps(record | {"format": "other"}),
        json.dumps(record | {"key": "0" * 20}),
        json.dumps(record | {"figures": "x"}),
    ):
        path.write_text(bad)
        assert read_reference(config) is None, bad
    # figures that are not finite numbers are dropped, the others kept
    damaged = record["figures"] | {"map@20": "high", "psnr": {"s1": float("nan"), "s2": 1e400}}
    path.write_text(json.dumps(record | {"figures": damaged}))
    reference = read_reference(config)
    assert reference is not None
    assert "map@20" not in reference["figures"] and reference["figures"]["psnr"] == {}


def test_simulate_shows_the_reference_beside_the_federation(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from fedrs.cli.simulate import print_reference

    config = load_config(SMOKE)
    federated = SUMMARY | {"map@20": 0.85, "bpp": {"s1": 0.3, "s2": 0.4}, "psnr": {"s1": 25.5}}
    print_reference(federated, config)
    assert "fedrs compare" in capsys.readouterr().out
    write_reference(config, SUMMARY, tmp_path / "central")
    print_reference(federated, config)
    out = capsys.readouterr().out
    assert "federated vs centralized (3 epochs" in out
    assert "-0.050" in out  # mAP@20 0.85 vs 0.9
    assert "x1.50" in out  # S1 bits 0.3 vs 0.2
    assert "x1.00" in out  # S2 bits
    assert "-0.50 dB" in out  # PSNR S1
