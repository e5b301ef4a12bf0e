"""What a run writes, and where: used output folders refused unless resumed or replaced on
purpose, every file written whole (fedrs.io), names from files kept to one path part."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from _data import SMOKE

from fedrs.cli import main as cli
from fedrs.errors import InputError
from fedrs.io import (
    atomic_torch_save,
    atomic_write_text,
    check_name,
    check_output_folder,
    clear_output,
    inside,
    name_problem,
)
from fedrs.settings import check_out_folder


class DataPrepared(AssertionError):
    """Raised by the stand-in for data preparation: the command got past its checks."""


@pytest.fixture
def no_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Data preparation raises :class:`DataPrepared` (no run can start)."""
    import fedrs.pipeline

    monkeypatch.setenv("FEDRS_CACHE_DIR", str(tmp_path / "cache"))

    def resolve_cache(*args: Any, **kwargs: Any) -> Path:
        raise DataPrepared("data preparation started")

    monkeypatch.setattr(fedrs.pipeline, "resolve_cache", resolve_cache)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _finished(out: Path) -> Path:
    out.mkdir(parents=True)
    (out / "summary.json").write_text('{"rounds": 2}')
    (out / "model.pt").write_bytes(b"weights")
    return out


def _interrupted(out: Path) -> Path:
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "round-0001.pt").write_bytes(b"round 1")
    (out / "checkpoints" / "latest.json").write_text('{"round": 1, "file": "round-0001.pt"}')
    (out / "history.json").write_text('[{"round": 1}]')
    return out


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert cli(argv) == 2, argv
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedrs: error: "), err
    return err[0]


# ---------------------------------------------------------------------------- used folders


