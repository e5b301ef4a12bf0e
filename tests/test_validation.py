"""An experiment is checked whole before any data is prepared (fedrs.validation), and a CLI flag
that replaces a component drops the options the file gave the replaced one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _data import REPO

from fedrs.cli import main as cli
from fedrs.cli._overrides import drop_replaced_options
from fedrs.cli.simulate import experiment_overrides
from fedrs.config import load_config
from fedrs.errors import InputError
from fedrs.validation import check_experiment

MODALITY_SPLIT = REPO / "experiments" / "modality-split.toml"
NOTE = (
    "fedrs: --partition iid replaces modality: its options both, s1_only, s2_only "
    f"from {MODALITY_SPLIT} are dropped"
)


class DataPrepared(AssertionError):
    """Raised by the stand-in for data preparation: the check came too late."""


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$FEDRS_CACHE_DIR`` at an empty folder; preparing data fails the test at once."""
    import fedrs.pipeline

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("FEDRS_CACHE_DIR", str(cache))

    def resolve_cache(*args: Any, **kwargs: Any) -> Path:
        raise DataPrepared("data preparation started before the experiment was checked")

    monkeypatch.setattr(fedrs.pipeline, "resolve_cache", resolve_cache)
    return cache


def fedrs_command(command: str, config: Path, out: Path, *args: str) -> list[str]:
    return [command, "--config", str(config), "--out", str(out), *args]


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], cache: Path) -> str:
    """Run the CLI, expect exit 2 with one error line and nothing prepared; return the line."""
    assert cli(argv) == 2, argv
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("fedrs: error: "), err
    assert not any(cache.iterdir())
    return err[0]


def write_experiment(folder: Path, text: str) -> Path:
    path = folder / "experiment.toml"
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------ replaced components


def test_partition_flag_drops_the_replaced_partitions_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    overrides = experiment_overrides(config=MODALITY_SPLIT, partition="iid")
    assert capsys.readouterr().err.strip().splitlines() == [NOTE]
    experiment = load_config(MODALITY_SPLIT, overrides)
    assert experiment.partition.name == "iid"
    assert experiment.partition.options == {}
    check_experiment(experiment)


def test_drop_replaced_options_returns_the_note() -> None:
    drops, notes = drop_replaced_options(MODALITY_SPLIT, {"partition.name": "iid"}, {})
    assert drops == {"partition.options": {}}
    assert notes == [NOTE.removeprefix("fedrs: ")]


def test_same_component_keeps_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    overrides = experiment_overrides(config=MODALITY_SPLIT, partition="modality")
    assert capsys.readouterr().err == ""
    experiment = load_config(MODALITY_SPLIT, overrides)
    assert experiment.partition.options == {"s1_only": 0.3, "s2_only": 0.3, "both": 0.4}
    check_experiment(experiment)


def test_options_set_explicitly_are_kept(capsys: pytest.CaptureFixture[str]) -> None:
    sets = ["partition.options.alpha=0.3", "partition.options.both=0.5"]
    overrides = experiment_overrides(config=MODALITY_SPLIT, partition="dirichlet", sets=sets)
    note = capsys.readouterr().err.strip()
    assert "its options s1_only, s2_only from" in note  # both was set again: not dropped
    experiment = load_config(MODALITY_SPLIT, overrides)
    assert experiment.partition.options == {"alpha": 0.3, "both": 0.5}
    with pytest.raises(InputError, match=r"partition 'dirichlet': unknown option\(s\) both"):
        check_experiment(experiment)


@pytest.mark.parametrize(
    ("file_strategy", "option", "flag"),
    [
        ("fedprox", "proximal_mu = 0.01", "modality-aware"),
        ("modality-aware", "accept_failures = false", "fedprox"),
    ],
)
def test_strategy_flag_drops_the_replaced_strategys_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], file_strategy: str, option: str, flag: str
) -> None:
    text = MODALITY_SPLIT.read_text(encoding="utf-8").replace(
        'strategy = "modality-aware"', f'strategy = "{file_strategy}"'
    )
    # [federation] is the file's last table
    path = write_experiment(tmp_path, f"{text}strategy_options = {{ {option} }}\n")
    overrides = experiment_overrides(config=path, strategy=flag)
    assert capsys.readouterr().err.strip().splitlines() == [
        f"fedrs: --strategy {flag} replaces {file_strategy}: its options {option.split()[0]} "
        f"from {path} are dropped"
    ]
    experiment = load_config(path, overrides)
    assert experiment.federation.strategy == flag
    assert experiment.federation.strategy_options == {}
    check_experiment(experiment)
    if flag == "modality-aware":  # kept, FedProx's option would stop modality-aware at once
        with pytest.raises(InputError, match="strategy 'modality-aware' has no option"):
            check_experiment(load_config(path, {"federation.strategy": flag}))


def test_modality_split_with_iid_flag_reaches_data_preparation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], empty_cache: Path
) -> None:
    """The reported failure: the run now gets as far as preparing data, with one note."""
    argv = fedrs_command("simulate", MODALITY_SPLIT, tmp_path / "out", "--partition", "iid")
    with pytest.raises(DataPrepared):
        cli(argv)
    assert NOTE in capsys.readouterr().err


# ------------------------------------------------------------------ refused before any data


@pytest.mark.parametrize("command", ["simulate", "centralized", "compare", "deploy-local"])
def test_unknown_partition_option_is_refused_before_data(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], empty_cache: Path
) -> None:
    argv = fedrs_command(
        command, MODALITY_SPLIT, tmp_path / "out", "--set", "partition.options.bogus=1"
    )
    line = refused(argv, capsys, empty_cache)
    assert line == (
        "fedrs: error: partition 'modality': unknown option(s) bogus "
        "(accepted: s1_only, s2_only, both)"
    )


@pytest.mark.parametrize("command", ["simulate", "centralized"])
@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["federation.strategy_options.bogus=1"],
            "strategy 'modality-aware' has no option 'bogus'",
        ),
        (
            ['federation.strategy="fedprox"', "federation.strategy_options.proximal_mu=-1"],
            "strategy 'fedprox': proximal_mu must be a finite number >= 0, got -1",
        ),
        (
            ['partition.name="dirichlet"', "partition.options={ alpha = 0 }"],
            "partition 'dirichlet': alpha must be > 0, got 0.0",
        ),
        (
            ['federation.update_codec="entropy"', "federation.codec.step=inf"],
            "update codec: step must be a positive finite number, got inf",
        ),
        (
            ['federation.update_codec="entropy"', "federation.codec.raw_keys=['(']"],
            "update codec: bad raw_keys pattern",
        ),
        (['model.codecs.s1="nope"'], "unknown codec 'nope' for s1"),
    ],
)
def test_bad_component_is_refused_before_data(
    command: str,
    sets: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    empty_cache: Path,
) -> None:
    args = [arg for s in sets for arg in ("--set", s)]
    line = refused(
        fedrs_command(command, MODALITY_SPLIT, tmp_path / "out", *args), capsys, empty_cache
    )
    assert message in line


# ----------------------------------------------------------------------- check_experiment


def test_check_experiment_leaves_torch_random_state_alone() -> None:
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    check_experiment(load_config(MODALITY_SPLIT))
    assert torch.equal(torch.rand(3), expected)


def test_partition_seed_is_checked() -> None:
    with pytest.raises(InputError, match=r"^partition 'modality': seed must be a non-negative"):
        check_experiment(load_config(MODALITY_SPLIT, {"partition.seed": -1}))
