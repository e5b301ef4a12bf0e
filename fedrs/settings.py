"""What a federated run needs to know besides the experiment: where it writes, how it resumes.

:class:`RunSettings` is small and picklable: the simulation hands it to the Flower apps (which
Ray ships to its actors); ``flwr run`` passes the same fields through the run config
(``[tool.flwr.app.config]`` / ``--run-config``), read by :meth:`RunSettings.from_run_config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedrs.config import ExperimentConfig, load_config, parse_override
from fedrs.errors import InputError
from fedrs.io import remove_paths


@dataclass(frozen=True)
class RunSettings:
    """Experiment file + overrides, output folder, resume flag.

    Attributes:
        config_path: TOML experiment file (absolute), or None for the defaults.
        overrides: dotted key -> value, applied on top of the file.
        out: output folder (absolute): checkpoints, summary.json, the MLflow store.
        resume: continue from the last checkpoint in ``out``.
    """

    config_path: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    out: str = "runs/simulate"
    resume: bool = False

    def experiment(self) -> ExperimentConfig:
        return load_config(self.config_path, self.overrides)

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunSettings:
        """Read ``config``, ``overrides`` (``"a.b=1; c=2"``), ``out`` and ``resume``.

        Relative paths are taken from the current folder of the process reading them; pass
        absolute paths when the apps run elsewhere (``flwr run`` does).
        """
        text = str(run_config.get("overrides", "") or "")
        overrides = dict(parse_override(p) for p in text.split(";") if p.strip())
        config = str(run_config.get("config", "") or "") or None
        out = str(run_config.get("out", "") or "runs/flwr")
        resume = run_config.get("resume", False)
        if not isinstance(resume, bool):
            raise InputError(f"run config 'resume' must be a boolean, not {resume!r}")
        return cls(
            config_path=str(Path(config).resolve()) if config else None,
            overrides=overrides,
            out=str(Path(out).resolve()),
            resume=resume,
        )


RUN_FILES = (
    "summary.json",
    "model.pt",
    "config.toml",
    "history.json",
    "rounds.png",
    "checkpoints",
)
"""What a run writes into its output folder besides its MLflow store and logs: the files that
mark a folder as holding a run, and that ``--overwrite`` removes."""


def run_files(out: str | Path) -> list[Path]:
    """The :data:`RUN_FILES` present in ``out``."""
    folder = Path(out)
    return [folder / name for name in RUN_FILES if (folder / name).exists()]


def check_out_folder(
    out: str | Path, *, resume: bool = False, overwrite: bool = False, resumable: bool = True
) -> list[Path]:
    """Refuse an output folder that holds a run, unless it is resumed or replaced on purpose.

    Nothing is changed here: the caller removes what is returned (:func:`clear_run`) once its
    other checks have passed.

    Args:
        out: the run's output folder.
        resume: the run continues from the last checkpoint in ``out``.
        overwrite: the run replaces the one in ``out``.
        resumable: whether the command can resume (its messages mention ``--resume``).

    Returns:
        The run files ``overwrite`` replaces (empty when there is nothing to replace).

    Raises:
        InputError: both flags; ``resume`` without a checkpoint; a folder holding a run without
            either flag (a finished run: ``summary.json``; an interrupted one: its checkpoints
            or other files).
    """
    folder = Path(out)
    if resume and overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: exists and is not a folder")
    if resume:
        if not (folder / "checkpoints" / "latest.json").is_file():
            raise InputError(f"{folder}: nothing to resume (no checkpoints)")
        return []
    found = run_files(folder)
    if not found or overwrite:
        return found
    names = ", ".join(p.name for p in found)
    finished = (folder / "summary.json").exists()
    kind = "a finished run" if finished else "an interrupted run"
    ways = ["choose another --out"]
    if resumable and (folder / "checkpoints" / "latest.json").is_file():
        ways.append("--resume to continue it")
    ways.append("--overwrite to replace it")
    raise InputError(f"{folder}: holds {kind} ({names}); {', '.join(ways[:-1])} or {ways[-1]}")


def clear_run(files: list[Path]) -> None:
    """Remove the run files :func:`check_out_folder` returned (the MLflow store stays)."""
    remove_paths(files)
