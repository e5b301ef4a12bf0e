"""MLflow tracking on a sqlite store under the output folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedrs.tracking import Tracker, default_tracking_uri, flatten, metric_name


def test_flatten_and_metric_names() -> None:
    assert dict(flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2]})) == {
        "a.b": 1,
        "a.c.d": "x",
        "e": [1, 2],
    }
    assert metric_name("eval/map@20") == "eval/map_at_20"


def test_run_params_metrics_artifacts_and_resume(tmp_path: Path) -> None:
    uri = default_tracking_uri(tmp_path)
    assert uri.startswith("sqlite:////") and uri.endswith("/mlflow.db")
    tracker = Tracker(uri, experiment="t", run_name="r", artifact_root=tmp_path / "artifacts")
    tracker.log_params({"train": {"lr": 0.01}, "rounds": 3})
    for step in (1, 2):
        tracker.log_metrics({"eval/map@20": 0.1 * step, "skip": float("nan")}, step=step)
    config = tmp_path / "config.toml"
    config.write_text("rounds = 3\n")
    tracker.log_artifact(config)
    tracker.end()

    resumed = Tracker(uri, experiment="t", run_id=tracker.run_id)
    resumed.log_params({"rounds": 3})  # already logged: not an error
    resumed.log_metrics({"eval/map@20": 0.3}, step=3)
    resumed.end()

    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    run = client.get_run(tracker.run_id)
    assert run.data.params == {"train.lr": "0.01", "rounds": "3"}
    assert "skip" not in run.data.metrics
    assert resumed.history("eval/map@20") == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["config.toml"]
    assert run.info.status == "FINISHED"


def test_more_metrics_than_one_mlflow_batch_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-client metrics of a large federation: an MLflow server takes 1000 a batch at most."""
    from mlflow.utils.validation import MAX_METRICS_PER_BATCH

    tracker = Tracker(default_tracking_uri(tmp_path), experiment="t")
    sizes: list[int] = []
    log_batch = tracker._client.log_batch

    def counted(run_id: str, metrics: list[Any], **kwargs: Any) -> None:
        sizes.append(len(metrics))
        log_batch(run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(tracker._client, "log_batch", counted)
    names = ("loss", "examples", "train_s", "has_s1", "has_s2")
    metrics = {f"client/{i}/{name}": float(i) for i in range(250) for name in names}
    tracker.log_metrics(metrics | {"clients/ok": 250.0}, step=1)
    tracker.end()
    assert sum(sizes) == 1251 and max(sizes) <= MAX_METRICS_PER_BATCH
    assert tracker.history("client/249/train_s") == [(1, 249.0)]
    assert tracker.history("clients/ok") == [(1, 250.0)]
