"""MLflow tracking: one run per experiment, params from the config, metrics with ``step=round``.

The default store is a sqlite file under the run's output folder (``sqlite:///<out>/mlflow.db``,
absolute, since Flower runs the ServerApp in another working directory); pass a tracking URI
(``http://host:5000``, ``sqlite:///...``) to log to a server instead.  MLflow does not allow
``@`` in metric names: ``eval/map@20`` is logged as ``eval/map_at_20``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

DEFAULT_EXPERIMENT = "fedrs"


def default_tracking_uri(out: str | Path) -> str:
    """``sqlite:///<absolute out>/mlflow.db``."""
    return f"sqlite:///{(Path(out).resolve() / 'mlflow.db').as_posix()}"


def metric_name(key: str) -> str:
    """MLflow's name for a metric: ``@`` is not allowed there, so ``map@20`` -> ``map_at_20``."""
    return key.replace("@", "_at_")


def flatten(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Flatten nested mappings to ``("a.b.c", value)`` pairs (lists kept as their text)."""
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, f"{name}.")
        else:
            yield name, value


class Tracker:
    """A thin MLflow run: ``log_params``, ``log_metrics(step=...)``, ``log_artifact``, ``end``.

    ``run_id`` continues an existing run (resume); otherwise a new run is started.
    """

    def __init__(
        self,
        tracking_uri: str,
        *,
        experiment: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        run_id: str | None = None,
        artifact_root: str | Path | None = None,
    ) -> None:
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.tracking_uri = tracking_uri
        self._client = MlflowClient(tracking_uri=tracking_uri)
        found = self._client.get_experiment_by_name(experiment)
        if found is None:
            location = None
            if artifact_root is not None:
                location = Path(artifact_root).resolve().as_uri()
            experiment_id = self._client.create_experiment(experiment, artifact_location=location)
        else:
            experiment_id = found.experiment_id
        if run_id is None:
            run = self._client.create_run(experiment_id, run_name=run_name)
            run_id = run.info.run_id
        else:
            self._client.update_run(run_id, status="RUNNING")
        self.run_id: str = run_id
        self.experiment_id: str = experiment_id
        self._mlflow = mlflow

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log (nested) params flattened to dotted names; values longer than 6000 chars cut."""

        existing = self._client.get_run(self.run_id).data.params
        batch = [
            Param(key, str(value)[:6000]) for key, value in flatten(params) if key not in existing
        ]
        for start in range(0, len(batch), 100):
            self._client.log_batch(self.run_id, params=batch[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        """Log numeric metrics at ``step`` (non-finite or non-numeric values are left out),
        in batches of at most 1000 (MLflow's limit; a round logs 5 metrics a client)."""

        now = int(time.time() * 1000)
        batch = [
            Metric(metric_name(key), float(value), now, step)
            for key, value in metrics.items()
            if isinstance(value, int | float) and math.isfinite(float(value))
        ]
        for start in range(0, len(batch), 1000):
            self._client.log_batch(self.run_id, metrics=batch[start : start + 1000])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, values: Mapping[str, Any], name: str) -> None:
        """Log ``values`` as the JSON artifact ``name``."""
        self._client.log_dict(self.run_id, dict(values), name)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self._client.set_tag(self.run_id, key, value)

    def end(self, status: str = "FINISHED") -> None:
        """Close the run (``FINISHED``, ``FAILED`` or ``KILLED``)."""
        self._client.set_terminated(self.run_id, status=status)

    def history(self, key: str) -> list[tuple[int, float]]:
        """(step, value) pairs of a metric, by step."""
        points = self._client.get_metric_history(self.run_id, metric_name(key))
        return sorted((p.step, p.value) for p in points)