@pytest.mark.usefixtures("no_data")
def test_simulate_into_a_used_folder_is_refused_before_any_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An interrupted run's checkpoints and history, or a finished run, are not overwritten
    without --resume or --overwrite; the refusal comes before data or Ray."""
    interrupted = _interrupted(tmp_path / "interrupted")
    before = _snapshot(interrupted)
    args = ["simulate", "--config", str(SMOKE), "--out"]
    line = _refused([*args, str(interrupted)], capsys)
    assert "holds an interrupted run (history.json, checkpoints)" in line
    assert "--resume to continue it or --overwrite to replace it" in line
    assert _snapshot(interrupted) == before

    finished = _finished(tmp_path / "finished")
    line = _refused([*args, str(finished)], capsys)
    assert "holds a finished run (summary.json, model.pt)" in line and "--overwrite" in line
    assert "--resume" not in line  # nothing checkpointed to continue
    line = _refused([*args, str(finished), "--resume", "--overwrite"], capsys)
    assert "exclude each other" in line
    line = _refused([*args, str(finished), "--resume"], capsys)
    assert "nothing to resume" in line

    # with --overwrite the run goes on to its data; nothing is removed before that passed
    with pytest.raises(DataPrepared):
        cli([*args, str(interrupted), "--overwrite"])
    assert _snapshot(interrupted) == before
    # a folder holding no run (say, the MLflow store of earlier runs) is used as it is
    other = tmp_path / "other"
    other.mkdir()
    (other / "mlflow.db").write_bytes(b"store")
    with pytest.raises(DataPrepared):
        cli([*args, str(other)])


@pytest.mark.usefixtures("no_data")
def test_centralized_and_compare_refuse_used_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    finished = _finished(tmp_path / "central")
    args = ["centralized", "--config", str(SMOKE), "--out", str(finished)]
    line = _refused(args, capsys)
    assert "holds a finished run" in line and "--overwrite to replace it" in line
    assert (finished / "model.pt").read_bytes() == b"weights"
    with pytest.raises(DataPrepared):
        cli([*args, "--overwrite"])
    assert not (finished / "model.pt").exists() and not (finished / "summary.json").exists()

    # compare reads finished runs (its resume), refuses an interrupted one
    out = tmp_path / "compare"
    _finished(out / "centralized")
    _interrupted(out / "fedavg")
    args = ["compare", "--config", str(SMOKE), "--out", str(out)]
    line = _refused(args, capsys)
    assert f"{out / 'fedavg'}: holds an interrupted run" in line
    assert "--resume" not in line
    with pytest.raises(DataPrepared):
        cli([*args, "--overwrite"])
    assert _snapshot(out / "fedavg") != {}  # removed only once the data is ready


def test_check_out_folder_returns_what_overwrite_replaces(tmp_path: Path) -> None:
    out = _interrupted(tmp_path / "run")
    (out / "mlflow.db").write_bytes(b"store")
    (out / "logs").mkdir()
    found = check_out_folder(out, overwrite=True)
    assert sorted(p.name for p in found) == ["checkpoints", "history.json"]
    assert check_out_folder(out, resume=True) == []
    assert check_out_folder(tmp_path / "new") == []
    with pytest.raises(InputError, match="not a folder"):
        check_out_folder(out / "history.json")


# ---------------------------------------------------------------------------- whole files


def test_atomic_writes_leave_the_old_file_on_failure(tmp_path: Path) -> None:
    path = atomic_write_text(tmp_path / "summary.json", json.dumps({"rounds": 1}))
    assert json.loads(path.read_text()) == {"rounds": 1}

    class Unpicklable:
        def __reduce__(self) -> Any:
            raise RuntimeError("interrupted while saving")

    model = tmp_path / "model.pt"
    atomic_torch_save({"w": 1}, model)
    before = model.read_bytes()
    with pytest.raises(RuntimeError, match="interrupted"):
        atomic_torch_save({"w": Unpicklable()}, model)
    assert model.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "summary.json"]
    # a link planted at the target is replaced, not followed
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "linked.json").symlink_to(victim)
    atomic_write_text(tmp_path / "linked.json", "{}")
    assert victim.read_text() == "keep" and not (tmp_path / "linked.json").is_symlink()
    assert os.stat(tmp_path / "linked.json").st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name",
    [
        "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57",
        "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_61_39",
        "S2B_MSIL2A_20180502T093039_11_42",
        "S1B_IW_GRDH_1SDV_20180502T171401_20180502T171426_010731_0139C4_30_59",
        "synthetic-0007",
    ],
)
def test_bigearthnet_names_name_files(name: str) -> None:
    assert name_problem(name) is None
    assert check_name(name, "patch id") == name


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../../etc/passwd", "separator"),
        ("/abs/S2A_MSIL2A_20170613T101031_11_42", "separator"),
        ("a\\b", "separator"),
        ("..", "'..'"),
        ("a..b", "'..'"),
        (".hidden", "dot"),
        ("a\nb", "control"),
        ("a\x1b[31mb", "control"),
        ("a\u202eb", "control"),
        ("", "empty"),
        ("x" * 201, "200 bytes"),
    ],
)
def test_names_that_cannot_name_a_file(name: str, problem: str) -> None:
    found = name_problem(name)
    assert found is not None and problem in found
    with pytest.raises(InputError, match="cannot name a file"):
        check_name(name, "patch id")


def test_inside_follows_links(tmp_path: Path) -> None:
    root = tmp_path / "out"
    root.mkdir()
    assert inside(root, root / "a" / "b") == (root / "a" / "b").resolve()
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(InputError, match="outside"):
        inside(root, root / "link" / "x")
    with pytest.raises(InputError, match="outside"):
        inside(root, root / ".." / "x")


def test_output_folder_is_new_empty_or_an_earlier_output(tmp_path: Path) -> None:
    kind = {"markers": (".done", ".partial"), "holds": "thing"}
    assert check_output_folder(tmp_path / "new", **kind) == tmp_path / "new"  # type: ignore[arg-type]
    out = tmp_path / "out"
    out.mkdir()
    check_output_folder(out, **kind)  # type: ignore[arg-type]
    (out / "data").mkdir()
    with pytest.raises(InputError, match="not empty and holds no thing"):
        check_output_folder(out, **kind)  # type: ignore[arg-type]
    (out / ".partial").write_text("")
    check_output_folder(out, **kind)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="not a folder"):
        check_output_folder(out / ".partial", **kind)  # type: ignore[arg-type]


def test_clear_output_removes_its_entries_only(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / "data" / "deep").mkdir(parents=True)
    elsewhere.mkdir()
    (out / ".done").write_text("")
    (out / "notes.txt").write_text("mine")
    (out / "link").symlink_to(elsewhere)
    assert clear_output(out, (".done", "data", "link", "missing")) == out
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert elsewhere.is_dir()
    assert clear_output(tmp_path / "fresh", ("data",)).is_dir()
