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
